"""Bytes per weight of every packed format on a 256×1024 Gaussian layer (groups of 128):
50% unstructured (Wanda-style mask from magnitudes) for bitmask*, 2:4 for nm*, none else.
Writes bench/results/format-sizes.json; the README's formats table comes from it.

    .venv/bin/python bench/format_sizes.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tasks.formats.packing import FORMATS, bytes_per_weight, codec_of, pack_weight
from tasks.pruning.patterns import NM, Unstructured, mask_from_scores
from tasks.quantization.grid import QuantSpec, rtn

OUT = Path("bench/results/format-sizes.json")


def main() -> None:
    torch.manual_seed(0)
    W = torch.randn(256, 1024)
    rows = []
    for fmt in FORMATS:
        pattern = NM(2, 4) if fmt.startswith("nm") else Unstructured(0.5 if fmt.startswith("bitmask") else 0.0)
        mask = mask_from_scores(W.abs(), pattern)
        bits = codec_of(fmt).code_bits
        quantized = rtn(W, QuantSpec(bits, 128, False), mask) if bits else None
        _, tensors = pack_weight(W.masked_fill(mask, 0), fmt, mask=mask, quantized=quantized,
                                 nm=(2, 4) if fmt.startswith("nm") else None)
        bpw = bytes_per_weight(tensors, tuple(W.shape))
        rows.append({"format": fmt, "sparsity": pattern.fraction, "bytes_per_weight": round(bpw, 4),
                     "vs_fp16": round(bpw / 2, 4)})
        print(f"{fmt:14s} {bpw:.4f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"shape": [256, 1024], "group_size": 128, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
