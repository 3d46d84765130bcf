"""No value of params.yaml becomes shell text in a DVC command: sweep/dvc.yaml's point command
takes the point from $DVC_STAGE (quoted), never from an expanded ${...}, and point names are
checked against a strict character set before anything uses them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import dvc_workspace
from flows.dvc_yaml import sweep_yaml
from flows.params import ParamsError, parse_params
from flows.sweep import select

INJECTION = "0.5$(touch x)"


def test_no_expanded_value_in_a_command():
    stages = yaml.safe_load(sweep_yaml())["stages"]
    assert stages["point"]["cmd"] == 'prunepipe sweep --point "$DVC_STAGE"'
    assert all("${" not in stage["cmd"] for stage in stages.values())


@pytest.mark.parametrize("entry", [INJECTION, "0.5'; touch x; '", " 0.5", "2of4 ", "1e-1", "0.5\n"])
def test_sweep_sparsity_outside_the_character_set_is_refused(entry):
    with pytest.raises(ParamsError, match=r"sweep.sparsities = .*: ['\"].*['\"] is neither a fraction such as 0.6 nor NofM"):
        parse_params({"sweep": {"sparsities": [entry]}})


def test_select_takes_a_dvc_stage_address_and_refuses_other_characters():
    params = parse_params({"sweep": {"methods": ["wanda"], "sparsities": [0.5, "2of4"]}})
    assert select(params, "sweep/dvc.yaml:point@wanda-2of4-none").name == "wanda-2of4-none"
    assert select(params, "wanda-0.5-none").name == "wanda-0.5-none"
    assert select(params, "sweep/dvc.yaml:dense@dense-gptq3").params.quantize.bits == 3
    with pytest.raises(ParamsError, match=r"sweep point 'wanda-0.5\$\(touch x\)-none': not a point name"):
        select(params, f"sweep/dvc.yaml:point@wanda-{INJECTION}-none")


@pytest.mark.slow
def test_dvc_repro_of_an_injected_sparsity_runs_no_shell(tmp_path):
    from tasks.config import Params

    params = Params().model_dump(mode="json")   # every key a point tracks, spelled out
    params["sweep"].update(methods=["wanda"], sparsities=[INJECTION], quantize=["none"])
    dvc_workspace(tmp_path, ("dvc.yaml", "sweep/dvc.yaml", "tasks", "kernels"), params)
    for shared in ("model", "calibration", "eval_dense"):   # the point's inputs, as stand-ins
        (tmp_path / "data" / shared).mkdir(parents=True)
        (tmp_path / "data" / shared / "metadata.json").write_text("{}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(["dvc", "repro", "--single-item", "sweep/dvc.yaml:point"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "point@wanda-0.5$(touch x)-none" in out, out          # DVC did expand the value into the stage name ...
    assert not (tmp_path / "x").exists(), "a parameter ran as a shell command"   # ... but no shell ran it
    assert f"prunepipe: error: params.yaml: invalid parameters:\n  sweep.sparsities = ['{INJECTION}']" in out
