"""Timing for kernels/dispatch.py and kernels/benchmark.py: GPU time of one call, weights from HBM.

    ms = cuda_median_ms(calls, warmup=10, reps=50)     # calls[i] reads weight copy i

- Rotation: a packed layer of a few MB fits in L2 (60 MB on an H200), so timing one weight over
  and over measures L2, not HBM. Callers pass one call per weight copy, rotation_count() copies
  totalling more than 2× L2, and call i uses copy i mod n: every timed call streams its weights.
- GPU time, not launch time: the stream is first stalled with torch.cuda._sleep, long enough
  for the CPU to enqueue every timed call behind it, so a CUDA event pair around each call
  measures the GPU alone (a Triton launch costs tens of µs of Python, more than a batch-1 GEMV).
  A call that synchronizes the host (a .item()) still includes its own CPU time: it is real.
- The median of the per-call times, after `warmup` calls that continue the rotation (a caller
  whose copies do first-use work, such as a cuSPARSELt compression, warms up every copy).
Only torch is imported: the CPU reference path and the dispatch key never need Triton.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch

DEFAULT_L2_BYTES = 64 << 20  # when torch does not report it (H100/H200: 50/60 MB)
SLEEP_CYCLES_PER_CALL = 200_000  # ≈ 100 µs of enqueueing per call at a 2 GHz SM clock
MIN_REPS = 3


def l2_bytes(device: torch.device | str | int = 0) -> int:
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or DEFAULT_L2_BYTES)


def rotation_count(nbytes: int, l2: int) -> int:
    """Copies of an `nbytes` weight that together exceed 2× L2 (at least 2)."""
    return max(2, math.ceil(2 * l2 / max(nbytes, 1)) + 1)


def cuda_median_ms(calls: Sequence[Callable[[], object]], warmup: int, reps: int,
                   max_ms: float | None = None) -> float:
    """Median GPU time in ms of one call; calls rotate (see the module docstring). With max_ms,
    reps shrink (not below MIN_REPS) so that the timed calls take about max_ms in all."""
    n = len(calls)
    start = time.perf_counter()
    for i in range(warmup):
        calls[i % n]()
    torch.cuda.synchronize()
    if max_ms is not None and warmup:
        per_call_ms = 1e3 * (time.perf_counter() - start) / warmup  # wall time: an upper bound
        reps = max(MIN_REPS, min(reps, int(max_ms / max(per_call_ms, 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    torch.cuda._sleep(reps * SLEEP_CYCLES_PER_CALL)
    for i, (begin, end) in enumerate(events):
        begin.record()
        calls[(warmup + i) % n]()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(begin.elapsed_time(end) for begin, end in events)


def cpu_median_ms(call: Callable[[], object], warmup: int, reps: int) -> float:
    """Median wall time in ms of one call on the CPU."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def copy_gbps(nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device copy of an `nbytes` buffer: (bytes read + bytes written) / time, GB/s.
    The ceiling a weight-streaming kernel is measured against."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_median_ms([lambda: dst.copy_(src)], warmup=3, reps=reps)
    return 2 * nbytes / (ms * 1e6)


def cuda_span_ms(call: Callable[[], object], times: int) -> float:
    """GPU time in ms of `times` back-to-back calls, between two CUDA events (a decode loop)."""
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(times):
        call()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end)
