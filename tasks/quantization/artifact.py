"""Quantized codes inside the quantize stage's artifact: codes.safetensors holds, per Linear,
`<name>.codes` uint8 (N, K), `<name>.scales` float16 (N, G) and `<name>.zeros` uint8 (N, G);
metadata.json's "spec" holds bits, group_size and symmetric (null when nothing is quantized)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from tasks.quantization.grid import Quantized, QuantSpec

CODES_FILE = "codes.safetensors"
PARTS = ("codes", "scales", "zeros")


def spec_metadata(spec: QuantSpec | None) -> dict | None:
    return None if spec is None else asdict(spec)


def write_codes(quantized: dict[str, Quantized], tmp: Path) -> None:
    if quantized:
        save_file({f"{name}.{part}": getattr(q, part).contiguous() for name, q in quantized.items() for part in PARTS},
                  tmp / CODES_FILE)


def load_codes(directory: Path, spec: dict | None) -> dict[str, Quantized]:
    """The codes of an artifact whose metadata "spec" is `spec`; {} when it holds none."""
    path = Path(directory) / CODES_FILE
    if spec is None or not path.is_file():
        return {}
    flat = load_file(path)
    names = {key.rsplit(".", 1)[0] for key in flat}
    return {name: Quantized(*(flat[f"{name}.{part}"] for part in PARTS), QuantSpec(**spec)) for name in names}
