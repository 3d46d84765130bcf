"""Op-level benchmark: the packed-weight kernels against torch's own paths, as rows of plain dicts.

    rows = op_rows([(4096, 4096)], batches=[1, 16], formats=["int4", "nm"], group_size=128, packer=packer,
                   timing=Timing(warmup=10, reps=50, max_ms=200))          # CUDA
    rows = cpu_rows([(576, 576)], batches=[1, 16], formats=["int4"], group_size=128, packer=packer, reps=3)
    rows = add_speedups(rows)

y = x (B, K) @ Ŵᵀ with Ŵ (N, K) random and x fp16. `packer(format, w, group_size)` returns the
PackedWeight the packed model itself would hold (tasks/stages/benchmark.py passes the pack stage's
own code: 2:4 or 50% magnitude pruning, RTN codes), so every format row runs on real packed
tensors. One row per path, weight shape (N, K) and batch B:
    dense-cublas          F.linear on the dense fp16 weight: the baseline (dense_ms of every row)
    triton-<format>       our kernel (kernels/<format>.py), autotuned before it is timed
    torch-dequant-<fmt>   dispatch.reference: the packed model's own fallback (its unpack, then F.linear)
    dispatch-<fmt>        dispatch.linear: the path the dispatcher picked for this key (`note` names it)
    torch-2:4-semi        to_sparse_semi_structured (cuSPARSELt, default algorithm) through F.linear
    torch-2:4-cslt        torch._cslt_sparse_mm with the algorithm torch._cslt_sparse_mm_search picks
                          (x padded to 8 rows outside the timed call, as a serving engine's buffer is)
    torch-int4-tinygemm   torch._weight_int4pack_mm (bf16 x), the fastest of inner_k_tiles 2, 4 and 8
The torch 2:4 peers multiply the `nm` weight, tinygemm the `int4` codes (dispatch.tinygemm_inputs).

A row: kernel, format, N, K, batch, dtype, ms, bytes (the stored weight a call must read),
GBps = bytes / ms, err = max |y − x·Ŵᵀ| / max |x·Ŵᵀ| against Ŵ in float64, wrong (err above
dispatch.TOLERANCE for x's dtype), note (the setting a peer ran with); add_speedups adds dense_ms
and speedup = dense_ms / ms. A path that refuses or fails gets `error` and ms None. Timing is
kernels/timing.py's: the median GPU time of a call, each call on its own copy of the weights, the
copies together > 2× L2, so weights stream from HBM. Without CUDA, cpu_rows times the CPU path
instead: float32 x through the packed model's fallback, against F.linear on the dense weight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
from torch.nn import functional as F

from kernels import FORMATS, dispatch, launcher
from kernels.dispatch import Dispatcher, PackedWeight
from kernels.timing import cpu_median_ms, cuda_median_ms, l2_bytes, rotation_count

DENSE = "dense"
DEADLINE = "stopped-at-deadline"
TINYGEMM_TILES = (2, 4, 8)
Packer = Callable[[str, torch.Tensor, int], PackedWeight]  # (format, w (N, K) fp16, group_size) → packed


@dataclass(frozen=True)
class Timing:
    warmup: int
    reps: int
    max_ms: float  # per path: fewer reps (at least 3) when a call is slow
    clock: Callable[..., float] = cuda_median_ms  # (calls, warmup, reps, max_ms) → ms


def random_weight(n: int, k: int, device: str, seed: int = 0) -> torch.Tensor:
    """(N, K) fp16 N(0, 0.02²), the scale of a trained LLM's Linear."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return (0.02 * torch.randn(n, k, generator=gen, device=device)).half()


def rel_err(y: torch.Tensor, want: torch.Tensor) -> float:
    """max |y − want| / max |want|, in float64."""
    return ((y.double() - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()


def describe(err: Exception) -> str:
    first = str(err).strip().splitlines()
    return f"{type(err).__name__}: {first[0][:300] if first else ''}"


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def rotation(first: object, make: Callable[[], object], size: int, l2: int) -> list:
    """`first` and make()'s fresh copies of it: enough `size`-byte weights to exceed 2× L2."""
    return [first] + [make() for _ in range(rotation_count(size, l2) - 1)]


def is_wrong(err: float, dtype: str) -> bool:
    """err above the dispatcher's bound for x's dtype (True for NaN)."""
    return not err <= dispatch.TOLERANCE[getattr(torch, dtype)]


def measure(loc: dict, kernel: str, fmt: str, run: Callable[[object], torch.Tensor], weights: list,
            want: torch.Tensor, size: int, timing: Timing, **extra) -> dict:
    """One row at `loc` (where()): run(weights[0]) checked against `want`, then timed rotating
    over `weights`."""
    row = {"kernel": kernel, "format": fmt, **loc, "bytes": size, **extra}
    try:
        row["err"] = rel_err(run(weights[0]), want)
        row["wrong"] = is_wrong(row["err"], loc["dtype"])
        ms = timing.clock([partial(run, w) for w in weights], timing.warmup, timing.reps, timing.max_ms)
    except Exception as err:  # noqa: BLE001 - a peer that refuses a shape is a result, not a crash
        return {**row, "ms": None, "error": describe(err)}
    return {**row, "ms": ms, "GBps": size / (ms * 1e6)}


def where(n: int, k: int, x: torch.Tensor) -> dict:
    return {"N": n, "K": k, "batch": x.shape[0], "dtype": str(x.dtype).removeprefix("torch.")}


# ----------------------------------------------------------------------------- CUDA rows

def dense_rows(w: torch.Tensor, xs: list[torch.Tensor], timing: Timing, l2: int) -> list[dict]:
    weights = rotation(w, w.clone, nbytes(w), l2)
    w64 = w.double()
    return [measure(where(*w.shape, x), "dense-cublas", DENSE, partial(F.linear, x), weights, x.double() @ w64.T,
                    nbytes(w), timing) for x in xs]


def format_rows(fmt: str, weight: PackedWeight, xs: list[torch.Tensor], timing: Timing, l2: int,
                dispatcher: Dispatcher) -> list[dict]:
    """Our kernel (where the format has one), the packed model's fallback and the dispatcher's pick."""
    n, k = weight.shape
    w_hat = weight.dense(weight.tensors, torch.float64)
    weights = rotation(weight, weight.copy, weight.nbytes, l2)
    paths = {"torch-dequant": lambda w, x: dispatch.reference(x, w), "dispatch": lambda w, x: dispatcher.linear(x, w)}
    if fmt in FORMATS:
        kernel = launcher(fmt)
        paths = {"triton": lambda w, x: kernel(x, **w.tensors, **w.params), **paths}
    rows = []
    for x in xs:
        want = x.double() @ w_hat.T
        for name, path in paths.items():
            row = measure(where(n, k, x), f"{name}-{fmt}", fmt, partial(path, x=x), weights, want, weight.nbytes,
                          timing)
            if name == "dispatch" and x.is_cuda and row.get("ms") is not None:
                key = dispatch.dispatch_key(weight, x.shape[0], x.dtype, torch.cuda.get_device_name(x.device))
                row["note"] = f"path={dispatcher.entries[key]['path']}"
            rows.append(row)
    return rows


def semi_structured_rows(w_hat: torch.Tensor, xs: list[torch.Tensor], timing: Timing, l2: int) -> list[dict]:
    """torch's 2:4 paths on a 2:4 Ŵ (N, K) float64: to_sparse_semi_structured, and the raw
    cuSPARSELt op with a searched algorithm."""
    from torch.sparse import to_sparse_semi_structured

    n, k = w_hat.shape
    w16 = w_hat.half()
    rows = []
    try:
        semi = to_sparse_semi_structured(w16)
        compressed = torch._cslt_compress(w16)
    except Exception as err:  # noqa: BLE001
        return [{"kernel": name, "format": "nm", **where(n, k, x), "ms": None, "error": describe(err)}
                for x in xs for name in ("torch-2:4-semi", "torch-2:4-cslt")]
    semis = rotation(semi, lambda: to_sparse_semi_structured(w16), nbytes(semi.packed), l2)
    compresseds = rotation(compressed, compressed.clone, nbytes(compressed), l2)
    for x in xs:
        want = x.double() @ w_hat.T
        rows.append(measure(where(n, k, x), "torch-2:4-semi", "nm", partial(F.linear, x), semis, want,
                            nbytes(semi.packed), timing))
        batch = x.shape[0]
        padded = F.pad(x, (0, 0, 0, -batch % 8)).t()  # (K, B8)
        try:
            algorithm = torch._cslt_sparse_mm_search(compressed, padded, transpose_result=True)
        except Exception as err:  # noqa: BLE001
            rows.append({"kernel": "torch-2:4-cslt", "format": "nm", **where(n, k, x), "ms": None,
                         "error": describe(err)})
            continue
        run = lambda c, p=padded, a=algorithm, b=batch: torch._cslt_sparse_mm(  # noqa: E731
            c, p, transpose_result=True, alg_id=a)[:b]
        rows.append(measure(where(n, k, x), "torch-2:4-cslt", "nm", run, compresseds, want, nbytes(compressed),
                            timing, note=f"alg_id={algorithm}"))
    return rows


def tinygemm_rows(weight: PackedWeight, xs: list[torch.Tensor], timing: Timing, l2: int) -> list[dict]:
    """torch._weight_int4pack_mm on an `int4` weight's own codes, at its best inner_k_tiles, per batch."""
    n, k = weight.shape
    group = weight.params["group_size"]
    codes, scales_and_zeros = dispatch.tinygemm_inputs(weight.tensors["qweight"], weight.tensors["scales"],
                                                       weight.tensors["zeros"], group)
    w_hat = weight.dense(weight.tensors, torch.float64)
    best: dict[int, dict] = {}
    for tiles in TINYGEMM_TILES:
        try:
            packed = torch._convert_weight_to_int4pack(codes, tiles)
        except Exception as err:  # noqa: BLE001
            for x in xs:
                best.setdefault(x.shape[0], {"kernel": "torch-int4-tinygemm", "format": "int4",
                                             **where(n, k, x.bfloat16()), "ms": None, "error": describe(err)})
            continue
        size = nbytes(packed, scales_and_zeros)
        weights = rotation((packed, scales_and_zeros), lambda p=packed: (p.clone(), scales_and_zeros.clone()),
                           size, l2)
        for x in xs:
            xb = x.bfloat16()
            run = lambda t, xb=xb: torch._weight_int4pack_mm(xb, t[0], group, t[1])  # noqa: E731
            row = measure(where(n, k, xb), "torch-int4-tinygemm", "int4", run, weights, xb.double() @ w_hat.T,
                          size, timing, note=f"inner_k_tiles={tiles}")
            old = best.get(x.shape[0])
            if old is None or old["ms"] is None or (row["ms"] is not None and row["ms"] < old["ms"]):
                best[x.shape[0]] = row
    return list(best.values())


def op_rows(shapes: Iterable[tuple[int, int]], batches: Iterable[int], formats: Iterable[str], group_size: int,
            timing: Timing, packer: Packer, dispatcher: Dispatcher, deadline: float | None = None,
            log: Callable[[str], None] = print, on_step: Callable[[list[dict]], None] = lambda rows: None,
            device: str = "cuda") -> list[dict]:
    """Every path for every shape and batch on the current CUDA device, shapes in the order given.
    on_step(rows so far) runs after each shape × format, so a killed run keeps what it measured. With
    a deadline (time.monotonic()), no new shape or format starts after it; a last row (kernel
    DEADLINE) says where it stopped."""
    l2 = l2_bytes(device) if device == "cuda" else 0  # elsewhere (tests, interpreter): 2 copies
    rows = []
    for n, k in shapes:
        w = random_weight(n, k, device)
        xs = [torch.randn(b, k, device=device, dtype=torch.float16) for b in batches]
        steps = [("dense", lambda: dense_rows(w, xs, timing, l2))]
        for fmt in formats:
            steps.append((fmt, lambda fmt=fmt: format_rows(fmt, packer(fmt, w, group_size), xs, timing, l2,
                                                           dispatcher)))
        if "nm" in formats:
            steps.append(("torch 2:4", lambda: semi_structured_rows(
                (nm := packer("nm", w, group_size)).dense(nm.tensors, torch.float64), xs, timing, l2)))
        if "int4" in formats:
            steps.append(("torch int4", lambda: tinygemm_rows(packer("int4", w, group_size), xs, timing, l2)))
        for name, step in steps:
            if deadline is not None and time.monotonic() > deadline:
                log(f"benchmark: deadline passed, stopping before {n}x{k} {name}")
                rows.append({"kernel": DEADLINE, "format": name, "N": n, "K": k, "batch": None, "ms": None,
                             "error": f"not run: the deadline passed before {n}x{k} {name} and what follows"})
                on_step(rows)
                return rows
            start = time.monotonic()
            try:
                rows += step()
            except Exception as err:  # noqa: BLE001 - e.g. out of memory packing: record it, go on
                rows.append({"kernel": name, "format": name, "N": n, "K": k, "batch": None, "ms": None,
                             "error": describe(err)})
            log(f"benchmark: {n}x{k} {name} in {time.monotonic() - start:.1f} s")
            on_step(rows)
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- CPU rows

def cpu_row(loc: dict, kernel: str, fmt: str, call: Callable[[], torch.Tensor], want: torch.Tensor, size: int,
            reps: int) -> dict:
    ms = cpu_median_ms(call, 1, reps)
    err = rel_err(call(), want)
    return {"kernel": kernel, "format": fmt, **loc, "bytes": size, "ms": ms, "GBps": size / (ms * 1e6),
            "err": err, "wrong": is_wrong(err, loc["dtype"])}


def cpu_rows(shapes: Iterable[tuple[int, int]], batches: Iterable[int], formats: Iterable[str], group_size: int,
             packer: Packer, reps: int) -> list[dict]:
    """The CPU path (no CUDA): float32 x through the packed model's fallback, against the dense weight."""
    rows = []
    for n, k in shapes:
        w = random_weight(n, k, "cpu")
        w32 = w.float()
        xs = [torch.randn(b, k) for b in batches]
        rows += [cpu_row(where(n, k, x), "dense-torch", DENSE, partial(F.linear, x, w32), x.double() @ w32.double().T,
                         nbytes(w32), reps) for x in xs]
        for fmt in formats:
            weight = packer(fmt, w, group_size)
            w_hat = weight.dense(weight.tensors, torch.float64)
            rows += [cpu_row(where(n, k, x), f"torch-dequant-{fmt}", fmt, partial(dispatch.reference, x, weight),
                             x.double() @ w_hat.T, weight.nbytes, reps) for x in xs]
    return rows


def add_speedups(rows: list[dict]) -> list[dict]:
    """Each row with dense_ms (the dense row of its N, K, batch) and speedup = dense_ms / ms."""
    dense = {(r["N"], r["K"], r["batch"]): r["ms"] for r in rows if r["format"] == DENSE}
    out = []
    for row in rows:
        dense_ms = dense.get((row["N"], row["K"], row["batch"]))
        speedup = dense_ms / row["ms"] if dense_ms and row.get("ms") else None
        out.append({**row, "dense_ms": dense_ms, "speedup": speedup})
    return out
