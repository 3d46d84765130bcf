"""Bad input gets a clear error naming what is wrong; faults and interruptions lose nothing.
docs/robustness.md lists every case tried here and the answer a user sees."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

from flows.cli import main
from tasks.config import CalibrationConfig, EvaluateConfig, ModelConfig, PruneConfig, QuantizeConfig, SequentialConfig
from tasks.engine.memory import Estimate, InsufficientMemory, check_memory
from tasks.errors import UserError
from tasks.io.artifacts import ArtifactError, write_artifact
from tasks.stages.calibrate import load_calibration
from tasks.text.corpus import CorpusError
from tasks.io.model import ModelSourceError, resolve_source
from tasks.stages.calibrate import calibrate
from tasks.stages.common import StageContext
from tasks.stages.evaluate import evaluate_artifact
from tasks.stages.model import model as build_model
from tasks.stages.prune import prune

LOG = lambda message: None  # noqa: E731
CTX = StageContext(LOG)


def run_prune(cfg, model_dir, calib_dir, out, log=LOG):
    return prune(cfg, SequentialConfig(), model=model_dir, calibration=calib_dir, out=out,
                 run_stats=out.parent / "prune_run.json", ctx=StageContext(log))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llama_folder):
    return build_model(ModelConfig(source=str(llama_folder)), out=tmp_path_factory.mktemp("m") / "model", ctx=CTX)


@pytest.fixture(scope="module")
def calib_dir(model_dir, corpus_file, tmp_path_factory):
    cfg = CalibrationConfig(dataset=str(corpus_file), nsamples=4, seqlen=32)
    return calibrate(cfg, model=model_dir, out=tmp_path_factory.mktemp("c") / "calibration", ctx=CTX)


def run_cli(tmp_path, monkeypatch, capsys, params: dict, *argv) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = main(list(argv))
    return code, capsys.readouterr().err


# ----------------------------------------------------------------- bad parameters

@pytest.mark.parametrize("params,message", [
    ({"prune": {"sparsity": 1.0}}, "prune.sparsity = 1.0: sparsity must be a fraction in [0, 1)"),
    ({"prune": {"sparsity": "4:4"}}, "prune.sparsity = '4:4': N:M pattern needs 0 < N < M"),
    ({"prune": {"method": "obd"}}, "prune.method = 'obd': Input should be 'none', 'magnitude', 'wanda', 'sparsegpt' "
                                    "or 'admm'"),
    ({"pack": {"format": "csr"}}, "pack.format = 'csr': unknown format; allowed: dense, int8"),
    ({"prune": {"device": "npu"}}, "prune.device = 'npu': Input should be 'cpu' or 'cuda'"),
    ({"quantize": {"bits": 5}}, "quantize.bits = 5: Input should be 2, 3, 4 or 8"),
    ({"quantize": {"group_size": 100}}, "quantize.group_size = 100: Input should be -1, 32, 64 or 128"),
    ({"quantize": {"observer": "mse"}}, "quantize.observer: unknown key (remove it or check its spelling)"),
    ({"prune": {"batch_size": 4}}, "prune.batch_size: unknown key (remove it or check its spelling)"),
    ({"evaluate": {"add_bos": "maybe"}}, "evaluate.add_bos = 'maybe': allowed: true, false, auto\n"),
    ({"prune": {"method": "sparsegpt", "sparsity": "2:4"}, "quantize": {"act_order": True, "joint": True},
      "pack": {"format": "nm-int4"}},
     "quantize.joint = true with quantize.act_order = true needs an unstructured prune.sparsity, got '2:4'"),
    ({"calibration": {"nsamples": 0}}, "calibration.nsamples = 0: Input should be greater than 0"),
    ({"pack": {"format": "nm-int4"}}, "pack.format = 'nm-int4' needs an N:M prune.sparsity"),
])
def test_bad_params_exit_2_before_any_work(tmp_path, monkeypatch, capsys, params, message):
    code, err = run_cli(tmp_path, monkeypatch, capsys, params, "stage", "prune")
    assert code == 2 and message in err
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu(tmp_path, monkeypatch, capsys):
    code, err = run_cli(tmp_path, monkeypatch, capsys, {"prune": {"device": "cuda"}}, "stage", "prune")
    assert code == 2 and "prune.device = 'cuda' but no CUDA GPU is available here" in err


def test_yaml_that_is_not_yaml(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("prune: [unclosed\n")
    assert main(["stage", "prune"]) == 2
    assert "params.yaml: not valid YAML" in capsys.readouterr().err


def test_nm_that_does_not_divide_the_width(model_dir, calib_dir, tmp_path):
    # the tiny Llama's widths are 64 and 128: M = 48 divides neither... but must also be a pattern
    with pytest.raises(UserError, match=r"M = 48 does not divide the input width 64 of model\.layers\.0\.self_attn"):
        run_prune(PruneConfig(sparsity="24:48"), model_dir, calib_dir, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_group_size_that_does_not_divide_the_width(tmp_path, corpus_file, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks.quantization.quantizers import check_group_size

    model = LlamaForCausalLM(LlamaConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64))
    with pytest.raises(UserError, match=r"quantize.group_size = 64 does not divide the input width 96 of "
                                        r"model\.layers\.0\.self_attn\.q_proj; allowed here: -1, 32"):
        check_group_size(model, QuantizeConfig(group_size=64))


def test_ignore_pattern_that_matches_nothing_warns(model_dir, calib_dir, tmp_path):
    lines = []
    run_prune(PruneConfig(ignore=("*.mlp.c_proj",)), model_dir, calib_dir, tmp_path / "p", lines.append)
    assert any("warning: prune.ignore pattern '*.mlp.c_proj' matches no decoder-layer Linear" in l for l in lines)


@pytest.mark.parametrize("key,seqlen", [("calibration.seqlen", 4096), ("evaluate.seqlen", 4096)])
def test_seqlen_above_the_context(model_dir, calib_dir, corpus_file, tmp_path, key, seqlen):
    with pytest.raises(UserError, match=rf"{key} = 4096 exceeds the model's context of 256 tokens"):
        if key.startswith("calibration"):
            calibrate(CalibrationConfig(dataset=str(corpus_file), seqlen=seqlen), model=model_dir, out=tmp_path / "c",
                      ctx=CTX)
        else:
            evaluate_artifact(EvaluateConfig(dataset=str(corpus_file), seqlen=seqlen), model=model_dir,
                              out=tmp_path / "e", ctx=CTX)


def test_more_windows_than_the_corpus_holds(model_dir, corpus_file, tmp_path):
    with pytest.raises(CorpusError, match=r"calibration.nsamples = 100000: the calibration split holds \d+ "
                                          r"tokens, only \d+ windows of seqlen = 64"):
        calibrate(CalibrationConfig(dataset=str(corpus_file), nsamples=100000, seqlen=64), model=model_dir,
                  out=tmp_path / "c", ctx=CTX)


def test_model_path_that_does_not_exist():
    with pytest.raises(ModelSourceError, match="not a Hugging Face model folder"):
        resolve_source("./no/such/model")
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        resolve_source("/no/such/model.gguf")


def test_hub_id_while_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The hub reads both at import: set them there too, or this test waits on the network's retries.
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))   # an empty cache
    with pytest.raises(ModelSourceError, match=r"cannot fetch it from the hub and it is not in the local cache "
                                               r"\(is the network reachable\? HF_HUB_OFFLINE=1\)"):
        build_model(ModelConfig(source="nobody/no-model@0123abc"), out=tmp_path / "model", ctx=CTX)


def test_gguf_that_cannot_be_read(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ModelSourceError, match=rf"model.source: cannot load {bad}"):
        build_model(ModelConfig(source=str(bad)), out=tmp_path / "model", ctx=CTX)


# ----------------------------------------------------------------- bad files

def test_weights_with_nan(tmp_path, llama_folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_folder)
    model.model.layers[0].mlp.up_proj.weight.data[3, 5] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    (tmp_path / "nan" / "tokenizer.json").write_bytes((llama_folder / "tokenizer.json").read_bytes())
    with pytest.raises(ModelSourceError, match=r"weight model\.layers\.0\.mlp\.up_proj\.weight holds NaN or Inf"):
        build_model(ModelConfig(source=str(tmp_path / "nan")), out=tmp_path / "model", ctx=CTX)


def test_empty_calibration_text(model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(CorpusError, match=rf"{empty}: the corpus holds no text"):
        calibrate(CalibrationConfig(dataset=str(empty), seqlen=32), model=model_dir, out=tmp_path / "c", ctx=CTX)


def test_truncated_model_file_is_named(model_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"model\.safetensors: sha256 does not match metadata\.json"):
        evaluate_artifact(EvaluateConfig(seqlen=32), model=copy, out=tmp_path / "e", ctx=CTX)


def test_unknown_artifact_version(calib_dir, tmp_path):
    import shutil

    copy = tmp_path / "calibration"
    shutil.copytree(calib_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    (copy / "metadata.json").write_text(json.dumps({**meta, "version": 7}))
    with pytest.raises(ArtifactError, match=r"calibration version 7 is not supported; this prunepipe reads version 1"):
        load_calibration(copy)


# ----------------------------------------------------------------- memory guard

def test_memory_guard_names_estimate_and_available(model_dir):
    from tasks.engine.memory import sequential_estimate

    need = sequential_estimate(model_dir, 4, 32, 2, "cpu", False, True)
    assert need.host_bytes > 2 * (model_dir / "model.safetensors").stat().st_size
    with pytest.raises(InsufficientMemory, match=r"prune needs about 1024\.0 GiB of host memory, only [\d.]+ GiB"):
        check_memory(Estimate(1 << 40, 0), "cpu", "prune")


# ----------------------------------------------------------------- interruption

KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tasks.io.artifacts import write_artifact

    def write(tmp):
        (tmp / "part-1.bin").write_bytes(b"x" * 1000)
        print("half written", flush=True)
        time.sleep(60)

    write_artifact(Path(sys.argv[1]), "demo", 1, {}, write)
""")


def test_sigkill_half_way_leaves_no_artifact_and_the_next_run_completes(tmp_path):
    final = tmp_path / "data" / "pruned"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(final)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "half written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not final.exists(), "a reader or DVC would take a partial directory as complete"
    assert [p.name.split("-")[0] for p in final.parent.iterdir()] == [".pruned.tmp"]
    write_artifact(final, "demo", 1, {}, lambda tmp: (tmp / "part-1.bin").write_bytes(b"y"))
    assert sorted(p.name for p in final.parent.iterdir()) == ["pruned"]  # the stale sibling is gone


@pytest.mark.parametrize("fault", [
    OSError(errno.ENOSPC, "No space left on device"),
    # what transformers' save_pretrained raises through safetensors' Rust writer
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
], ids=["oserror", "safetensors"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_artifact(tmp_path, fault):
    final = write_artifact(tmp_path / "data" / "quantized", "demo", 1, {}, lambda tmp: (tmp / "w.bin").write_bytes(b"old"))

    def write(tmp):
        (tmp / "w.bin").write_bytes(b"half")
        raise fault

    with pytest.raises(ArtifactError, match=r"data/quantized: the disk is full \(\d+\.\d GiB free after removing the "
                                            r"partial write; the previous quantized is kept\): free some space .* and re-run$"):
        write_artifact(final, "demo", 1, {}, write)
    assert (final / "w.bin").read_bytes() == b"old"
    assert sorted(p.name for p in final.parent.iterdir()) == ["quantized"]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_a_message(tmp_path, llama_folder, corpus_file):
    params = {"model": {"source": str(llama_folder)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "stage", "model"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:  # wait until the stage's task is at work
        seen.append(line)
        if "loading folder model" in line:
            break
    began = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)   # as a terminal's Ctrl-C: the whole process group
    err = "".join(seen) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and time.monotonic() - began < 30, err[-3000:]
    assert "prunepipe: interrupted; finished artifacts are intact" in err and "Traceback" not in err
    assert not (tmp_path / "data" / "model").exists()


# ----------------------------------------------------------------- one error contract

def test_a_model_without_decoder_layers_is_an_input_error():
    from tasks.engine.layers import find_decoder_layers

    with pytest.raises(UserError, match=r"^model.source: Sequential has no decoder-layer list \(a ModuleList of "
                                        r"identical blocks holding Linear layers\)$"):
        find_decoder_layers(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_held_out_text_shorter_than_a_window_is_an_input_error():
    from tasks.evaluation.perplexity import perplexity

    with pytest.raises(UserError, match="no evaluation windows: the held-out text is shorter than one "
                                        "evaluate.seqlen window"):
        perplexity(torch.nn.Identity(), torch.zeros(0, 32, dtype=torch.long), 4, torch.device("cpu"))


def test_packed_metadata_naming_unlisted_files_is_an_artifact_error(tmp_path):
    from tasks.formats.artifact import load_packed_tensors, save_packed
    from tasks.formats.packing import pack_weight

    packed = save_packed(tmp_path / "packed", {"layer": pack_weight(torch.ones(2, 8), "dense")})
    meta = json.loads((packed / "metadata.json").read_text())
    meta["layers"]["layer"]["tensors"]["weight"] = "other.safetensors"
    (packed / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"metadata.json: layers name unlisted files \['other.safetensors'\]"):
        load_packed_tensors(packed)


@pytest.mark.parametrize("command", [["show"], ["report"]])
def test_show_and_report_without_metrics_exit_2_in_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    assert capsys.readouterr().err == ("prunepipe: error: metrics.json: no metrics yet "
                                       "(run `dvc repro` or `prunepipe run`)\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_quantize_device_is_checked_up_front(tmp_path, monkeypatch, capsys):
    code, err = run_cli(tmp_path, monkeypatch, capsys, {"quantize": {"device": "cuda"}}, "stage", "model")
    assert code == 2 and "quantize.device = 'cuda' but no CUDA GPU is available here (allowed: cpu, cuda)" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), ("auto", "auto")])
def test_add_bos_takes_yaml_booleans(value, expected):
    from flows.params import parse_params

    assert parse_params(yaml.safe_load(yaml.safe_dump({"evaluate": {"add_bos": value}}))).evaluate.add_bos == expected
