"""The whole chain as one Prefect flow, for `prunepipe run` and scheduled deployments.

The stages come from the stage graph (tasks/stages/graph.py), in its order; tasks pass paths
and configs, never tensors; each stage task is cached on its config sections, its inputs'
digests and its code, and a hit counts only while its outputs exist intact (flows/stages.py).
Each stage and the run publish Prefect artifacts (flows/artifacts.py). A deployment run takes
`overrides` of params.yaml's keys, e.g. `-p overrides='{"prune.sparsity": 0.6}'`, applied to
what the run reads, never written back.
"""

from __future__ import annotations

import json
from pathlib import Path

from typing import Any

from prefect import flow

from flows.artifacts import publish_compress, publish_stage
from flows.params import load_params
from flows.stages import run_stage
from tasks.config import Params
from flows.lock import writer_lock
from tasks.stages.graph import COMPRESS, METRICS, STAGES


@flow(name="compress")
def compress(params: Params) -> dict:
    for name in COMPRESS:
        stage = STAGES[name]
        outputs = run_stage(stage, params, cache=True)
        publish_stage(stage, {section: getattr(params, section) for section in stage.params}, outputs)
    metrics = json.loads(Path(METRICS).read_text())
    publish_compress(params, metrics)
    return metrics


@flow(name="compress-from-params")
def compress_from_params(params_file: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict:
    """Deployment entry point (prefect.yaml): read params.yaml when the run starts, with
    `overrides` ({"section.key": value}) on top."""
    params = load_params(Path(params_file), overrides)
    with writer_lock("the `compress-from-params` deployment run"):   # one writer of data/ (flows/lock.py)
        return compress(params)
