"""A broken input artifact is named in one line before a stage spends time on the others."""

from __future__ import annotations

import shutil
import time

import pytest

from tasks.config import EvaluateConfig
from tasks.io.artifacts import ArtifactError, write_artifact
from tasks.io.model import check_seqlen
from tasks.stages.common import StageContext
from tasks.stages.evaluate import evaluate


def test_truncated_packed_metadata_stops_evaluate_before_any_perplexity(tmp_path, packed_workspace):
    for name in ("pruned", "quantized", "packed"):
        shutil.copytree(packed_workspace / "data" / name, tmp_path / name)
    eval_dense = write_artifact(tmp_path / "eval_dense", "perplexity", 1, {}, lambda tmp: None)
    meta = tmp_path / "packed" / "metadata.json"
    meta.write_text(meta.read_text()[:100])
    out = {name: tmp_path / "out" / name for name in ("eval_pruned", "eval_quantized", "eval_packed")}
    began = time.monotonic()
    with pytest.raises(ArtifactError, match=rf"^{meta}: not valid JSON .*the file is altered or truncated"):
        evaluate(EvaluateConfig(seqlen=32), pruned=tmp_path / "pruned", quantized=tmp_path / "quantized",
                 packed=tmp_path / "packed", eval_dense=eval_dense, prune_run=packed_workspace / "prune_run.json",
                 **out, metrics=tmp_path / "metrics.json", sparsity_csv=tmp_path / "s.csv",
                 sparsity_png=tmp_path / "s.png", ctx=StageContext(lambda line: None))
    assert time.monotonic() - began < 10 and not (tmp_path / "out").exists()


def test_broken_config_json_in_an_artifact_is_named(tmp_path, packed_workspace):
    copy = tmp_path / "pruned"
    shutil.copytree(packed_workspace / "data" / "pruned", copy)
    (copy / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ArtifactError, match=rf"^{copy / 'config.json'}: cannot be read \("):
        check_seqlen(32, copy, "evaluate.seqlen")


def test_a_batch_size_above_nsamples_is_capped_in_the_memory_estimate(packed_workspace):
    from tasks.engine.memory import sequential_estimate

    model = packed_workspace / "data" / "model"
    huge, capped = (sequential_estimate(model, 4, 32, batch, "cpu", False, True) for batch in (10_000_000, 4))
    assert huge == capped   # sequential.batch_size: 10000000 no longer reads as terabytes of activations
