"""The shape of params.yaml: one frozen pydantic model per section.

Parsed once at the edge (flows/params.py) and passed explicitly to every stage; nothing
below flows/ reads params.yaml. Validation messages name the key, the value and what is
allowed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from tasks.pack import FORMATS
from tasks.pack import NM as NM_LAYOUT
from tasks.patterns import NM, Pattern, parse_pattern

Device = Literal["cpu", "cuda"]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(Section):
    # "default" (the packaged SmolLM2-135M), a hub id "org/name@revision", a local
    # Hugging Face folder, or a .gguf file.
    source: str = "default"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False


class CalibrationConfig(Section):
    # "default" (packaged Wikipedia), a .txt/.json/.jsonl file, or "hf:name[:config]".
    dataset: str = "default"
    nsamples: PositiveInt = 64
    seqlen: PositiveInt = 512
    seed: int = 0


class SparseGPTOptions(Section):
    blocksize: PositiveInt = 128
    percdamp: float = Field(0.01, ge=0.0)
    # Which weights to remove: "obs" = the paper's choice per block from w²/[H⁻¹]²_jj;
    # "wanda" = Wanda's per-row choice, followed by SparseGPT's reconstruction update.
    mask: Literal["obs", "wanda"] = "obs"


class OWLOptions(Section):
    """Outlier-weighted layerwise sparsity (Yin et al. 2024); unstructured targets only."""

    enabled: bool = False
    m: float = Field(5.0, gt=0.0)       # an outlier is a Wanda score above m × the layer mean
    lam: float = Field(0.08, ge=0.0)    # per-layer sparsity stays within target ± lam


class PruneConfig(Section):
    method: Literal["magnitude", "wanda", "sparsegpt"] = "wanda"
    sparsity: float | str = 0.5
    # fnmatch patterns over module names, e.g. "*.mlp.down_proj"; decoder-layer Linears only.
    ignore: tuple[str, ...] = ()
    device: Device = "cpu"
    # Keep calibration activations in host memory and stream them to the device one sample
    # at a time, for models whose activations would not fit next to a layer on the GPU.
    offload_activations: bool = False
    sparsegpt: SparseGPTOptions = SparseGPTOptions()
    owl: OWLOptions = OWLOptions()

    @field_validator("sparsity")
    @classmethod
    def _valid_pattern(cls, value: float | str) -> float | str:
        parse_pattern(value)
        return value

    @model_validator(mode="after")
    def _owl_needs_unstructured(self) -> "PruneConfig":
        if self.owl.enabled and isinstance(self.pattern, NM):
            raise ValueError(f"prune.owl.enabled = true needs an unstructured prune.sparsity, "
                             f"got N:M {self.sparsity!r} (OWL varies the sparsity per layer)")
        return self

    @property
    def pattern(self) -> Pattern:
        return parse_pattern(self.sparsity)


class QuantizeConfig(Section):
    # none: keep the pruned float weights; rtn: round to nearest; gptq: error feedback
    # through the inverse Hessian (Frantar et al. 2022), keeping every pruned zero.
    method: Literal["none", "rtn", "gptq"] = "gptq"
    bits: Literal[2, 3, 4, 8] = 4
    group_size: Literal[-1, 32, 64, 128] = 128       # -1: one group per output row
    symmetric: bool = False
    # joint: prune (SparseGPT) and quantize (GPTQ) in one pass, from the dense model.
    joint: bool = False
    blocksize: PositiveInt = 128
    percdamp: float = Field(0.01, ge=0.0)
    device: Device = "cpu"

    @model_validator(mode="after")
    def _groups_fit_blocks(self) -> "QuantizeConfig":
        if self.group_size > 0 and self.blocksize % self.group_size:
            raise ValueError(f"quantize.blocksize = {self.blocksize} must be a multiple of "
                             f"quantize.group_size = {self.group_size}")
        return self


class PackConfig(Section):
    format: str = "bitmask-int4"
    dtype: Literal["float16", "bfloat16"] = "float16"   # stored values / dequantized dtype

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown format; allowed: {', '.join(FORMATS)}")
        return value


class EvaluateConfig(Section):
    dataset: str = "default"
    seqlen: PositiveInt = 512
    batch_size: PositiveInt = 4
    # Cap on the number of windows (None = the whole held-out split).
    max_windows: PositiveInt | None = None
    # Prepend the tokenizer's BOS token to every window: "auto" asks the tokenizer.
    add_bos: Literal["auto", "true", "false"] = "auto"
    device: Device = "cpu"


class Params(Section):
    model: ModelConfig = ModelConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    pack: PackConfig = PackConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _sections_agree(self) -> "Params":
        codec = FORMATS[self.pack.format]
        quantize, fmt = self.quantize, self.pack.format
        if codec.code_bits is not None and quantize.method == "none":
            raise ValueError(f"pack.format = {fmt!r} stores quantized codes but quantize.method = 'none'; "
                             "choose rtn or gptq, or a float format (dense, nm, bitmask)")
        if codec.code_bits is not None and quantize.bits > codec.code_bits:
            raise ValueError(f"pack.format = {fmt!r} stores at most {codec.code_bits}-bit codes but "
                             f"quantize.bits = {quantize.bits}")
        if codec.layout is NM_LAYOUT and not isinstance(self.prune.pattern, NM):
            raise ValueError(f"pack.format = {fmt!r} needs an N:M prune.sparsity such as '2:4', "
                             f"got {self.prune.sparsity!r}")
        if quantize.joint and (self.prune.method != "sparsegpt" or quantize.method != "gptq"):
            raise ValueError("quantize.joint = true needs prune.method = 'sparsegpt' and quantize.method = 'gptq', "
                             f"got {self.prune.method!r} and {quantize.method!r}")
        return self
