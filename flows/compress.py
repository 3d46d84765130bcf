"""The whole chain as one Prefect flow, for `prunepipe run` and scheduled deployments.

Tasks pass paths and configs, never tensors; each stage task is cached on its config
section, its inputs' digests and the code, and a hit counts only while its output exists
intact (see flows/stages.py).
"""

from __future__ import annotations

from prefect import flow

from flows.stages import (CALIBRATION, EVAL_DENSE, EVAL_PRUNED, MODEL, PRUNED, calibrate_task,
                          evaluate_task, model_task, prune_task, report_task)
from tasks.config import Params


@flow(name="compress")
def compress(params: Params) -> dict:
    model = model_task(params.model, str(MODEL))
    calibration = calibrate_task(params.calibration, model, str(CALIBRATION))
    dense_eval = evaluate_task(params.evaluate, model, str(EVAL_DENSE))
    pruned = prune_task(params.prune, model, calibration, str(PRUNED))
    pruned_eval = evaluate_task(params.evaluate, pruned, str(EVAL_PRUNED))
    return report_task(pruned, dense_eval, pruned_eval)
