"""The shape of params.yaml: one frozen pydantic model per section.

The defaults here are the defaults: the shipped params.yaml spells out exactly these values
(tests/test_defaults.py), so a key left out of params.yaml means what the shipped file says.

Parsed once at the edge (flows/params.py) and passed explicitly to every stage; nothing
below flows/ reads params.yaml. Validation messages name the key, the value and what is
allowed.
"""

from __future__ import annotations

import re
from itertools import product
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from kernels import FORMATS as KERNEL_FORMATS
from tasks.formats.packing import FORMATS
from tasks.formats.packing import NM as NM_LAYOUT
from tasks.pruning.patterns import NM, Pattern, parse_pattern

Device = Literal["cpu", "cuda"]
PruneMethod = Literal["none", "magnitude", "wanda", "sparsegpt", "admm"]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(Section):
    # "default" (the packaged SmolLM2-135M), "gemma3-270m" (packaged Gemma 3 270M), a hub id
    # "org/name@revision", a local Hugging Face folder, or a .gguf file.
    source: str = "default"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False   # load pytorch_model.bin (torch.load, weights_only) where no safetensors exist


class CalibrationConfig(Section):
    # "default" (packaged Wikipedia), a .txt/.json/.jsonl file, or "hf:name[:config]".
    dataset: str = "default"
    nsamples: PositiveInt = 32
    seqlen: PositiveInt = 512
    seed: int = Field(0, ge=0, le=2**63 - 1)   # torch.Generator's range


class SparseGPTOptions(Section):
    blocksize: PositiveInt = 128
    percdamp: float = Field(0.01, ge=0.0)
    # Which weights to remove: "obs" = the paper's choice per block from w²/[H⁻¹]²_jj;
    # "obs-row" = the same scores, the same count in every row of the block (unstructured);
    # "wanda" = Wanda's per-row choice, followed by SparseGPT's reconstruction update.
    mask: Literal["obs", "obs-row", "wanda"] = "obs"


class ADMMOptions(Section):
    """ADMM pruning (Boža 2024): the layer's least-squares reconstruction iterated to its optimum."""

    iterations: PositiveInt = 30
    percdamp: float = Field(0.01, ge=0.0)   # on the preconditioned H, whose diagonal is 1


class OWLOptions(Section):
    """Outlier-weighted layerwise sparsity (Yin et al. 2024); unstructured targets only."""

    enabled: bool = False
    m: float = Field(5.0, gt=0.0)       # an outlier is a Wanda score above m × the layer mean
    lam: float = Field(0.08, ge=0.0)    # per-layer sparsity stays within target ± lam


class SequentialConfig(Section):
    """The layer-by-layer pass that prune and quantize (gptq) both run (tasks/engine/sequential.py)."""

    # Calibration samples per decoder-layer call (memory ∝ batch_size · seqlen · hidden).
    batch_size: PositiveInt = 8
    # Keep calibration activations in host memory and stream them to the device one batch
    # at a time, for models whose activations would not fit next to a layer on the GPU.
    offload_activations: bool = False


class PruneConfig(Section):
    method: PruneMethod = "wanda"
    sparsity: float | str = 0.5
    # fnmatch patterns over module names, e.g. "*.mlp.down_proj"; decoder-layer Linears only.
    ignore: tuple[str, ...] = ()
    device: Device = "cpu"
    sparsegpt: SparseGPTOptions = SparseGPTOptions()
    admm: ADMMOptions = ADMMOptions()
    owl: OWLOptions = OWLOptions()

    @field_validator("sparsity", mode="before")
    @classmethod
    def _one_value(cls, value: object) -> object:
        # before pydantic tries each member of the union (and names them in its messages)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("allowed: a fraction in [0, 1) such as 0.5, or 'N:M' such as '2:4'")
        return value

    @field_validator("sparsity")
    @classmethod
    def _valid_pattern(cls, value: float | str) -> float | str:
        parse_pattern(value)
        return value

    @model_validator(mode="after")
    def _none_prunes_nothing(self) -> "PruneConfig":
        if self.method == "none" and (self.pattern.fraction != 0 or self.owl.enabled):
            raise ValueError(f"prune.method = 'none' keeps every weight: it needs prune.sparsity = 0 and "
                             f"prune.owl.enabled = false, got {self.sparsity!r} and {self.owl.enabled}")
        return self

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
    group_size: Literal[-1, 32, 64, 128] = 64        # -1: one group per output row
    symmetric: bool = False
    # gptq: quantize the inputs in descending order of their Hessian diagonal, groups fixed up front.
    act_order: bool = True
    # joint: prune (SparseGPT) and quantize (GPTQ) in one pass, from the dense model.
    joint: bool = False
    blocksize: PositiveInt = 128
    percdamp: float = Field(0.01, ge=0.0)
    # gptq: the float type of the Hessian inverse, its Cholesky factor and the error feedback.
    # float32 rounds differently with the thread count, and GPTQ's rounding decisions amplify
    # that (bench/results/noise-band-cpu.json); float64 gives the same codes on 1 or 2 threads.
    solver_dtype: Literal["float32", "float64"] = "float64"
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
    max_windows: PositiveInt | None = 32
    # Prepend the tokenizer's BOS token to every window: true, false, or "auto" (ask the tokenizer).
    add_bos: bool | Literal["auto"] = "auto"
    device: Device = "cpu"
    # Zero-shot accuracy (lm-evaluation-harness, tasks/evaluation/zero_shot.py) of the dense,
    # pruned and packed models: "wiki_cloze" (built in, offline), names from lm-eval's registry
    # (hub datasets: the network or the local cache) or from include_path. () scores nothing.
    tasks: tuple[str, ...] = ("wiki_cloze",)
    include_path: str | None = None     # a folder of the user's own lm-eval task YAMLs
    cloze_items: PositiveInt = 250      # wiki_cloze: the first this many eligible held-out passages

    @field_validator("add_bos", mode="before")
    @classmethod
    def _bos_choice(cls, value: object) -> object:
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValueError("allowed: true, false, auto")

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name.strip() for name in value):
            raise ValueError("task names must not be empty")
        return distinct(value)


def sweep_sparsity(entry: float | str) -> float | str:
    """A sweep.sparsities entry as a prune.sparsity value: 0.6 stays, "2of4" becomes "2:4".
    N:M is spelled NofM in the sweep because the entry names the point's files."""
    if isinstance(entry, str) and ":" in entry:
        raise ValueError(f"write N:M as NofM here (the entry names files), e.g. {entry.replace(':', 'of')!r}")
    if isinstance(entry, str) and not re.fullmatch(r"[0-9]+of[0-9]+|[0-9]*\.?[0-9]+", entry):
        # The entry becomes part of the point's name: its DVC stage, files and folder.
        raise ValueError(f"{entry!r} is neither a fraction such as 0.6 nor NofM such as 2of4 "
                         "(digits, '.' and 'of' only: the entry names the point's DVC stage and files)")
    value = entry.replace("of", ":") if isinstance(entry, str) else entry
    parse_pattern(value)
    return value


class SweepQuantizer(Section):
    """One value of the sweep's quantize axis, described by its own entry alone (so a sweep
    point tracks just that entry); `none` prunes and evaluates only."""

    method: Literal["none", "rtn", "gptq"] = "none"
    bits: Literal[2, 3, 4, 8] = 4
    group_size: Literal[-1, 32, 64, 128] = 128
    symmetric: bool = False
    # auto: bitmask, or nm for an N:M point, holding int4/int8 codes when quantized
    format: str = "auto"

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != "auto" and value not in FORMATS:
            raise ValueError(f"unknown format; allowed: auto, {', '.join(FORMATS)}")
        return value


def distinct(value: tuple) -> tuple:
    if len(set(map(str, value))) < len(value):
        raise ValueError("entries must be distinct")
    return value


class SweepGrid(Section):
    """methods × sparsities × quantize, each point named "<method>-<sparsity>-<quantize>" (the
    key DVC's matrix gives it); the other prune, quantize and pack keys come from their own
    sections. An empty list means no points."""

    methods: tuple[PruneMethod, ...] = ("wanda", "sparsegpt")
    sparsities: tuple[float | str, ...] = (0.5, 0.6, 0.7, "2of4")
    quantize: tuple[str, ...] = ("none",)

    @field_validator("methods", "sparsities", "quantize")
    @classmethod
    def _distinct(cls, value: tuple) -> tuple:
        return distinct(value)

    @field_validator("sparsities")
    @classmethod
    def _valid_sparsities(cls, value: tuple) -> tuple:
        for entry in value:
            sweep_sparsity(entry)
        return value

    def points(self) -> dict[str, tuple[str, float | str, str]]:
        """Point name → (method, sparsity entry, quantize), in DVC's matrix order."""
        return {"-".join(map(str, point)): point for point in product(self.methods, self.sparsities, self.quantize)}


class SweepConfig(SweepGrid):
    """Three grids of points: the pruning grid (this section's methods × sparsities × quantize),
    `quantized` (a second grid, for pruned-and-quantized points) and `dense` (quantizers with
    no pruning, the points "dense-<quantize>"): one Pareto front of perplexity against bytes."""

    quantized: SweepGrid = SweepGrid(methods=("sparsegpt", "admm"), sparsities=(0.5, "2of4"), quantize=("gptq4",))
    dense: tuple[str, ...] = ("gptq4", "gptq3", "gptq2")
    quantizers: dict[str, SweepQuantizer] = {
        "none": SweepQuantizer(),
        **{f"gptq{bits}": SweepQuantizer(method="gptq", bits=bits, group_size=64) for bits in (4, 3, 2)}}

    @field_validator("dense")
    @classmethod
    def _dense_distinct(cls, value: tuple) -> tuple:
        return distinct(value)

    @field_validator("quantizers")
    @classmethod
    def _names_path_safe(cls, value: dict) -> dict:
        if bad := [name for name in value if not re.fullmatch(r"[A-Za-z0-9_.]+", name)]:
            raise ValueError(f"names {bad} must use only letters, digits, '_' and '.' (they name files)")
        return value

    @model_validator(mode="after")
    def _points_well_defined(self) -> "SweepConfig":
        used = {key: list(dict.fromkeys(q for *_, q in grid.points().values()))
                for key, grid in (("quantize", self), ("quantized.quantize", self.quantized))}
        for key, names in (*used.items(), ("dense", self.dense)):
            if missing := [name for name in names if name not in self.quantizers]:
                raise ValueError(f"sweep.{key} names {missing} missing from sweep.quantizers "
                                 f"(defined: {', '.join(self.quantizers) or 'none'})")
        if unquantized := [name for name in self.dense if self.quantizers[name].method == "none"]:
            raise ValueError(f"sweep.dense names {unquantized}, which quantize nothing: that point would be "
                             "the dense fp16 model, which every sweep plot already shows")
        if both := sorted(self.points().keys() & self.quantized.points().keys()):
            raise ValueError(f"points {both} are in both the sweep's own grid and sweep.quantized")
        if not (self.points() or self.quantized.points() or self.dense):
            raise ValueError("the sweep has no points: every grid has an empty list and sweep.dense is empty")
        return self


class BenchmarkConfig(Section):
    """The `benchmark` stage (tasks/stages/benchmark.py): kernels against torch's paths and batch-1 decode,
    on a CUDA GPU; without one, the CPU reference path on the packed model's own shapes."""

    # (N, K) timed besides the packed model's own shapes: Llama-2-7B's and Llama-3-70B's MLP
    shapes: tuple[tuple[PositiveInt, PositiveInt], ...] = (
        (4096, 4096), (11008, 4096), (4096, 11008), (28672, 8192), (8192, 28672))
    batches: tuple[PositiveInt, ...] = (1, 16, 128, 2048)
    formats: tuple[str, ...] = tuple(KERNEL_FORMATS)
    group_size: Literal[-1, 32, 64, 128] = 128
    warmup: PositiveInt = 10
    reps: PositiveInt = 50
    max_ms: float = Field(200.0, gt=0)       # per timed path: fewer reps (at least 3) when a call is slow
    decode_layers: int = Field(16, ge=0)     # random Llama-2-7B-shaped model; 0 skips the decode benchmark
    decode_tokens: PositiveInt = 128
    decode_formats: tuple[str, ...] = ("int4", "nm-int4", "bitmask-int4")
    cpu_batches: tuple[PositiveInt, ...] = (1, 16)
    cpu_reps: PositiveInt = 3

    @field_validator("formats")
    @classmethod
    def _kernel_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if unknown := [f for f in value if f not in KERNEL_FORMATS]:
            raise ValueError(f"no kernel for {unknown}; kernels exist for: {', '.join(KERNEL_FORMATS)}")
        return value

    @field_validator("decode_formats")
    @classmethod
    def _packed_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if unknown := [f for f in value if f not in FORMATS]:
            raise ValueError(f"unknown formats {unknown}; allowed: {', '.join(FORMATS)}")
        return value


class Params(Section):
    model: ModelConfig = ModelConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    sequential: SequentialConfig = SequentialConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    pack: PackConfig = PackConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    sweep: SweepConfig = SweepConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()

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
        if quantize.joint and quantize.act_order and isinstance(self.prune.pattern, NM):
            raise ValueError(f"quantize.joint = true with quantize.act_order = true needs an unstructured "
                             f"prune.sparsity, got {self.prune.sparsity!r} (act-order visits the inputs out of "
                             "order, an N:M group is M consecutive ones); set quantize.act_order: false")
        return self
