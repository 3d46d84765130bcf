"""params.yaml is YAML 1.2, the dialect DVC writes: an unquoted `2:4` is a string, `no` is not
false, and a repeated key is an error that names it. Each error is one line, exit status 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.cli import main
from flows.params import ParamsError, load_params
from tasks.pruning.patterns import NM

ROOT = Path(__file__).resolve().parents[1]


def cli(tmp_path, monkeypatch, capsys, text: str | bytes, *argv: str) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    code = main(list(argv or ("stage", "prune")))
    return code, capsys.readouterr().err


def test_unquoted_nm_is_a_pattern(tmp_path):
    (tmp_path / "params.yaml").write_text("prune:\n  method: sparsegpt\n  sparsity: 2:4\npack:\n  format: nm-int4\n")
    params = load_params(tmp_path / "params.yaml")
    assert params.prune.sparsity == "2:4" and params.prune.pattern == NM(2, 4)


def test_dvc_exp_run_set_param_nm_example_parses(tmp_path):
    """What `dvc exp run -S prune.sparsity=2:4 -S pack.format=nm-int4 -S prune.method=sparsegpt`
    (the README's example) does to params.yaml, through DVC's own function, then our reader."""
    from dvc.utils.hydra import apply_overrides

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", ["prune.sparsity=2:4", "pack.format=nm-int4",
                                               "prune.method=sparsegpt"])
    assert "sparsity: 2:4" in (tmp_path / "params.yaml").read_text()   # DVC writes it unquoted
    params = load_params(tmp_path / "params.yaml")
    assert (params.prune.method, params.prune.pattern, params.pack.format) == ("sparsegpt", NM(2, 4), "nm-int4")


def test_no_is_a_string_and_not_a_sparsity(tmp_path, monkeypatch, capsys):
    code, err = cli(tmp_path, monkeypatch, capsys, "prune:\n  sparsity: no\n")
    assert code == 2 and "prune.sparsity = 'no': sparsity must be a fraction in [0, 1) or 'N:M'" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("text,message", [
    ("prune:\n  method: wanda\nquantize:\n  bits: 4\nprune:\n  sparsity: 0.6\n",
     "params.yaml: key 'prune' is repeated at line 5, column 1"),
    ("prune:\n  sparsity: 0.5\n  sparsity: 0.6\n", "params.yaml: key 'sparsity' is repeated at line 3, column 3"),
    ("prune: [unclosed\n", "params.yaml: not valid YAML at line 2, column 1: expected ',' or ']'"),
    (b"prune:\n  method: \xff\n", "params.yaml: not UTF-8 text (byte 17); save it as UTF-8"),
], ids=["section", "key", "syntax", "not-utf8"])
def test_bad_yaml_is_one_line_exit_2(tmp_path, monkeypatch, capsys, text, message):
    code, err = cli(tmp_path, monkeypatch, capsys, text)
    assert code == 2 and err.startswith(f"prunepipe: error: {message}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "data").exists()


def test_params_pointing_at_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--params", str(tmp_path), "stage", "prune"]) == 2
    assert capsys.readouterr().err == f"prunepipe: error: {tmp_path}: is a folder, not a parameters file\n"


def test_yaml_1_2_scalars(tmp_path):
    (tmp_path / "params.yaml").write_text("calibration:\n  seed: 0x10\nevaluate:\n  add_bos: true\n")
    params = load_params(tmp_path / "params.yaml")
    assert (params.calibration.seed, params.evaluate.add_bos) == (16, True)
    (tmp_path / "params.yaml").write_text("evaluate:\n  add_bos: yes\n")   # YAML 1.1's true is a string now
    with pytest.raises(ParamsError, match=r"evaluate.add_bos = 'yes': allowed: true, false, auto"):
        load_params(tmp_path / "params.yaml")
