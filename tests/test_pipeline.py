"""The stage functions end to end on a tiny Llama and a tiny corpus (no Prefect)."""

from __future__ import annotations

import json

import pytest
import torch

from tasks import pipeline
from tasks.artifacts import ArtifactError, read_metadata
from tasks.config import CalibrationConfig, EvaluateConfig, ModelConfig, PruneConfig
from tasks.model import load_model_dir
from tasks.report import build_metrics, layer_table

LOG = lambda message: None  # noqa: E731


@pytest.fixture(scope="module")
def stages(tmp_path_factory, llama_folder, corpus_file):
    root = tmp_path_factory.mktemp("data")
    model = pipeline.build_model(ModelConfig(source=str(llama_folder)), root / "model", LOG)
    calib = pipeline.calibrate(CalibrationConfig(dataset=str(corpus_file), nsamples=8, seqlen=32),
                               model, root / "calibration", LOG)
    return root, model, calib


def test_model_and_calibration_artifacts(stages, llama_folder):
    root, model, calib = stages
    meta = read_metadata(model, "model", 1)
    assert meta["source"]["kind"] == "folder" and meta["architecture"] == "LlamaForCausalLM"
    tokens = pipeline.load_calibration(calib)
    assert tokens.shape == (8, 32) and tokens.dtype == torch.long
    assert tokens[:, 0].eq(1).all(), "a tokenizer that adds BOS gets BOS-led windows"  # <s> is id 1


def test_prune_changes_only_decoder_linears(stages):
    root, model, calib = stages
    out = pipeline.prune(PruneConfig(method="wanda", sparsity=0.5), model, calib, root / "pruned", LOG)
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
    pruned = pipeline.prune(PruneConfig(method="magnitude", sparsity="2:4"), model, calib, root / "p24", LOG)
    cfg = EvaluateConfig(dataset=read_metadata(calib, "calibration", 1)["config"]["dataset"], seqlen=32)
    dense_eval = pipeline.evaluate_model(cfg, model, root / "eval_dense", LOG)
    pruned_eval = pipeline.evaluate_model(cfg, pruned, root / "eval_pruned", LOG)
    ppl_dense, ppl_pruned = pipeline.read_perplexity(dense_eval), pipeline.read_perplexity(pruned_eval)
    assert 1.0 < ppl_dense < 1e4 and ppl_pruned != ppl_dense
    meta = json.loads((pruned / "metadata.json").read_text())
    metrics = build_metrics(ppl_dense, ppl_pruned, meta, json.loads((pruned / "layers.json").read_text()))
    assert metrics["sparsity"] == 0.5 and set(metrics["sparsity_per_type"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert metrics["peak_host_mib"] > 0


def test_altered_artifact_is_rejected(stages, tmp_path):
    root, model, calib = stages
    import shutil
    copy = tmp_path / "calibration"
    shutil.copytree(calib, copy)
    data = bytearray((copy / "tokens.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "tokens.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="tokens.safetensors: sha256 does not match"):
        pipeline.load_calibration(copy)


def test_owl_sets_per_layer_sparsity_around_the_target(corpus_file, tokenizer):
    from conftest import tiny_llama

    from tasks.prune import prune_model

    model = tiny_llama(len(tokenizer), layers=4)
    tokens = torch.randint(3, len(tokenizer), (4, 32), generator=torch.Generator().manual_seed(0))
    cfg = PruneConfig(method="wanda", sparsity=0.6, owl={"enabled": True, "lam": 0.08})
    report = prune_model(model, tokens, cfg, LOG)
    targets = {r.layer: r.target for r in report.records}
    assert len(set(targets.values())) > 1, "random layers differ in outliers, so in sparsity"
    assert sum(targets.values()) / 4 == pytest.approx(0.6, abs=1e-9)
    assert all(0.52 - 1e-9 <= t <= 0.68 + 1e-9 for t in targets.values())
    for r in report.records:  # each row keeps exactly floor((1 - target)·cols) weights pruned away
        assert r.sparsity == pytest.approx(int(r.cols * r.target) / r.cols)


def test_owl_refuses_nm():
    with pytest.raises(ValueError, match="needs an unstructured prune.sparsity"):
        PruneConfig(sparsity="2:4", owl={"enabled": True})
