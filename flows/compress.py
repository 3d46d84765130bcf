"""The whole chain as one Prefect flow, for `prunepipe run` and scheduled deployments.

Tasks pass paths and configs, never tensors; each stage task is cached on its config
section, its inputs' digests and the code, and a hit counts only while its output exists
intact (see flows/stages.py).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.params import load_params

from flows.stages import (CALIBRATION, EVAL_DENSE, EVAL_PACKED, EVAL_PRUNED, EVAL_QUANTIZED, MODEL, PACKED,
                          PRUNED, QUANTIZED, cached_call, calibrate_task, evaluate_task, model_task, pack_task,
                          prune_task, quantize_task, report_task)
from tasks.config import Params


@flow(name="compress")
def compress(params: Params) -> dict:
    model = cached_call(model_task, cfg=params.model, out=str(MODEL))
    calibration = cached_call(calibrate_task, cfg=params.calibration, model_dir=model, out=str(CALIBRATION))
    dense_eval = cached_call(evaluate_task, cfg=params.evaluate, model_dir=model, out=str(EVAL_DENSE))
    pruned = cached_call(prune_task, cfg=params.prune, model_dir=model, calibration_dir=calibration,
                         out=str(PRUNED))
    quantized = cached_call(quantize_task, cfg=params.quantize, prune_cfg=params.prune, model_dir=model,
                            pruned_dir=pruned, calibration_dir=calibration, out=str(QUANTIZED))
    packed = cached_call(pack_task, cfg=params.pack, quantize_cfg=params.quantize, prune_cfg=params.prune,
                         quantized_dir=quantized, out=str(PACKED))
    evals = {"dense": dense_eval}
    for name, model_dir, out in (("pruned", pruned, EVAL_PRUNED), ("quantized", quantized, EVAL_QUANTIZED),
                                 ("packed", packed, EVAL_PACKED)):
        evals[name] = cached_call(evaluate_task, cfg=params.evaluate, model_dir=model_dir, out=str(out))
    return report_task(pruned, quantized, packed, evals)


@flow(name="compress-from-params")
def compress_from_params(params_file: str = "params.yaml") -> dict:
    """Deployment entry point (prefect.yaml): read params.yaml when the run starts."""
    return compress(load_params(Path(params_file)))
