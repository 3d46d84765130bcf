"""Plain torch packers for the version-2 layouts of docs/formats.md, for tests and benches.

An executable spec, deliberately short and slow-but-obvious. Each packer takes a dense weight
W (N, K) and returns the stored tensors (named as in the safetensors files), the launcher's
keyword parameters, and Ŵ: the weight the tensors dequantize to, computed *before* any bit
packing, so a bit-order mistake in a kernel cannot hide behind the same mistake here.
Not the production packer (that is tasks/formats/packing.py); this module must not import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Packed:
    format: str
    tensors: dict[str, torch.Tensor]  # safetensors name → tensor
    params: dict[str, int] = field(default_factory=dict)  # launcher keywords: group_size, n, m
    w_hat: torch.Tensor | None = None  # (N, K) float64

    def to(self, device) -> "Packed":
        return Packed(self.format, {k: v.to(device) for k, v in self.tensors.items()}, dict(self.params),
                      self.w_hat.to(device))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(R, C) ints in [0, 2^bits) → uint8 (R, ceil(C·bits/8)), little-endian: code c occupies bits
    [(c·bits) mod 8, …) of byte (c·bits) // 8; a missing last code is 0."""
    per = 8 // bits
    rows, cols = codes.shape
    padded = torch.zeros(rows, -(-cols // per) * per, dtype=torch.int32, device=codes.device)
    padded[:, :cols] = codes.to(torch.int32)
    shifts = torch.arange(per, device=codes.device, dtype=torch.int32) * bits
    return (padded.view(rows, -1, per) << shifts).sum(-1).to(torch.uint8)


def quantize(w: torch.Tensor, bits: int, group_size: int):
    """Asymmetric min/max quantization per group of g consecutive inputs (g = -1: g = K).
    Returns codes q (N, K) int64, scales fp16 (N, G), zeros uint8 (N, G), Ŵ (N, K) float64.
    A pruned weight (exactly 0.0) is stored as q = zero, so it dequantizes to exactly 0."""
    n, k = w.shape
    g = k if group_size == -1 else group_size
    groups = -(-k // g)
    qmax = 2**bits - 1
    padded = torch.nn.functional.pad(w.double(), (0, groups * g - k)).view(n, groups, g)
    lo = padded.amin(-1).clamp(max=0.0)
    hi = padded.amax(-1).clamp(min=0.0)
    scales = ((hi - lo) / qmax).clamp(min=1e-4).half()
    zeros = torch.round(-lo / scales.double()).clamp(0, qmax)
    col_group = torch.arange(k, device=w.device) // g
    s, z = scales.double()[:, col_group], zeros[:, col_group]
    q = torch.round(w.double() / s + z).clamp(0, qmax)
    q = torch.where(w == 0, z, q).long()
    return q, scales, zeros.to(torch.uint8), (q - z) * s


def pack_quant(w: torch.Tensor, bits: int, group_size: int) -> Packed:
    """`int8` / `int4`: qweight (N, ceil(K·bits/8)), scales fp16 (N, G), zeros uint8 (N, G)."""
    q, scales, zeros, w_hat = quantize(w, bits, group_size)
    return Packed(f"int{bits}", {"qweight": pack_bits(q, bits), "scales": scales, "zeros": zeros},
                  {"group_size": group_size}, w_hat)


def nm_keep(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |w| of every m consecutive inputs (ties: lower column). Bool (N, K)."""
    rows, k = w.shape
    if k % m:
        raise ValueError(f"K={k} is not a multiple of m={m}")
    order = torch.argsort(-w.abs().double().view(rows, k // m, m), dim=-1, stable=True)
    keep = torch.zeros(rows, k // m, m, dtype=torch.bool, device=w.device)
    keep.scatter_(-1, order[..., :n], True)
    return keep.view(rows, k)


def _nm_indices(keep: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (N, Kc) of kept values inside their group, increasing, and their packed form."""
    rows, k = keep.shape
    index_bits = {4: 2, 8: 4}[m]
    position = torch.arange(m, device=keep.device).repeat(rows, k // m)
    pos = position[keep].view(rows, -1)  # boolean indexing walks row-major: group by group, in order
    return pos, pack_bits(pos, index_bits)


def pack_nm(w: torch.Tensor, n: int, m: int) -> Packed:
    """`nm`: values (N, Kc) in w's dtype, indices uint8 (N, ceil(Kc·b_i/8)), Kc = K·n/m."""
    keep = nm_keep(w, n, m)
    _, indices = _nm_indices(keep, m)
    values = w[keep].view(w.shape[0], -1)
    return Packed("nm", {"values": values, "indices": indices}, {"n": n, "m": m},
                  torch.where(keep, w.double(), 0.0))


def pack_nm_quant(w: torch.Tensor, n: int, m: int, bits: int, group_size: int) -> Packed:
    """`nm-int4` / `nm-int8`: kept codes packed along Kc, scales/zeros per group of g *original*
    columns (N, ceil(K/g))."""
    keep = nm_keep(w, n, m)
    q, scales, zeros, w_hat = quantize(torch.where(keep, w, 0.0), bits, group_size)
    _, indices = _nm_indices(keep, m)
    codes = q[keep].view(w.shape[0], -1)
    return Packed(f"nm-int{bits}",
                  {"values": pack_bits(codes, bits), "indices": indices, "scales": scales, "zeros": zeros},
                  {"n": n, "m": m, "group_size": group_size}, torch.where(keep, w_hat, 0.0))


BITMASK_CHUNK = 512  # columns per chunk of the bitmask formats (version 2)


def chunked(keep: torch.Tensor, entries: torch.Tensor, per: int, fill) -> tuple[torch.Tensor, torch.Tensor]:
    """The bitmask stream of `entries` (N, K) where `keep`: row by row, chunk by chunk of 512
    columns, each chunk's kept entries then `fill` up to a multiple of `per` (entries per 16 bytes).
    Returns (stream 1-D, chunk_offsets int32 (N, ceil(K/512)) in units of `per` entries)."""
    rows, k = keep.shape
    parts, offsets, at = [], [], 0
    for n in range(rows):
        for j in range(0, k, BITMASK_CHUNK):
            kept = entries[n, j:j + BITMASK_CHUNK][keep[n, j:j + BITMASK_CHUNK]]
            pad = -kept.numel() % per
            parts += [kept, torch.full((pad,), fill, dtype=entries.dtype, device=entries.device)]
            offsets.append(at)
            at += (kept.numel() + pad) // per
    stream = torch.cat(parts) if parts else entries.new_zeros(0)
    return stream, torch.tensor(offsets, dtype=torch.int32, device=keep.device).view(rows, -(-k // BITMASK_CHUNK))


def pack_bitmask(w: torch.Tensor, fill: float = 0.0) -> Packed:
    """`bitmask`: keeps w != 0. mask uint8 (N, ceil(K/8)), values: kept values chunk by chunk,
    each chunk padded with `fill` to 16 bytes (8 values), chunk_offsets int32 (N, ceil(K/512))."""
    keep = w != 0
    values, offsets = chunked(keep, w, 8, fill)
    return Packed("bitmask", {"mask": pack_bits(keep, 1), "values": values, "chunk_offsets": offsets},
                  {}, w.double())
