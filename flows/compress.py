"""The whole chain as one Prefect flow, for `prunepipe run` and scheduled deployments.

The stages come from the stage graph (tasks/stages/graph.py), in its order; tasks pass paths
and configs, never tensors; each stage task is cached on its config sections, its inputs'
digests and its code, and a hit counts only while its outputs exist intact (flows/stages.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from flows.params import load_params
from flows.stages import run_stage
from tasks.config import Params
from tasks.stages.graph import COMPRESS, METRICS, STAGES


@flow(name="compress")
def compress(params: Params) -> dict:
    for name in COMPRESS:
        run_stage(STAGES[name], params, cache=True)
    return json.loads(Path(METRICS).read_text())


@flow(name="compress-from-params")
def compress_from_params(params_file: str = "params.yaml") -> dict:
    """Deployment entry point (prefect.yaml): read params.yaml when the run starts."""
    return compress(load_params(Path(params_file)))
