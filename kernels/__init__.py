"""Triton matmul kernels for the packed formats of docs/formats.md: y = x @ Ŵᵀ.

    from kernels import available, launcher
    if available():
        y = launcher("int4")(x, **tensors, group_size=128)

Each launcher takes x (B, K) fp16/bf16, the format's tensors under their safetensors names
(positionally or by keyword), its parameters as keywords (group_size, n, m) and an optional
`out`. Modules are imported lazily, so `import kernels` works without Triton.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

# format name → module under kernels/ holding its `matmul` launcher
FORMATS: dict[str, str] = {
    "int4": "int4",
    "int8": "int8",
    "nm": "nm",
    "nm-int4": "nm_int4",
    "nm-int8": "nm_int8",
    "bitmask": "bitmask",
    "bitmask-int4": "bitmask_int4",
    "bitmask-int8": "bitmask_int8",
}


def available() -> bool:
    """Triton imports and there is somewhere to run it: a CUDA GPU, or TRITON_INTERPRET=1 (CPU)."""
    try:
        import torch
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def launcher(fmt: str) -> Callable:
    """The `matmul` launcher of a format name (as in metadata.json)."""
    if fmt not in FORMATS:
        raise ValueError(f"no kernel for format {fmt!r}; kernels exist for: {', '.join(FORMATS)}")
    return importlib.import_module(f"kernels.{FORMATS[fmt]}").matmul
