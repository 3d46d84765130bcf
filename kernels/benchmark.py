"""Op-level benchmark: the packed-weight kernels against torch's own paths, as rows of plain dicts.

    rows = op_rows([(4096, 4096)], batches=[1, 16], formats=["int4", "nm"], group_size=128,
                   timing=Timing(warmup=10, reps=50, max_ms=200))          # CUDA
    rows = cpu_rows([(576, 576)], batches=[1, 16], formats=["int4"], group_size=128, reps=3)
    rows = add_speedups(rows)

y = x (B, K) @ Ŵᵀ with Ŵ (N, K) random and x fp16 (bf16 for torch's int4 kernel, which takes only
bf16). One row per path, weight shape (N, K) and batch B:
    dense-cublas          F.linear on the dense fp16 weight: the baseline (dense_ms of every row)
    triton-<format>       our kernel (kernels/<format>.py), autotuned before it is timed
    torch-dequant-<fmt>   the format's torch dequantize, then F.linear: PackedLinear's fallback
    torch-2:4-semi        to_sparse_semi_structured (cuSPARSELt, default algorithm) through F.linear
    torch-2:4-cslt        torch._cslt_sparse_mm with the algorithm torch._cslt_sparse_mm_search picks
                          (x padded to 8 rows outside the timed call, as a serving engine's buffer is)
    torch-int4-tinygemm   torch._weight_int4pack_mm, the fastest of inner_k_tiles 2, 4 and 8
The formats: int4 and int8 in groups of group_size, nm (2:4), nm-int4 (2:4 + int4 groups) and
bitmask (50% random zeros). The torch 2:4 peers multiply the `nm` weight, tinygemm the int4 codes.

A row: kernel, format, N, K, batch, dtype, ms, bytes (the stored weight a call must read),
GBps = bytes / ms, err = max |y − x·Ŵᵀ| / max |x·Ŵᵀ| against Ŵ in float64, note (the setting a
peer ran with); add_speedups adds dense_ms and speedup = dense_ms / ms. A path that refuses or
fails gets `error` and ms None. Timing is kernels/timing.py's: the median GPU time of a call, each
call on its own copy of the weights, the copies together > 2× L2, so weights stream from HBM.
Without CUDA, cpu_rows times the CPU reference path instead: float32 x, the fp16-stored format
dequantized to float32, then F.linear, against F.linear on the float32 dense weight.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
from torch.nn import functional as F

from kernels import FORMATS, launcher
from kernels.testing import Packed, pack_bitmask, pack_nm, pack_nm_quant, pack_quant, quantize
from kernels.timing import cpu_median_ms, cuda_median_ms, l2_bytes, rotation_count

DENSE = "dense"
DEADLINE = "stopped-at-deadline"
NEEDS_K = {"int4", "nm-int4", "bitmask"}  # their dequantize() takes K (the packed sizes round it up)
TINYGEMM_TILES = (2, 4, 8)


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


def half_zero(w: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """w with a seeded random half of its entries set to 0."""
    gen = torch.Generator(device=w.device).manual_seed(seed)
    return torch.where(torch.rand(w.shape, generator=gen, device=w.device) < 0.5, 0.0, w)


PACKERS: dict[str, Callable[[torch.Tensor, int], Packed]] = {
    "int4": lambda w, g: pack_quant(w, 4, g),
    "int8": lambda w, g: pack_quant(w, 8, g),
    "nm": lambda w, g: pack_nm(w, 2, 4),
    "nm-int4": lambda w, g: pack_nm_quant(w, 2, 4, 4, g),
    "bitmask": lambda w, g: pack_bitmask(half_zero(w)),
}


def dequantizer(fmt: str, packed: Packed, k: int) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """tensors → Ŵ (N, K) float32 by the format's torch reference (kernels/<format>.dequantize)."""
    module = importlib.import_module(f"kernels.{FORMATS[fmt]}")
    kwargs = {**packed.params, **({"k": k} if fmt in NEEDS_K else {})}
    return lambda tensors: module.dequantize(**tensors, **kwargs)


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


def measure(loc: dict, kernel: str, fmt: str, run: Callable[[object], torch.Tensor], weights: list,
            want: torch.Tensor, size: int, timing: Timing, **extra) -> dict:
    """One row at `loc` (where()): run(weights[0]) checked against `want`, then timed rotating
    over `weights`."""
    row = {"kernel": kernel, "format": fmt, **loc, "bytes": size, **extra}
    try:
        row["err"] = rel_err(run(weights[0]), want)
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


def format_rows(fmt: str, w: torch.Tensor, xs: list[torch.Tensor], group_size: int, timing: Timing,
                l2: int) -> list[dict]:
    """Our kernel and the torch dequantize path for one format."""
    n, k = w.shape
    packed = PACKERS[fmt](w, group_size)
    size = packed.nbytes
    weights = rotation(packed.tensors, lambda: {name: t.clone() for name, t in packed.tensors.items()}, size, l2)
    kernel, dequantize = launcher(fmt), dequantizer(fmt, packed, k)
    rows = []
    for x in xs:
        want = x.double() @ packed.w_hat.T
        rows.append(measure(where(n, k, x), f"triton-{fmt}", fmt, lambda t, x=x: kernel(x, **t, **packed.params),
                            weights, want, size, timing))
        rows.append(measure(where(n, k, x), f"torch-dequant-{fmt}", fmt,
                            lambda t, x=x: F.linear(x, dequantize(t).to(x.dtype)), weights, want, size, timing))
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


def tinygemm_weight(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int, tiles: int):
    """Our asymmetric int4 codes in torch's tinygemm layout: (packed, scales_and_zeros, Ŵ float64).

    tinygemm computes Ŵ = (q − 8)·s + z' per group; ours is (q − z)·s, so z' = (8 − z)·s.
    Bytes: uint8 (N, K/2), even column in the high nibble, then _convert_weight_to_int4pack.
    """
    packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous(), tiles)
    s = scales.to(torch.bfloat16)
    z = ((8 - zeros.double()) * scales.double()).to(torch.bfloat16)
    scales_and_zeros = torch.stack([s, z], dim=-1).transpose(0, 1).contiguous()  # (G, N, 2)
    w_hat = (q.double() - 8) * s.double().repeat_interleave(group, 1) + z.double().repeat_interleave(group, 1)
    return packed, scales_and_zeros, w_hat


def tinygemm_rows(w: torch.Tensor, xs: list[torch.Tensor], group_size: int, timing: Timing, l2: int) -> list[dict]:
    """torch._weight_int4pack_mm at its best inner_k_tiles, per batch."""
    n, k = w.shape
    q, scales, zeros, _ = quantize(w, 4, group_size)
    best: dict[int, dict] = {}
    for tiles in TINYGEMM_TILES:
        try:
            packed, sz, w_hat = tinygemm_weight(q, scales, zeros, k if group_size == -1 else group_size, tiles)
        except Exception as err:  # noqa: BLE001
            for x in xs:
                best.setdefault(x.shape[0], {"kernel": "torch-int4-tinygemm", "format": "int4",
                                             **where(n, k, x.bfloat16()), "ms": None, "error": describe(err)})
            continue
        size = nbytes(packed, sz)
        weights = rotation((packed, sz), lambda: (packed.clone(), sz.clone()), size, l2)
        for x in xs:
            xb = x.bfloat16()
            run = lambda t, xb=xb: torch._weight_int4pack_mm(xb, t[0], group_size, t[1])  # noqa: E731
            row = measure(where(n, k, xb), "torch-int4-tinygemm", "int4", run, weights, xb.double() @ w_hat.T,
                          size, timing, note=f"inner_k_tiles={tiles}")
            old = best.get(x.shape[0])
            if old is None or old["ms"] is None or (row["ms"] is not None and row["ms"] < old["ms"]):
                best[x.shape[0]] = row
    return list(best.values())


def op_rows(shapes: Iterable[tuple[int, int]], batches: Iterable[int], formats: Iterable[str], group_size: int,
            timing: Timing, deadline: float | None = None, log: Callable[[str], None] = print,
            device: str = "cuda") -> list[dict]:
    """Every path for every shape and batch on the current CUDA device. With a deadline
    (time.monotonic()), no new shape or format starts after it; a last row (kernel DEADLINE) says
    where it stopped."""
    l2 = l2_bytes(device) if device == "cuda" else 0  # elsewhere (tests, interpreter): 2 copies
    rows = []
    for n, k in shapes:
        w = random_weight(n, k, device)
        xs = [torch.randn(b, k, device=device, dtype=torch.float16) for b in batches]
        steps = [("dense", lambda: dense_rows(w, xs, timing, l2))]
        for fmt in formats:
            steps.append((fmt, lambda fmt=fmt: format_rows(fmt, w, xs, group_size, timing, l2)))
        if "nm" in formats:
            steps.append(("torch 2:4", lambda: semi_structured_rows(pack_nm(w, 2, 4).w_hat, xs, timing, l2)))
        if "int4" in formats:
            steps.append(("torch int4", lambda: tinygemm_rows(w, xs, group_size, timing, l2)))
        for name, step in steps:
            if deadline is not None and time.monotonic() > deadline:
                log(f"benchmark: deadline passed, stopping before {n}x{k} {name}")
                return rows + [{"kernel": DEADLINE, "format": name, "N": n, "K": k, "batch": None, "ms": None,
                                "error": f"not run: the deadline passed before {n}x{k} {name} and what follows"}]
            start = time.monotonic()
            try:
                rows += step()
            except Exception as err:  # noqa: BLE001 - e.g. out of memory packing: record it, go on
                rows.append({"kernel": name, "format": name, "N": n, "K": k, "batch": None, "ms": None,
                             "error": describe(err)})
            log(f"benchmark: {n}x{k} {name} in {time.monotonic() - start:.1f} s")
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- CPU rows

def cpu_row(loc: dict, kernel: str, fmt: str, call: Callable[[], torch.Tensor], want: torch.Tensor, size: int,
            reps: int) -> dict:
    ms = cpu_median_ms(call, 1, reps)
    return {"kernel": kernel, "format": fmt, **loc, "bytes": size, "ms": ms, "GBps": size / (ms * 1e6),
            "err": rel_err(call(), want)}


def cpu_rows(shapes: Iterable[tuple[int, int]], batches: Iterable[int], formats: Iterable[str], group_size: int,
             reps: int) -> list[dict]:
    """The CPU reference path (no CUDA): float32 x, the format dequantized to float32, F.linear."""
    rows = []
    for n, k in shapes:
        w = random_weight(n, k, "cpu")
        w32 = w.float()
        xs = [torch.randn(b, k) for b in batches]
        rows += [cpu_row(where(n, k, x), "dense-torch", DENSE, partial(F.linear, x, w32), x.double() @ w32.double().T,
                         nbytes(w32), reps) for x in xs]
        for fmt in formats:
            packed = PACKERS[fmt](w, group_size)
            dequantize = dequantizer(fmt, packed, k)
            rows += [cpu_row(where(n, k, x), f"torch-dequant-{fmt}", fmt,
                             lambda x=x: F.linear(x, dequantize(packed.tensors)), x.double() @ packed.w_hat.T,
                             packed.nbytes, reps) for x in xs]
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
