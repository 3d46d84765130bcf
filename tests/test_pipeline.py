"""The stage functions end to end on a tiny Llama and a tiny corpus (no Prefect)."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.config import (CalibrationConfig, EvaluateConfig, ModelConfig, PackConfig, PruneConfig, QuantizeConfig,
                          SequentialConfig)
from tasks.errors import UserError
from tasks.formats.packing import FORMAT_VERSION
from tasks.evaluation import zero_shot
from tasks.evaluation.perplexity import read_accuracy, read_perplexity
from tasks.io.artifacts import ArtifactError, read_metadata
from tasks.io.model import load_model_dir
from tasks.stages.calibrate import calibrate, load_calibration
from tasks.stages.common import StageContext
from tasks.stages.evaluate import build_metrics, layer_table, measure_artifact
from tasks.stages.model import model as build_model
from tasks.stages.pack import pack
from tasks.stages.prune import prune
from tasks.stages.quantize import quantize

LOG = lambda message: None  # noqa: E731
CTX, SEQ = StageContext(LOG), SequentialConfig()


def run_prune(cfg, model, calib, out):
    return prune(cfg, SEQ, model=model, calibration=calib, out=out, run_stats=out.parent / f"{out.name}_run.json",
                 ctx=CTX)


def run_quantize(cfg, prune_cfg, model, pruned, calib, out):
    return quantize(cfg, SEQ, prune_cfg, model=model, pruned=pruned, calibration=calib, out=out,
                    run_stats=out.parent / f"{out.name}_run.json", ctx=CTX)


@pytest.fixture(scope="module")
def stages(tmp_path_factory, llama_folder, corpus_file):
    root = tmp_path_factory.mktemp("data")
    model = build_model(ModelConfig(source=str(llama_folder)), out=root / "model", ctx=CTX)
    calib = calibrate(CalibrationConfig(dataset=str(corpus_file), nsamples=8, seqlen=32), model=model,
                      out=root / "calibration", ctx=CTX)
    return root, model, calib


def test_model_and_calibration_artifacts(stages, llama_folder):
    root, model, calib = stages
    meta = read_metadata(model, "model", 1)
    assert meta["source"]["kind"] == "folder" and meta["architecture"] == "LlamaForCausalLM"
    tokens = load_calibration(calib)
    assert tokens.shape == (8, 32) and tokens.dtype == torch.long
    assert tokens[:, 0].eq(1).all(), "a tokenizer that adds BOS gets BOS-led windows"  # <s> is id 1


def test_prune_changes_only_decoder_linears(stages):
    root, model, calib = stages
    out = run_prune(PruneConfig(method="wanda", sparsity=0.5), model, calib, root / "pruned")
    dense, _, _ = load_model_dir(model)
    pruned, _, meta = load_model_dir(out)
    changed = {name for name, w in pruned.state_dict().items() if not torch.equal(w, dense.state_dict()[name])}
    linears = {f"{n}.weight" for n, m in dense.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in n}
    assert changed == linears
    for name in linears:
        w = pruned.state_dict()[name]
        assert (w == 0).sum(dim=1).eq(w.shape[1] // 2).all(), name
    records = json.loads((out / "layers.json").read_text())
    assert len(records) == 2 * 7
    table = layer_table(records)
    assert list(table.columns)[:3] == ["layer", "all", "q_proj"] and table["all"].eq(0.5).all()


def test_evaluate_and_metrics(stages):
    root, model, calib = stages
    prune_cfg, qcfg = PruneConfig(method="magnitude", sparsity="2:4"), QuantizeConfig(group_size=32)
    pruned = run_prune(prune_cfg, model, calib, root / "p24")
    quantized = run_quantize(qcfg, prune_cfg, model, pruned, calib, root / "q24")
    packed = pack(PackConfig(format="nm-int4"), quantized=quantized, out=root / "pk24", ctx=CTX)
    cfg = EvaluateConfig(dataset=read_metadata(calib, "calibration", 1)["config"]["dataset"], seqlen=32)
    tasks = zero_shot.load_tasks(cfg)   # the default: wiki_cloze, from the same held-out split
    evals = {name: measure_artifact(cfg, path, root / f"eval_{name}", CTX, None if name == "quantized" else tasks)
             for name, path in (("dense", model), ("pruned", pruned), ("quantized", quantized), ("packed", packed))}
    ppl = {name: read_perplexity(path) for name, path in evals.items()}
    acc = {name: read_accuracy(evals[name]) for name in ("dense", "pruned", "packed")}
    assert 1.0 < ppl["dense"] < 1e4 and ppl["pruned"] != ppl["dense"]
    assert ppl["packed"] == pytest.approx(ppl["quantized"], rel=1e-5)
    assert read_accuracy(evals["quantized"]) == {} and all(set(a) == {"wiki_cloze"} for a in acc.values())
    args = (ppl, json.loads((root / "p24_run.json").read_text()), json.loads((packed / "metadata.json").read_text()),
            json.loads((quantized / "layers.json").read_text()))
    assert not any(key.startswith("acc_") for key in build_metrics(*args))   # no tasks configured
    metrics = build_metrics(*args, acc)
    assert [key for key in metrics if key.startswith(("ppl_", "acc_"))] == [
        "ppl_dense", "ppl_pruned", "ppl_quantized", "ppl_packed", "acc_dense", "acc_pruned", "acc_packed"]
    assert metrics["acc_packed"] == {"wiki_cloze": round(acc["packed"]["wiki_cloze"], 4)}
    assert 0 <= metrics["acc_dense"]["wiki_cloze"] <= 1
    assert metrics["sparsity"] == 0.5 and set(metrics["sparsity_per_type"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {"ppl_quantized", "ppl_packed", "bytes_per_weight", "size_ratio"} <= metrics.keys()
    assert metrics["size_ratio"] == pytest.approx(metrics["bytes_per_weight"] / 2, abs=1e-4)
    assert metrics["peak_host_mib"] > 0


@pytest.mark.parametrize("method,sparsity,quantize_cfg,fmt", [
    ("wanda", "2:4", {"method": "gptq", "bits": 4, "group_size": 32, "act_order": False}, "nm-int4"),
    ("wanda", "2:4", {"method": "gptq", "bits": 4, "group_size": 32, "act_order": True}, "nm-int4"),
    ("sparsegpt", "2:4", {"method": "gptq", "bits": 4, "group_size": 32, "joint": True, "act_order": False}, "nm-int4"),
    ("sparsegpt", 0.5, {"method": "gptq", "bits": 4, "group_size": 32, "joint": True, "act_order": True},
     "bitmask-int4"),
    ("wanda", "2:4", {"method": "rtn", "bits": 8, "group_size": -1, "symmetric": True}, "nm-int8"),
    ("wanda", "2:4", {"method": "none"}, "nm"),
], ids=["gptq", "gptq-actorder", "joint", "joint-actorder", "rtn8", "none"])
def test_quantize_pack_and_load_back(stages, method, sparsity, quantize_cfg, fmt, request):
    from prunepipe import load_packed

    root, model, calib = stages
    tag = request.node.callspec.id
    prune_cfg = PruneConfig(method=method, sparsity=sparsity)
    pruned = run_prune(prune_cfg, model, calib, root / f"p-{tag}")
    qcfg = QuantizeConfig(**quantize_cfg)
    quantized = run_quantize(qcfg, prune_cfg, model, pruned, calib, root / f"q-{tag}")
    packed = pack(PackConfig(format=fmt), quantized=quantized, out=root / f"pk-{tag}", ctx=CTX)

    fake, _, _ = load_model_dir(quantized)
    before, _, _ = load_model_dir(pruned)
    if not qcfg.joint:  # joint prunes the dense model itself: its zeros are its own, the pattern all the same
        for name, w in fake.state_dict().items():   # every pruned zero is still exactly zero
            assert torch.equal(w[before.state_dict()[name] == 0], torch.zeros_like(w[before.state_dict()[name] == 0]))
    reloaded = load_packed(packed)
    ids = load_calibration(calib)[:2]
    with torch.no_grad():
        want, got = fake(ids).logits.double(), reloaded(ids).logits.double()
    assert torch.isfinite(got).all()
    # int formats dequantize exactly; float formats store fp16 values
    tol = 1e-5 if fmt != "nm" else 2e-2
    assert (got - want).abs().max() <= tol * want.abs().max()
    meta = json.loads((packed / "metadata.json").read_text())
    # kept values + 2-bit positions of the kept half + fp16 scale and uint8 zero per group (bitmask: 1 bit per
    # weight, each chunk of 512 columns' codes padded to 16 bytes and an int32 offset per chunk)
    expected = {"nm-int4": 0.25 + 0.125 + 3 / 32, "nm-int8": 0.5 + 0.125 + 3 / 72, "nm": 1.125}.get(fmt)
    if fmt == "bitmask-int4":
        weights = [w for name, w in fake.state_dict().items() if ".layers." in name and name.endswith("proj.weight")]
        kept = [(w != 0)[:, j:j + 512].sum(1) for w in weights for j in range(0, w.shape[1], 512)]
        stored = sum(16 * int(((c + 31) // 32).sum()) + 4 * c.numel() for c in kept)
        expected = 0.125 + 3 / 32 + stored / sum(w.numel() for w in weights)
    assert meta["bytes_per_weight"] == pytest.approx(expected, rel=0.03)


def test_packed_artifact_tampering_is_named(stages, tmp_path):
    import shutil

    from prunepipe import load_packed

    root, model, calib = stages
    prune_cfg, qcfg = PruneConfig(sparsity=0.5), QuantizeConfig(method="rtn", group_size=32)
    pruned = run_prune(prune_cfg, model, calib, root / "p50")
    quantized = run_quantize(qcfg, prune_cfg, model, pruned, calib, root / "q50")
    packed = pack(PackConfig(format="bitmask-int4"), quantized=quantized, out=root / "pk50", ctx=CTX)
    copy = tmp_path / "packed"
    shutil.copytree(packed, copy)
    data = (copy / "rest.safetensors").read_bytes()
    (copy / "rest.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"rest\.safetensors: sha256 does not match"):
        load_packed(copy)


def test_altered_artifact_is_rejected(stages, tmp_path):
    root, model, calib = stages
    import shutil
    copy = tmp_path / "calibration"
    shutil.copytree(calib, copy)
    data = bytearray((copy / "tokens.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "tokens.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="tokens.safetensors: sha256 does not match"):
        load_calibration(copy)


def test_owl_sets_per_layer_sparsity_around_the_target(corpus_file, tokenizer):
    from conftest import tiny_llama

    from tasks.pruning.pruners import prune_model

    model = tiny_llama(len(tokenizer), layers=4)
    tokens = torch.randint(3, len(tokenizer), (4, 32), generator=torch.Generator().manual_seed(0))
    cfg = PruneConfig(method="wanda", sparsity=0.6, owl={"enabled": True, "lam": 0.08})
    report = prune_model(model, tokens, cfg, SEQ, LOG)
    targets = {r.layer: r.target for r in report.records}
    assert len(set(targets.values())) > 1, "random layers differ in outliers, so in sparsity"
    assert sum(targets.values()) / 4 == pytest.approx(0.6, abs=1e-9)
    assert all(0.52 - 1e-9 <= t <= 0.68 + 1e-9 for t in targets.values())
    for r in report.records:  # each row keeps exactly floor((1 - target)·cols) weights pruned away
        assert r.sparsity == pytest.approx(int(r.cols * r.target) / r.cols)


def test_owl_refuses_nm():
    with pytest.raises(ValueError, match="needs an unstructured prune.sparsity"):
        PruneConfig(sparsity="2:4", owl={"enabled": True})


def test_same_params_and_seed_give_byte_identical_artifacts(stages, tmp_path, corpus_file):
    root, model, calib = stages
    cfg = CalibrationConfig(dataset=str(corpus_file), nsamples=8, seqlen=32)
    again = calibrate(cfg, model=model, out=tmp_path / "calibration", ctx=CTX)
    assert (again / "metadata.json").read_bytes() == (calib / "metadata.json").read_bytes()
    prune_cfg = PruneConfig(method="sparsegpt", sparsity=0.5)
    first = run_prune(prune_cfg, model, calib, tmp_path / "a")
    second = run_prune(prune_cfg, model, again, tmp_path / "b")
    # metadata.json lists every file's sha256, so equal bytes mean equal artifacts
    a, b = (json.loads((d / "metadata.json").read_text()) for d in (first, second))
    assert {k for k in a if a[k] != b[k]} == set()
    assert {f for f in a["files"] if a["files"][f] != b["files"][f]} == set()
    assert (first / "metadata.json").read_bytes() == (second / "metadata.json").read_bytes()


def test_pack_takes_spec_and_pattern_from_the_quantized_artifact(stages):
    root, model, calib = stages
    prune_cfg = PruneConfig(method="magnitude", sparsity="2:4")
    pruned = run_prune(prune_cfg, model, calib, root / "p-meta")
    quantized = run_quantize(QuantizeConfig(method="rtn", bits=8, group_size=-1), prune_cfg, model, pruned, calib,
                             root / "q-meta")
    meta = read_metadata(quantized, "model", 1)
    assert (meta["spec"], meta["nm"]) == ({"bits": 8, "group_size": -1, "symmetric": False}, [2, 4])
    packed = pack(PackConfig(format="nm-int8"), quantized=quantized, out=root / "pk-meta", ctx=CTX)
    layer = next(iter(read_metadata(packed, "prunepipe-packed", FORMAT_VERSION)["layers"].values()))
    assert (layer["bits"], layer["group_size"], layer["n"], layer["m"]) == (8, -1, 2, 4)
    unquantized = run_quantize(QuantizeConfig(method="none"), prune_cfg, model, pruned, calib, root / "q-none")
    with pytest.raises(UserError, match=r"^pack.format = 'bitmask-int4' stores quantized codes but "
                                        r".*q-none/metadata.json holds none \(quantize.method none\)"):
        pack(PackConfig(format="bitmask-int4"), quantized=unquantized, out=root / "pk-none", ctx=CTX)
