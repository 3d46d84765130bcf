"""A UserError raised inside a stage's Prefect task reaches the user as one line, without
Prefect's tracebacks; `--debug` shows them (the Prefect UI keeps them either way)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from flows.logs import UserErrorsInOneLine
from tasks.errors import UserError

MESSAGE = "model.source = './no/such/model': not a Hugging Face model folder (no config.json there)"


def _record(message: str, error: BaseException | None = None, name: str = "prefect.task_runs") -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, (), exc_info)


def test_filter_drops_the_records_of_a_user_error_and_keeps_others():
    keep = UserErrorsInOneLine()
    assert not keep.filter(_record(f"Task run failed with exception: UserError({MESSAGE!r})", UserError(MESSAGE)))
    assert not keep.filter(_record(f'Finished in state Failed("Task run encountered an exception: {MESSAGE}")'))
    assert not keep.filter(_record(f"Encountered exception during execution: {MESSAGE}", UserError(MESSAGE),
                                   "prefect.flow_runs"))
    assert keep.filter(_record("Task run failed with exception: RuntimeError('bug')", RuntimeError("bug")))
    assert keep.filter(_record("Beginning flow run 'x' for flow 'model'"))


@pytest.mark.slow
def test_user_error_in_a_stage_task_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  source: ./no/such/model\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    done = run("stage", "model")
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out and out.count(MESSAGE) == 1, out
    assert f"prunepipe: error: {MESSAGE}\n" in done.stderr
    assert not (tmp_path / "data").exists()
    debug = run("--debug", "stage", "model")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and f"prunepipe: error: {MESSAGE}" in debug.stderr


@pytest.mark.parametrize("params,message", [
    ({"prune": {"sparsity": [0.5]}}, "prune.sparsity = [0.5]: allowed: a fraction in [0, 1) such as 0.5, or 'N:M' such as '2:4'"),
    ({"prune": {"sparsity": True}}, "prune.sparsity = True: allowed: a fraction in [0, 1) such as 0.5, or 'N:M' such as '2:4'"),
    ({"calibration": {"seed": 10**20}}, "calibration.seed = 100000000000000000000: Input should be less than or "
                                        "equal to 9223372036854775807"),
    ({"calibration": {"seed": -1}}, "calibration.seed = -1: Input should be greater than or equal to 0"),
], ids=["list", "bool", "huge-seed", "negative-seed"])
def test_values_that_named_pydantic_internals_or_overflowed(params, message):
    from flows.params import ParamsError, parse_params

    with pytest.raises(ParamsError) as err:
        parse_params(params)
    assert str(err.value).splitlines()[1:] == [f"  {message}"], str(err.value)


@pytest.mark.parametrize("text", ['{"ppl_dense": 16.3', "[1, 2]", "{}", "\xff"], ids=["truncated", "list", "empty",
                                                                                     "binary"])
def test_show_with_a_broken_metrics_json(tmp_path, monkeypatch, capsys, text):
    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.json").write_bytes(text.encode("latin-1"))
    assert main(["show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunepipe: error: metrics.json: ") and err.count("\n") == 1, err


@pytest.mark.slow
def test_user_error_in_a_dask_worker_is_one_line(tmp_path, llama_folder, corpus_file):
    # 24:48 passes the parameter checks; the width check runs in the point's prune task, on a worker
    import yaml
    from test_sweep import full_params

    params = full_params(llama_folder, corpus_file, methods=["magnitude"], sparsities=[0.5, "24of48"],
                         quantize=["none"], quantizers={"none": {}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "sweep", "--workers", "2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    message = "prune.sparsity = '24:48': M = 48 does not divide the input width 64"
    assert done.returncode == 2, out
    assert "Traceback" not in out and out.count(message) == 1, out
    assert f"prunepipe: error: {message}" in done.stderr
