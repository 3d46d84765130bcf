"""The Prefect layer: params validation at the edge, the whole `compress` flow on a tiny
model under Prefect's test harness (with its cache), and `dvc repro` twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import dvc_workspace
from flows.cli import main
from flows.params import ParamsError, parse_params


def tiny_params(llama_folder: Path, corpus_file: Path, **prune) -> dict:
    return {"model": {"source": str(llama_folder)},
            "calibration": {"dataset": str(corpus_file), "nsamples": 4, "seqlen": 32},
            "sequential": {"batch_size": 8, "offload_activations": False},
            "prune": {"method": "wanda", "sparsity": 0.5, **prune},
            "quantize": {"method": "gptq", "bits": 4, "group_size": 32},
            "pack": {"format": "bitmask-int4"},
            "evaluate": {"dataset": str(corpus_file), "seqlen": 32, "max_windows": 6},
            "benchmark": {"shapes": [[64, 128]], "batches": [1], "formats": ["int4", "nm"], "decode_layers": 0,
                          "cpu_batches": [1], "cpu_reps": 1}}


@pytest.mark.parametrize("section,key,value,expected", [
    ("prune", "method", "obs", "prune.method = 'obs': Input should be 'none', 'magnitude', 'wanda', 'sparsegpt' or "
                                  "'admm'"),
    ("prune", "sparsity", 1.2, "prune.sparsity = 1.2: sparsity must be a fraction in [0, 1)"),
    ("prune", "sparsity", "4:2", "prune.sparsity = '4:2': N:M pattern needs 0 < N < M"),
    ("calibration", "nsamples", 0, "calibration.nsamples = 0: Input should be greater than 0"),
    ("evaluate", "device", "tpu", "evaluate.device = 'tpu': Input should be 'cpu' or 'cuda'"),
    ("prune", "methd", "wanda", "prune.methd: unknown key"),
])
def test_bad_params_name_key_value_and_allowed(section, key, value, expected):
    with pytest.raises(ParamsError) as err:
        parse_params({section: {key: value}})
    assert expected in str(err.value)


def test_bad_params_exit_nonzero_and_touch_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("prune:\n  sparsity: 1.5\n")
    assert main(["stage", "prune"]) == 2
    assert "prune.sparsity = 1.5" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_compress_flow_runs_and_caches(tmp_path, monkeypatch, llama_folder, corpus_file):
    from prefect.testing.utilities import prefect_test_harness

    from flows.compress import compress
    from tasks.stages import graph

    # The code keys read a copy of the library, so that the test can change a module.
    shutil.copytree(graph.ROOT / "tasks", tmp_path / "code" / "tasks")
    shutil.copytree(graph.ROOT / "kernels", tmp_path / "code" / "kernels")
    monkeypatch.setattr(graph, "ROOT", tmp_path / "code")
    monkeypatch.chdir(tmp_path)
    params = parse_params(tiny_params(llama_folder, corpus_file))
    with prefect_test_harness(server_startup_timeout=180):   # a busy 2-core CI machine
        metrics = compress(params)
        assert metrics["sparsity"] == 0.5 and metrics["ppl_pruned"] > 0
        assert {key: set(metrics[key]) for key in ("acc_dense", "acc_pruned", "acc_packed")} == dict.fromkeys(
            ("acc_dense", "acc_pruned", "acc_packed"), {"wiki_cloze"})   # the default evaluate.tasks
        assert metrics["ppl_packed"] == pytest.approx(metrics["ppl_quantized"], rel=1e-4)
        assert json.loads(Path("metrics.json").read_text()) == metrics
        assert Path("reports/layer_sparsity.png").stat().st_size > 0
        stamp = Path("data/pruned/metadata.json").stat().st_mtime_ns
        compress(params)                                   # nothing changed: every task a cache hit
        assert Path("data/pruned/metadata.json").stat().st_mtime_ns == stamp
        shutil.rmtree("data/pruned")                       # output gone: the hit is invalid, rerun
        again = compress(params)
        assert (again["ppl_pruned"], again["sparsity"]) == (metrics["ppl_pruned"], metrics["sparsity"])
        assert Path("data/pruned/metadata.json").is_file()
        # a change to OWL reruns what dvc repro reruns: prune and what follows, not the model
        stamps = {d: Path(f"data/{d}/metadata.json").stat().st_mtime_ns for d in ("model", "pruned", "packed")}
        with open(tmp_path / "code/tasks/pruning/owl.py", "a") as module:
            module.write("\n# changed\n")
        compress(params)
        changed = {d for d, stamp in stamps.items() if Path(f"data/{d}/metadata.json").stat().st_mtime_ns != stamp}
        assert changed == {"pruned", "packed"}


@pytest.mark.slow
def test_dvc_repro_twice_runs_nothing_the_second_time(tmp_path, llama_folder, corpus_file):
    run = dvc_workspace(tmp_path, ("dvc.yaml", "tasks", "kernels"), tiny_params(llama_folder, corpus_file))

    def ran(*options: str) -> set[str]:
        out = run("dvc", "repro", *options)
        return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}

    assert ran() == set(yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"])
    assert json.loads((tmp_path / "bench/results/benchmark.json").read_text())["rows"]
    assert json.loads((tmp_path / "metrics.json").read_text())["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert ran() == set()
    # --dry lists the stages whose own params or code changed, without running them (each is a
    # ~15 s process); the stages after them rerun as their inputs change, which a dry run cannot know.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(llama_folder, corpus_file, sparsity=0.6)))
    assert ran("--dry") == {"prune", "quantize"}   # not model, calibrate, evaluate_dense
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(llama_folder, corpus_file)))
    assert ran("--dry") == set()
    # a module one stage imports through another (prune → pruners → owl): that stage and what follows
    with open(tmp_path / "tasks/pruning/owl.py", "a") as module:
        module.write("\n# changed\n")
    assert ran("--dry") == {"prune", "quantize", "pack", "evaluate", "benchmark"}
