"""Load a packed artifact (the `pack` stage's output) back into a working nn.Module.

Each packed decoder Linear becomes a PackedLinear that keeps its packed tensors as buffers and
either decodes its weight once at load (`decode="load"`: dense speed, the dense weight's memory)
or computes through kernels/dispatch.py at every call (`decode="call"`): on CUDA the fastest
correct of the dequantize-then-matmul reference, the format's Triton kernel and cuSPARSELt; on the
CPU, which has no kernels, the reference (packed memory, decoding many times slower).
`decode="auto"` decodes at load on the CPU when the dense weights fit in half the available
memory, and never on CUDA. Every other tensor (embeddings, norms, lm_head, biases) comes from
rest.safetensors.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from kernels import dispatch
from kernels._common import with_slack
from tasks.formats.artifact import REST_FILE, load_packed_tensors
from tasks.io.artifacts import ArtifactError
from tasks.formats.packing import LayerFormat, unpack_weight

DECODE_MODES = ("auto", "load", "call")


def kernel_params(layer: LayerFormat) -> dict[str, int]:
    """The layer's keywords for the kernels' launchers (kernels/__init__.py): group_size, n, m."""
    params = {} if layer.group_size is None else {"group_size": layer.group_size}
    return params if layer.n is None else {**params, "n": layer.n, "m": layer.m}


class PackedLinear(nn.Module):
    """y = x · Ŵᵀ + b with Ŵ (out, in) the packed weight; kept dense only after decode_once()."""

    def __init__(self, layer: LayerFormat, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None):
        super().__init__()
        self.layer = layer
        self.out_features, self.in_features = layer.shape
        self.tensor_names = tuple(tensors)
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None
        self.derived: dict = {}  # what a dispatch path builds once (kernels/dispatch.PackedWeight)
        self.register_buffer("decoded", None, persistent=False)  # Ŵ (out, in) once decoded, or None
        self._keep_slack()

    def _keep_slack(self) -> None:
        """Off the CPU (where kernels run), a bitmask stream keeps STREAM_SLACK bytes of storage
        after it: the kernels then load it without clamping each address (kernels/_common.py)."""
        if (self.layer.format.startswith("bitmask") and "values" in self.tensor_names
                and self.values.device.type != "cpu"):
            self.values = with_slack(self.values)

    def _apply(self, fn, recurse=True):  # .to(), .cuda(): a move copies the stream at its own size
        super()._apply(fn, recurse)
        self._keep_slack()
        return self

    def decode_once(self, dtype: torch.dtype) -> None:
        """Keep Ŵ dense from now on: every call becomes one matmul (the packed tensors stay)."""
        self.decoded = self.dense_weight(dtype)

    def packed(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.tensor_names}

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return unpack_weight(self.packed(), self.layer, dtype)

    def packed_weight(self) -> dispatch.PackedWeight:
        return dispatch.PackedWeight(self.layer.format, self.layer.shape, self.packed(), kernel_params(self.layer),
                                     self._unpack, self.derived)

    def _unpack(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return unpack_weight(tensors, self.layer, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decoded is not None:
            return F.linear(x, self.decoded, self.bias)
        return dispatch.linear(x, self.packed_weight(), self.bias)

    def extra_repr(self) -> str:
        decoded = ", decoded" if self.decoded is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.layer.format}{decoded}"


def dense_bytes(layers: dict[str, tuple[LayerFormat, dict]], dtype: torch.dtype) -> int:
    """Bytes of every packed weight decoded to `dtype`."""
    return sum(layer.shape[0] * layer.shape[1] for layer, _ in layers.values()) * dtype.itemsize


def decode_at_load(decode: str, device: torch.device, decoded_bytes: int, available_bytes: int) -> bool:
    """Whether load_packed decodes every weight once. "auto": on the CPU (no kernels there) when
    the dense weights take at most half the available memory; on CUDA never (the kernels read
    the packed bytes)."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    if decode != "auto":
        return decode == "load"
    return device.type == "cpu" and 2 * decoded_bytes <= available_bytes


def load_packed(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                decode: str = "auto", device: str | torch.device = "cpu") -> nn.Module:
    """A packed artifact as a causal LM on `device` whose decoder Linears are PackedLinear modules.

    decode: "load" dequantizes every weight once now (dense speed and memory, on any device),
    "call" at every call (packed memory; on CUDA through the dispatcher's kernels), "auto" picks
    by device and memory (decode_at_load).
    """
    path = Path(path)
    device = torch.device(device)
    layers = load_packed_tensors(path)           # checks kind, version and every file's sha256
    once = decode_at_load(decode, device, dense_bytes(layers, dtype), psutil.virtual_memory().available)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    result = model.load_state_dict(load_file(path / REST_FILE), strict=False)
    packed_weights = {f"{name}.weight" for name in layers}
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected := set(result.unexpected_keys):
        raise ArtifactError(f"{path / REST_FILE}: tensors the model does not have: {sorted(unexpected)[:3]}")
    if missing := set(result.missing_keys) - packed_weights - tied:
        raise ArtifactError(f"{path / REST_FILE}: tensors missing for {sorted(missing)[:3]}")
    for name, (layer, tensors) in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        packed = PackedLinear(layer, tensors, getattr(old, "bias", None))
        if once:
            packed.decode_once(dtype)
        setattr(parent, child, packed)
    model.tie_weights()
    return model.to(device).eval()
