"""Pick the fastest correct path for y = x·Ŵᵀ (+ b) of a packed weight, by measurement, once per key.

    y = dispatch.linear(x, PackedWeight(...), bias)      # x (..., K), Ŵ (N, K) = the dequantized weight

Candidates (name → path), every one offered at every batch where it applies:
    torch       dequantize Ŵ with torch ops, then F.linear (cuBLAS on CUDA). The reference: always
                available, and on a CPU tensor the only path, taken at once (no key, no timing, no
                file), so CPU numbers are exactly the reference's.
    triton      the format's Triton kernel (kernels.launcher), on CUDA only and for fp16/bf16 x:
                TRITON_INTERPRET is for the tests, never for inference.
    dequant     every format with a kernel: one fused Triton pass writes Ŵ in x's dtype
                (kernels/dequant.py), then cuBLAS; what large batches want, where the matmul, not
                the bytes, bounds time.
    tinygemm    `int4` with groups of 32–256: torch._weight_int4pack_mm (bf16; x is cast) on our
                codes repacked once into its tile layout, with z' = (8 − z)·s.
    cusparselt  2:4 `nm` with values of x's dtype: torch._cslt_sparse_mm on a cuSPARSELt-compressed
                Ŵ with the algorithm id torch._cslt_sparse_mm_search picks per batch bucket.
The tinygemm and cuSPARSELt copies are built once, on first use, and kept in PackedWeight.derived
*beside* the packed tensors (about the same bytes again): a model that keeps them holds its
weights twice. Not a candidate: a dense Ŵ cached between calls. It would win every race and defeat
the point of packing, which is the bytes; the torch and dequant paths decode on every call and are
timed that way.

Key (one decision each): format and its launcher parameters, (N, K), the batch bucket (powers of
two up to 2048, as the kernels' autotuner), x's dtype, the GPU's name, torch and triton versions,
and a digest of kernels/*.py (a decision timed against other kernel code is measured again).
On the first call with a new key every candidate runs on a seeded random x (B, K) and is checked
against the torch path: max |y − y_ref| ≤ TOLERANCE[dtype] · max |y_ref|. A candidate that fails
or is off is logged and never chosen; the correct ones are timed (kernels/timing.py: CUDA events,
medians, weight copies rotated past L2) and the fastest is recorded. Decisions persist as JSON at
$PRUNEPIPE_DISPATCH_CACHE (default ~/.cache/prunepipe/dispatch.json), written atomically
(temporary file in the same folder, then a rename), merged with what other processes wrote.
A new key met while a CUDA graph is being captured takes the torch path unrecorded (nothing can be
timed inside a capture): warm a model up eagerly before capturing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache, partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch.nn import functional as F

from kernels import FORMATS as KERNEL_FORMATS
from kernels import launcher
from kernels._common import has_slack, with_slack
from kernels.timing import cuda_median_ms, l2_bytes, rotation_count

LOG = logging.getLogger("prunepipe.dispatch")
CACHE_ENV = "PRUNEPIPE_DISPATCH_CACHE"
DEFAULT_CACHE = "~/.cache/prunepipe/dispatch.json"
CACHE_VERSION = 1
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 4e-2, torch.float32: 1e-4}
TINYGEMM_GROUPS = (32, 64, 128, 256)
WARMUP, REPS = 5, 20
REFERENCE = "torch"

Candidate = Callable[[torch.Tensor], torch.Tensor]  # x (B, K) → y (B, N), no bias
Timer = Callable[[str, list[Callable[[], object]]], float]  # (candidate, rotating calls) → ms


@dataclass(frozen=True)
class PackedWeight:
    """A packed (N, K) weight as the dispatcher sees it (tasks/serving/packed_model.PackedLinear makes one)."""

    format: str  # as in metadata.json
    shape: tuple[int, int]  # (N, K)
    tensors: dict[str, torch.Tensor]  # safetensors name → tensor: the launcher's inputs
    params: dict[str, int]  # launcher keywords: group_size, n, m (kernels/__init__.py)
    dense: Callable[[dict[str, torch.Tensor], torch.dtype], torch.Tensor]  # (tensors, dtype) → Ŵ (N, K)
    derived: dict = field(default_factory=dict)  # what a candidate builds once (the cuSPARSELt copy)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def copy(self) -> "PackedWeight":
        """The same weight in fresh memory (for timing past L2), with a stream's slack if it had it."""
        return replace(self, tensors={name: with_slack(t, copy=True) if t.dim() == 1 and has_slack(t) else t.clone()
                                      for name, t in self.tensors.items()}, derived={})


def reference(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantize, then F.linear: what PackedLinear always did."""
    return F.linear(x, weight.dense(weight.tensors, x.dtype), bias)


def _cusparselt(weight: PackedWeight, x: torch.Tensor) -> torch.Tensor:
    """cuSPARSELt 2:4 matmul, x (B, K) padded to 8 rows as torch's semi-structured path does."""
    state = weight.derived.setdefault(("cusparselt", x.dtype, x.device), {"algorithms": {}})
    if "compressed" not in state:
        state["compressed"] = torch._cslt_compress(weight.dense(weight.tensors, x.dtype).contiguous())
    batch = x.shape[0]
    padded = F.pad(x, (0, 0, 0, -batch % 8)).t()  # (K, B8)
    algorithm = state["algorithms"].get(batch_bucket(batch))  # searched once per bucket, like the decision
    if algorithm is None:
        algorithm = state["algorithms"][batch_bucket(batch)] = torch._cslt_sparse_mm_search(
            state["compressed"], padded, transpose_result=True)
    return torch._cslt_sparse_mm(state["compressed"], padded, transpose_result=True, alg_id=algorithm)[:batch]


def tinygemm_inputs(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Our `int4` tensors as torch's tinygemm wants them before _convert_weight_to_int4pack.

    Codes: uint8 (N, K/2) with the *even* column in the high nibble (ours is in the low one).
    tinygemm computes Ŵ = (q − 8)·s + z' per group; ours is (q − z)·s, so z' = (8 − z)·s, and
    scales_and_zeros is (G, N, 2) bf16 = [s, z'].
    """
    swapped = (qweight << 4) | (qweight >> 4)
    s = scales.to(torch.bfloat16)
    z = ((8 - zeros.double()) * scales.double()).to(torch.bfloat16)
    return swapped.contiguous(), torch.stack([s, z], dim=-1).transpose(0, 1).contiguous()


def tinygemm_tiles(k: int) -> int | None:
    """tinygemm's inner_k_tiles for K: the largest of 8, 4, 2 with K a multiple of 16× it."""
    return next((tiles for tiles in (8, 4, 2) if k % (16 * tiles) == 0), None)


def _tinygemm(weight: PackedWeight, x: torch.Tensor) -> torch.Tensor:
    state = weight.derived.setdefault(("tinygemm", x.device), {})
    if "packed" not in state:
        t = weight.tensors
        codes, state["scales_and_zeros"] = tinygemm_inputs(t["qweight"], t["scales"], t["zeros"],
                                                           weight.params["group_size"])
        state["packed"] = torch._convert_weight_to_int4pack(codes, tinygemm_tiles(weight.shape[1]))
    y = torch._weight_int4pack_mm(x.to(torch.bfloat16), state["packed"], weight.params["group_size"],
                                  state["scales_and_zeros"])
    return y.to(x.dtype)


def _dequant_cublas(weight: PackedWeight, x: torch.Tensor) -> torch.Tensor:
    from kernels import dequant

    w = dequant.dequantize_packed(weight.format, weight.tensors, weight.params, k=weight.shape[1], dtype=x.dtype)
    return F.linear(x, w)


def candidates(weight: PackedWeight, x: torch.Tensor) -> dict[str, Candidate]:
    """The paths worth trying for this weight and x (B, K) on a CUDA device; torch first."""
    paths: dict[str, Candidate] = {REFERENCE: partial(reference, weight=weight)}
    if x.dtype not in (torch.float16, torch.bfloat16):
        return paths
    fmt, params, (_, k) = weight.format, weight.params, weight.shape
    if fmt in KERNEL_FORMATS:
        kernel = launcher(fmt)
        paths["triton"] = lambda x: kernel(x, **weight.tensors, **params)
        paths["dequant"] = partial(_dequant_cublas, weight)
    if fmt == "int4" and params.get("group_size") in TINYGEMM_GROUPS and tinygemm_tiles(k):
        paths["tinygemm"] = partial(_tinygemm, weight)
    if fmt == "nm" and (params.get("n"), params.get("m")) == (2, 4) and weight.tensors["values"].dtype == x.dtype:
        paths["cusparselt"] = partial(_cusparselt, weight)
    return paths


def batch_bucket(batch: int) -> int:
    from kernels._common import batch_bucket as bucket  # imports Triton: CUDA paths only

    return bucket(batch)


@cache
def library_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "none"


@cache
def kernels_digest(folder: Path = Path(__file__).parent) -> str:
    """12 hex digits of SHA-256 over the kernel sources (*.py in `folder`, by name)."""
    digest = hashlib.sha256()
    for source in sorted(folder.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


def dispatch_key(weight: PackedWeight, batch: int, dtype: torch.dtype, device_name: str) -> str:
    """One line naming everything a decision depends on."""
    params = ",".join(f"{k}={v}" for k, v in sorted(weight.params.items()))
    n, k = weight.shape
    return (f"{weight.format}[{params}] {n}x{k} bucket {batch_bucket(batch)} {str(dtype).removeprefix('torch.')}"
            f" | {device_name} | torch {torch.__version__} | triton {library_version('triton')}"
            f" | kernels {kernels_digest()}")


def read_cache(path: Path) -> dict[str, dict]:
    """The decisions stored at `path` ({} when the file is missing, unreadable or of another version)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        LOG.warning("dispatch cache %s unreadable (%s): starting afresh", path, err)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        LOG.warning("dispatch cache %s is not version %d: starting afresh", path, CACHE_VERSION)
        return {}
    return data["entries"]


def write_cache(path: Path, entries: dict[str, dict]) -> None:
    """Atomically: a temporary file in the same folder, then a rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def max_error(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(max |got − want|, max |want|) in float32."""
    return (got.float() - want.float()).abs().max().item(), want.float().abs().max().item()


def _cuda_timer(name: str, calls: list[Callable[[], object]]) -> float:
    # every copy once first: a candidate's first call on a copy may build state (cuSPARSELt's)
    return cuda_median_ms(calls, warmup=max(WARMUP, len(calls)), reps=REPS)


class Dispatcher:
    """Decisions for one cache file. `timer` and `candidates` are replaceable (tests)."""

    def __init__(self, path: Path, timer: Timer = _cuda_timer,
                 candidates: Callable[[PackedWeight, torch.Tensor], dict[str, Candidate]] = candidates):
        self.path = Path(path)
        self.timer = timer
        self.candidates = candidates
        self._entries: dict[str, dict] | None = None  # read from the file on first CUDA use

    @property
    def entries(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = read_cache(self.path)
        return self._entries

    def linear(self, x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.device.type != "cuda":
            return reference(x, weight, bias)
        flat = x.reshape(-1, weight.shape[1])
        key = dispatch_key(weight, flat.shape[0], x.dtype, torch.cuda.get_device_name(x.device))
        paths = self.candidates(weight, flat)
        choice = self.entries.get(key, {}).get("path")
        if choice not in paths:
            if torch.cuda.is_current_stream_capturing():
                return reference(x, weight, bias)
            choice = self.decide(key, weight, flat)["path"]
        y = paths[choice](flat).reshape(*x.shape[:-1], weight.shape[0])
        return y if bias is None else y + bias

    def decide(self, key: str, weight: PackedWeight, x: torch.Tensor) -> dict:
        """Check every candidate on a seeded random x like `x`, time the correct ones, record the fastest."""
        generator = torch.Generator(device=x.device).manual_seed(0)
        probe = torch.randn(x.shape, generator=generator, device=x.device).to(x.dtype)
        paths = self.candidates(weight, probe)
        want = paths[REFERENCE](probe)
        correct, rejected = [], {}
        for name, path in paths.items():
            try:
                err, scale = max_error(path(probe), want)
            except Exception as e:  # noqa: BLE001 - any failure disqualifies the candidate
                rejected[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            else:
                bound = TOLERANCE.get(x.dtype, TOLERANCE[torch.float32]) * scale
                if err <= bound:  # False for NaN
                    correct.append(name)
                else:
                    rejected[name] = f"max abs error {err:.3g} > {bound:.3g}"
        for name, why in rejected.items():
            LOG.warning("dispatch %s: rejected %s: %s", key, name, why)
        times = self._time(correct, weight, probe) if len(correct) > 1 else {}
        best = min(times, key=times.get) if times else REFERENCE
        entry = {"path": best, "ms": times, "rejected": rejected}
        LOG.info("dispatch %s: %s %s", key, best, times)
        self.entries[key] = entry
        self._save()
        return entry

    def _time(self, names: list[str], weight: PackedWeight, probe: torch.Tensor) -> dict[str, float]:
        count = rotation_count(weight.nbytes, l2_bytes(probe.device)) if probe.is_cuda else 1
        per_copy = [self.candidates(w, probe) for w in [weight] + [weight.copy() for _ in range(count - 1)]]
        return {name: self.timer(name, [partial(paths[name], probe) for paths in per_copy]) for name in names}

    def _save(self) -> None:
        try:
            write_cache(self.path, {**read_cache(self.path), **self.entries})
        except OSError as err:
            LOG.warning("dispatch cache %s not written (%s): decisions kept for this process only", self.path, err)


@cache
def default_dispatcher() -> Dispatcher:
    """The process's dispatcher, on $PRUNEPIPE_DISPATCH_CACHE (read at first use)."""
    return Dispatcher(Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser())


def linear(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x·Ŵᵀ + b by the fastest correct path for this key; on a CPU tensor, the reference."""
    if x.device.type != "cuda":
        return reference(x, weight, bias)
    return default_dispatcher().linear(x, weight, bias)
