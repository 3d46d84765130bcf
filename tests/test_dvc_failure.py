"""Under `dvc repro`, a stage that fails leaves the last good artifact and its git-tracked
reports as they were: every output in dvc.yaml is `persist`ed, so DVC does not delete it
before the command, and only the stage's atomic rename replaces it.

The workspace's artifacts are made by the library (no Prefect server) and recorded with
`dvc commit`, so that the test runs DVC, not the stages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import dvc_workspace
from test_flows import tiny_params


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for folder in ("data", "reports") for p in sorted((root / folder).rglob("*")) if p.is_file()}


def dvc_env(root: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PREFECT_HOME": str(root / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def committed_workspace(root: Path, llama_folder: Path, corpus_file: Path):
    from flows.params import parse_params
    from tasks.stages.calibrate import calibrate
    from tasks.stages.common import StageContext
    from tasks.stages.model import model
    from tasks.stages.prune import prune

    params = tiny_params(llama_folder, corpus_file)
    run = dvc_workspace(root, ("dvc.yaml", "tasks", "kernels"), params)
    p, ctx, data = parse_params(params), StageContext(lambda line: None), root / "data"
    model(p.model, out=data / "model", ctx=ctx)
    calibrate(p.calibration, model=data / "model", out=data / "calibration", ctx=ctx)
    prune(p.prune, p.sequential, model=data / "model", calibration=data / "calibration", out=data / "pruned",
          run_stats=root / "reports" / "prune_run.json", ctx=ctx)
    run("dvc", "commit", "-f", "-q", "model", "calibrate", "prune")
    assert "up to date" in run("dvc", "status", "prune")
    return run, params


@pytest.mark.slow
def test_bad_parameter_under_dvc_repro_leaves_data_and_reports_byte_identical(tmp_path, llama_folder, corpus_file):
    run, params = committed_workspace(tmp_path, llama_folder, corpus_file)
    before = snapshot(tmp_path)
    assert {"data/pruned/metadata.json", "reports/prune_run.json"} <= before.keys()
    params["prune"]["sparsity"] = 1.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = dvc_env(tmp_path)
    done = subprocess.run(["dvc", "repro", "prune"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "prune.sparsity = 1.5" in done.stderr + done.stdout
    assert snapshot(tmp_path) == before, "a failed stage must not delete or alter the last good artifact"
    # DVC still knows the stage is stale: the lock records the old parameters
    assert "prune" in run("dvc", "status", "prune") and "modified" in run("dvc", "status", "prune")


@pytest.mark.slow
def test_a_missing_section_under_dvc_repro_names_it_and_touches_nothing(tmp_path, llama_folder, corpus_file):
    # prunepipe's own runners read a missing section as the defaults; DVC tracks sections by name
    # and stops before the stage's command, naming the section to add
    run, params = committed_workspace(tmp_path, llama_folder, corpus_file)
    before = snapshot(tmp_path)
    del params["sequential"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = dvc_env(tmp_path)
    done = subprocess.run(["dvc", "repro", "prune"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "Parameters 'sequential' are missing from 'params.yaml'" in done.stderr + done.stdout
    assert "Beginning flow run" not in done.stderr + done.stdout, "the stage must not start"
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_sigkill_of_the_stage_mid_prune_leaves_data_and_reports_byte_identical(tmp_path, llama_folder, corpus_file):
    import signal
    import time

    run, params = committed_workspace(tmp_path, llama_folder, corpus_file)
    before = snapshot(tmp_path)
    # ADMM with many iterations: a prune that is still at work when the kill comes
    params["prune"].update(method="admm", admm={"iterations": 100000})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = dvc_env(tmp_path)
    proc = subprocess.Popen(["dvc", "repro", "prune"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:   # the stage's task is at work
        seen.append(line)
        if "Beginning flow run" in line:
            break
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)   # dvc, prunepipe and Prefect's server: the whole group
    proc.wait(timeout=60)
    assert any("Beginning flow run" in line for line in seen), "".join(seen)
    after = snapshot(tmp_path)
    # a killed writer leaves only its hidden temporary sibling (data/.pruned.tmp-…), never a
    # changed or missing artifact; the next run removes it
    assert {k: v for k, v in after.items() if ".tmp-" not in k} == before
    assert "modified" in run("dvc", "status", "prune")
