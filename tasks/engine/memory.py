"""Memory guard: estimate what a stage needs before it starts and fail early, with the
estimate and what is available, when the machine cannot hold it.

Host estimate for the sequential stages (prune, quantize): the float32 model twice (the
loaded model and the copy save_pretrained serialises), the calibration activations twice
(a layer's inputs and outputs), and one layer's statistics (a Hessian per distinct input).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.errors import UserError

GIB = 1 << 30


class InsufficientMemory(UserError):
    """The stage would not fit in the memory this machine has free."""


@dataclass(frozen=True)
class Estimate:
    host_bytes: int
    device_bytes: int     # 0 when the compute device is the CPU


def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def sequential_estimate(model_dir: Path, nsamples: int, seqlen: int, batch: int, device: str, offload: bool,
                        hessian: bool) -> Estimate:
    """Bytes a layer-by-layer pass over the model in `model_dir` needs, host and device. The
    calibration activations are held once, plus the batch being replaced by its output."""
    weights = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    config = json.loads((Path(model_dir) / "config.json").read_text())
    config = config.get("text_config", config)
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 0
    inter = config.get("intermediate_size") or config.get("ffn_dim") or 4 * hidden
    layers = config.get("num_hidden_layers") or config.get("n_layer") or 1
    batch = min(batch, nsamples)   # a sequential.batch_size above nsamples runs as one batch of them all
    activations = (nsamples + batch) * seqlen * hidden * 4
    stats = (hidden * hidden + inter * inter) * 4 if hessian else (hidden + inter) * 4
    layer = (weights // layers) + stats
    if device == "cpu":
        return Estimate(2 * weights + activations + stats, 0)
    return Estimate(2 * weights + (activations if offload else 0), layer + (0 if offload else activations))


def check_memory(need: Estimate, device: str, what: str) -> None:
    available = available_host_bytes()
    if available is not None and need.host_bytes > available:
        raise InsufficientMemory(
            f"{what} needs about {need.host_bytes / GIB:.1f} GiB of host memory, only "
            f"{available / GIB:.1f} GiB is available; lower calibration.nsamples or calibration.seqlen, "
            "or use a machine with more memory")
    if need.device_bytes and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if need.device_bytes > free:
            raise InsufficientMemory(
                f"{what} needs about {need.device_bytes / GIB:.1f} GiB on {device}, only {free / GIB:.1f} GiB "
                "is free; set sequential.offload_activations: true or lower calibration.nsamples")
