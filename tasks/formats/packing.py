"""Packed weight formats, version 2 (docs/formats.md): one registry entry per format.

Shapes: a Linear weight is W (N, K) = (rows, cols) = (out_features, in_features); masks are
bool (N, K), True = pruned (tasks/pruning/patterns.py).

Every format is a sparse *layout* (dense, nm, bitmask) holding a *payload* (N, K): either
float values (float16/bfloat16) or quantized codes q (tasks/quantize.Quantized), for which the
format also stores `scales` float16 (N, G) and `zeros` uint8 (N, G). A layout keeps a *stream*
of the kept payload entries; int8 stores the stream as uint8, int4 two codes per byte.
Entries a layout does not keep are the *fill*: 0.0, or the group's zero code z (also 0.0).

Packing is lossless: unpack_weight returns exactly weight.to(dtype) with pruned entries 0.0,
or exactly Quantized.dequantize(dtype).

Bit packing is little-endian throughout: element i of a b-bit stream (b = 1, 2, 4, 8) lives
in byte (i·b) // 8 at bits [(i·b) mod 8, (i·b) mod 8 + b); a missing last element is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

import torch

from tasks.quantization.grid import Quantized, QuantSpec, expand_groups

FORMAT_VERSION = 2  # 2: bitmask values in 16-byte aligned chunks (version 1 artifacts: re-run the pack stage)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
DENSE_BYTES_PER_WEIGHT = 2.0   # an fp16 weight: what bytes per weight are compared against


@dataclass(frozen=True)
class LayerFormat:
    """How one layer is packed; JSON-safe through dataclasses.asdict (metadata.json)."""

    format: str
    shape: tuple[int, int]  # (N, K)
    dtype: str = "float16"  # values dtype (float formats) / dequantized dtype (int formats)
    bits: int | None = None  # quantized formats: QuantSpec
    group_size: int | None = None
    symmetric: bool | None = None
    n: int | None = None  # N:M formats: n kept of every m
    m: int | None = None

    def __post_init__(self) -> None:
        codec = codec_of(self.format)
        rows, cols = self.shape
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if codec.code_bits is not None:
            if self.bits is None or self.group_size is None or self.symmetric is None:
                raise ValueError(f"format {self.format!r} needs bits, group_size and symmetric")
            if self.bits > codec.code_bits:
                raise ValueError(f"format {self.format!r} stores at most {codec.code_bits}-bit codes, got {self.bits}")
        if codec.layout is NM:
            if self.n is None or self.m is None or not 0 < self.n < self.m:
                raise ValueError(f"format {self.format!r} needs 0 < n < m, got n={self.n}, m={self.m}")
            if cols % self.m:
                raise ValueError(f"{self.n}:{self.m} needs the input width ({cols}) to be a multiple of {self.m}")
            index_bits(self.m)

    @classmethod
    def from_dict(cls, data: dict) -> LayerFormat:
        """Inverse of dataclasses.asdict; keys that are not fields are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        return cls(**{**kwargs, "shape": tuple(kwargs["shape"])})

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size, self.symmetric)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# ---------------------------------------------------------------- bit packing


def pack_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 values < 2^bits (..., L) → bytes (..., ceil(L·bits/8)), little-endian, bits | 8."""
    per_byte = 8 // bits
    x = torch.nn.functional.pad(x.to(torch.uint8), (0, -x.shape[-1] % per_byte))
    x = x.reshape(*x.shape[:-1], -1, per_byte)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=x.device)
    return (x << shifts).sum(-1, dtype=torch.uint8)  # disjoint bit fields, so sum == or


def unpack_bits(b: torch.Tensor, bits: int, length: int | None = None) -> torch.Tensor:
    """Inverse of pack_bits: bytes (..., B) → uint8 (..., length), default all B·8/bits values."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=b.device)
    x = ((b.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(*b.shape[:-1], -1)
    return x if length is None else x[..., :length]


def index_bits(m: int) -> int:
    """Bits per N:M position index: the smallest of 1, 2, 4, 8 holding 0 … m−1 (2:4 → 2, 4:8 → 4)."""
    for bits in (1, 2, 4, 8):
        if m <= 1 << bits:
            return bits
    raise ValueError(f"N:M groups wider than 256 are not supported, got m={m}")


# ---------------------------------------------------------------- layouts
# pack:   (payload (N, K), kept (N, K) bool, layer) → (stream, structure tensors)
# unpack: (stream, structure tensors, layer, fill (N, K)) → payload (N, K)
# The decoded int4 stream may carry one padding element; unpack ignores it.


@dataclass(frozen=True)
class Layout:
    pack: Callable[[torch.Tensor, torch.Tensor, LayerFormat], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    unpack: Callable[[torch.Tensor, dict[str, torch.Tensor], LayerFormat, torch.Tensor], torch.Tensor]
    structure: tuple[str, ...]  # names of the tensors besides the stream


def _dense_pack(payload, kept, layer):
    return payload, {}


def _dense_unpack(stream, tensors, layer, fill):
    return stream[:, : layer.shape[1]]


def _nm_pack(payload, kept, layer):
    rows, cols = layer.shape
    n, m = layer.n, layer.m
    groups = kept.reshape(rows, cols // m, m)
    count = groups.sum(-1)
    over = (count > n).nonzero()
    if len(over):
        r, g = over[0].tolist()
        raise ValueError(
            f"weight is not {n}:{m} sparse: row {r}, group {g} (cols {g * m}..{g * m + m - 1}) "
            f"keeps {int(count[r, g])} of {m} weights, at most {n} allowed"
        )
    # kept positions first, then (when a kept weight is 0, so fewer are marked) unkept ones,
    # each in column order; the n chosen are stored in increasing order
    order = torch.argsort((~groups).to(torch.uint8), dim=-1, stable=True)[..., :n]
    pos = order.sort(-1).values
    stream = payload.reshape(rows, cols // m, m).gather(-1, pos).reshape(rows, -1)
    return stream, {"indices": pack_bits(pos.reshape(rows, -1), index_bits(layer.m))}


def _nm_unpack(stream, tensors, layer, fill):
    rows, cols = layer.shape
    n, m = layer.n, layer.m
    kc = cols * n // m
    pos = unpack_bits(tensors["indices"], index_bits(m), kc).long().reshape(rows, cols // m, n)
    out = fill.reshape(rows, cols // m, m).clone()
    out.scatter_(-1, pos, stream[:, :kc].reshape(rows, cols // m, n))
    return out.reshape(rows, cols)


# bitmask (version 2): each row is cut into chunks of BITMASK_CHUNK columns; a chunk's kept entries
# start on a 16-byte boundary of the stream (zero padding after the previous chunk), at
# chunk_offsets[n, j] 16-byte units. A kernel starts any chunk, and loads its entries 16 bytes at a
# time, without counting the mask before it.
BITMASK_CHUNK = 512


def chunk_units(layer: LayerFormat) -> int:
    """Stream entries per 16 bytes: 8 fp16/bf16 values, 16 int8 codes, 32 int4 codes."""
    bits = codec_of(layer.format).code_bits
    return 128 // (bits or 16)


def chunk_layout(kept: torch.Tensor, layer: LayerFormat) -> tuple[torch.Tensor, torch.Tensor, int]:
    """chunk_offsets int32 (N, J) in 16-byte units (J = ceil(K / BITMASK_CHUNK), chunks row-major),
    every entry's stream position (N, K) int64 (meaningful where kept), and the stream's length."""
    rows, cols = kept.shape
    per = chunk_units(layer)
    chunks = -(-cols // BITMASK_CHUNK)
    padded = torch.nn.functional.pad(kept.to(torch.int64), (0, chunks * BITMASK_CHUNK - cols))
    padded = padded.reshape(rows, chunks, BITMASK_CHUNK)
    units = ((padded.sum(-1) + per - 1) // per).reshape(-1)  # 16-byte units per chunk
    offsets = (units.cumsum(0) - units).reshape(rows, chunks)
    rank = padded.cumsum(-1) - padded  # kept entries before each column, inside its chunk
    position = (offsets[:, :, None] * per + rank).reshape(rows, -1)[:, :cols]
    return offsets.to(torch.int32), position, int(units.sum()) * per


def _bitmask_pack(payload, kept, layer):
    offsets, position, length = chunk_layout(kept, layer)
    stream = torch.zeros(length, dtype=payload.dtype, device=payload.device)  # zero padding
    stream[position[kept]] = payload[kept]
    return stream, {"mask": pack_bits(kept, 1), "chunk_offsets": offsets}


def _bitmask_unpack(stream, tensors, layer, fill):
    kept = unpack_bits(tensors["mask"], 1, layer.shape[1]).bool()
    offsets, position, length = chunk_layout(kept, layer)
    got = tensors["chunk_offsets"]
    if got.shape != offsets.shape or not torch.equal(got.to(offsets), offsets) or stream.numel() < length:
        raise ValueError(f"bitmask chunk_offsets {tuple(got.shape)} / values ({stream.numel()} entries) do not "
                         f"match the mask: {tuple(offsets.shape)} chunks of {BITMASK_CHUNK} columns, {length} entries")
    out = fill.clone()
    out[kept] = stream[position[kept]]
    return out


DENSE = Layout(_dense_pack, _dense_unpack, ())
NM = Layout(_nm_pack, _nm_unpack, ("indices",))
BITMASK = Layout(_bitmask_pack, _bitmask_unpack, ("mask", "chunk_offsets"))


# ---------------------------------------------------------------- formats


@dataclass(frozen=True)
class Codec:
    layout: Layout
    code_bits: int | None  # None: float values; 8: one code per byte; 4: two codes per byte
    stream: str  # name of the tensor holding the kept values/codes
    doc: str  # memory layout and bytes per weight (B/w)


FORMATS: dict[str, Codec] = {
    "dense": Codec(DENSE, None, "weight", """
        weight  fp16|bf16 (N, K)          row-major
        B/w = 2"""),
    "int8": Codec(DENSE, 8, "qweight", """
        qweight uint8 (N, K)              q[n, k]
        scales  fp16  (N, G)              G = ceil(K / g)
        zeros   uint8 (N, G)
        B/w = 1 + 3G/K  (g=128: 1.023)"""),
    "int4": Codec(DENSE, 4, "qweight", """
        qweight uint8 (N, ceil(K/2))      byte j = q[n, 2j] | q[n, 2j+1] << 4
        scales  fp16  (N, G)
        zeros   uint8 (N, G)
        B/w = 0.5 + 3G/K  (g=128: 0.523)"""),
    "nm": Codec(NM, None, "values", """
        values  fp16|bf16 (N, Kc)         Kc = K·n/m, kept values group by group
        indices uint8 (N, ceil(Kc·b_i/8)) position in its m-group, b_i bits each (2:4 → 2)
        B/w = 2n/m + (n/m)·b_i/8  (2:4: 1 + 0.125 = 1.125)"""),
    "nm-int8": Codec(NM, 8, "values", """
        values  uint8 (N, Kc)             codes of the kept weights
        indices uint8 (N, ceil(Kc·b_i/8))
        scales  fp16  (N, G), zeros uint8 (N, G)   groups of g original columns
        B/w = n/m + (n/m)·b_i/8 + 3G/K  (2:4 g=128: 0.5 + 0.125 + 0.023 = 0.648)"""),
    "nm-int4": Codec(NM, 4, "values", """
        values  uint8 (N, ceil(Kc/2))     kept codes, two per byte (low nibble first)
        indices uint8 (N, ceil(Kc·b_i/8))
        scales  fp16  (N, G), zeros uint8 (N, G)
        B/w = n/(2m) + (n/m)·b_i/8 + 3G/K  (2:4 g=128: 0.25 + 0.125 + 0.023 = 0.398)"""),
    "bitmask": Codec(BITMASK, None, "values", """
        mask          uint8 (N, ceil(K/8))  bit k mod 8 of byte k//8 = 1 where kept
        values        fp16|bf16 (L,)        per chunk of 512 columns (row-major) its kept values,
                                            from a 16-byte boundary, zero padding to the next
        chunk_offsets int32 (N, ceil(K/512)) chunk (n, j) starts at values[8·chunk_offsets[n, j]]
        B/w = 1/8 + 2·d + (4 + ≈7)/512  (d = kept fraction; 50%: 1.146)"""),
    "bitmask-int8": Codec(BITMASK, 8, "values", """
        mask          uint8 (N, ceil(K/8))
        values        uint8 (L,)            kept codes, chunked as bitmask (16 codes per 16 bytes)
        chunk_offsets int32 (N, ceil(K/512))
        scales  fp16  (N, G), zeros uint8 (N, G)
        B/w = 1/8 + d + (4 + ≈7.5)/512 + 3G/K  (50% g=128: 0.671)"""),
    "bitmask-int4": Codec(BITMASK, 4, "values", """
        mask          uint8 (N, ceil(K/8))
        values        uint8 (L,)            kept codes two per byte, chunked as bitmask (32 per 16 bytes)
        chunk_offsets int32 (N, ceil(K/512))
        scales  fp16  (N, G), zeros uint8 (N, G)
        B/w = 1/8 + d/2 + (4 + ≈7.75)/512 + 3G/K  (50% g=128: 0.421)"""),
}


def codec_of(fmt: str) -> Codec:
    if fmt not in FORMATS:
        raise ValueError(f"unknown packed format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _encode(stream: torch.Tensor, code_bits: int | None) -> torch.Tensor:
    return pack_bits(stream, 4) if code_bits == 4 else stream.contiguous()


def _decode(stored: torch.Tensor, code_bits: int | None) -> torch.Tensor:
    return unpack_bits(stored, 4) if code_bits == 4 else stored


def pack_weight(
    weight: torch.Tensor | None,
    fmt: str,
    *,
    mask: torch.Tensor | None = None,
    quantized: Quantized | None = None,
    nm: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float16,
) -> tuple[LayerFormat, dict[str, torch.Tensor]]:
    """Pack one weight (N, K) in format `fmt`; returns its LayerFormat and tensors.

    Float formats pack `weight` cast to dtype; int formats pack `quantized` (weight may be
    None). Kept entries are ~mask, or without a mask the nonzero ones (code ≠ z); pruned
    entries are stored as 0.0 / z whatever the input holds there. `nm` = (n, m) for N:M
    formats; packing raises ValueError if a group keeps more than n.
    """
    codec = codec_of(fmt)
    dtype_name = {v: k for k, v in DTYPES.items()}.get(dtype)
    if dtype_name is None:
        raise ValueError(f"dtype must be float16 or bfloat16, got {dtype}")
    n, m = nm if codec.layout is NM and nm is not None else (None, None)
    if codec.code_bits is None:
        if weight is None:
            raise ValueError(f"format {fmt!r} packs float values: pass weight")
        payload = weight.to(dtype)
        fill = torch.zeros_like(payload)
        layer = LayerFormat(fmt, tuple(payload.shape), dtype_name, n=n, m=m)
    else:
        if quantized is None:
            raise ValueError(f"format {fmt!r} packs quantized codes: pass quantized")
        if weight is not None and tuple(weight.shape) != quantized.shape:
            raise ValueError(f"weight {tuple(weight.shape)} and quantized {quantized.shape} differ in shape")
        spec = quantized.spec
        payload = quantized.codes
        fill = expand_groups(quantized.zeros, spec.group_size, payload.shape[1])
        layer = LayerFormat(fmt, quantized.shape, dtype_name, spec.bits, spec.group_size, spec.symmetric, n, m)
    if mask is not None and tuple(mask.shape) != layer.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match weight {layer.shape}")
    kept = ~mask if mask is not None else payload != fill
    payload = torch.where(kept, payload, fill)
    stream, tensors = codec.layout.pack(payload, kept, layer)
    tensors = {codec.stream: _encode(stream, codec.code_bits), **tensors}
    if quantized is not None and codec.code_bits is not None:
        tensors |= {"scales": quantized.scales.contiguous(), "zeros": quantized.zeros.contiguous()}
    return layer, tensors


def unpack_weight(
    tensors: dict[str, torch.Tensor], layer: LayerFormat, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The dense (N, K) weight in dtype (default layer.dtype), dequantized for int formats."""
    codec = codec_of(layer.format)
    if codec.code_bits is not None:
        return unpack_quantized(tensors, layer).dequantize(dtype or layer.torch_dtype)
    stream = _decode(tensors[_check_tensors(tensors, layer)], codec.code_bits)
    fill = torch.zeros(layer.shape, dtype=stream.dtype, device=stream.device)
    return codec.layout.unpack(stream, tensors, layer, fill).to(dtype or layer.torch_dtype)


def unpack_quantized(tensors: dict[str, torch.Tensor], layer: LayerFormat) -> Quantized:
    """The codes, scales and zeros of an int format's layer, codes unpacked to (N, K)."""
    codec = codec_of(layer.format)
    if codec.code_bits is None:
        raise ValueError(f"format {layer.format!r} holds float values, not quantized codes")
    stream = _decode(tensors[_check_tensors(tensors, layer)], codec.code_bits)
    fill = expand_groups(tensors["zeros"], layer.spec.group_size, layer.shape[1])
    codes = codec.layout.unpack(stream, tensors, layer, fill)
    return Quantized(codes.contiguous(), tensors["scales"], tensors["zeros"], layer.spec)


def _check_tensors(tensors: dict[str, torch.Tensor], layer: LayerFormat) -> str:
    """The name of the layer's stream tensor, after checking every tensor its format needs is there."""
    codec = codec_of(layer.format)
    needed = {codec.stream, *codec.layout.structure, *(("scales", "zeros") if codec.code_bits else ())}
    if missing := needed - tensors.keys():
        raise ValueError(f"format {layer.format!r} is missing tensors {sorted(missing)}")
    return codec.stream


def bytes_per_weight(tensors: dict[str, torch.Tensor], shape: tuple[int, int]) -> float:
    """Stored bytes of all tensors divided by N·K."""
    return sum(t.numel() * t.element_size() for t in tensors.values()) / math.prod(shape)
