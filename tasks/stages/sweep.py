"""Sweep points: params.yaml's `sweep` section, three grids on one Pareto front.

- the pruning grid, methods × sparsities × quantize, and `sweep.quantized`, a second such grid
  (pruned and quantized): points named "<method>-<sparsity>-<quantize>";
- `sweep.dense`: quantizers with no pruning (prune.method none), points named "dense-<quantize>".

A point is the whole Params with its own prune (method, sparsity), quantize and pack sections;
every other key comes from the main sections, so a point and `dvc repro` agree on
everything they share. A point's name is the key DVC's `matrix` gives its stage
(sweep/dvc.yaml); it owns data/sweep/<name>/ (its artifacts and run stats) and
results/sweep/<name>.json, and reads the shared model, calibration and dense perplexity.

    quantize method none:  prune → evaluate pruned → pack (float bitmask / nm: bytes only)
    otherwise:             prune → evaluate pruned → quantize → pack → evaluate packed
    (a dense point's "pruned" perplexity is the dense model's, not measured again)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.config import Params, QuantizeConfig, SweepQuantizer, sweep_sparsity
from tasks.pruning.patterns import NM, Pattern, parse_pattern
from tasks.formats.packing import DENSE_BYTES_PER_WEIGHT
from tasks.stages.evaluate import sparsity_summary


class SweepPoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    quantize: str          # the name of its entry in sweep.quantizers
    params: Params

    @property
    def quantized(self) -> bool:
        return self.params.quantize.method != "none"


def point_format(fmt: str, quantize: QuantizeConfig, pattern: Pattern) -> str:
    """A point's packed format: `fmt`, or for "auto" the layout of the pattern (nm for N:M,
    bitmask for unstructured, a plain matrix when nothing is pruned) holding float values, or
    int4 codes (≤ 4 bits), or int8."""
    if fmt != "auto":
        return fmt
    codes = f"int{4 if quantize.bits <= 4 else 8}"
    if not pattern.fraction:
        return "dense" if quantize.method == "none" else codes
    layout = "nm" if isinstance(pattern, NM) else "bitmask"
    return layout if quantize.method == "none" else f"{layout}-{codes}"


def _point_params(params: Params, method: str, sparsity: float | str, quantizer: SweepQuantizer) -> Params:
    data = params.model_dump(mode="json")
    data["prune"] |= {"method": method, "sparsity": sparsity}
    # a `none` point quantizes nothing: the section's own (valid) bits and groups stay
    keys = {"method"} if quantizer.method == "none" else {"method", "bits", "group_size", "symmetric"}
    quantize = QuantizeConfig.model_validate({**data["quantize"], **quantizer.model_dump(include=keys), "joint": False})
    data["quantize"] = quantize.model_dump(mode="json")
    data["pack"]["format"] = point_format(quantizer.format, quantize, parse_pattern(sparsity))
    return Params.model_validate(data)


DENSE = "dense"   # the method part of a dense point's name


def grid_points(params: Params) -> dict[str, tuple[str, float | str, str]]:
    """Every point's (prune method, sweep sparsity entry, quantize): the pruning grid, then
    sweep.quantized, then the dense points, each in DVC's matrix order."""
    sweep = params.sweep
    dense = {f"{DENSE}-{name}": ("none", 0.0, name) for name in sweep.dense}
    return {**sweep.points(), **sweep.quantized.points(), **dense}


def sweep_points(params: Params) -> dict[str, SweepPoint]:
    """Every point (grid_points' order). Raises ValueError naming the point whose combination
    the sections do not allow."""
    points = {}
    for name, (method, entry, quantize) in grid_points(params).items():
        try:
            point = _point_params(params, method, sweep_sparsity(entry), params.sweep.quantizers[quantize])
        except ValidationError as err:
            reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
            raise ValueError(f"sweep point {name!r}: {reason}") from None
        points[name] = SweepPoint(name=name, quantize=quantize, params=point)
    return points


def point_result(point: SweepPoint, ppl: dict[str, float], prune_run: dict, packed_meta: dict,
                 records: list[dict], seconds: float) -> dict:
    """The small JSON kept in git for one point. ppl: "dense", "pruned" and, for a quantized
    point, "packed"; prune_run: the prune stage's run stats; records: the per-Linear report
    of its final weights."""
    prune = point.params.prune
    bytes_per_weight = packed_meta["bytes_per_weight"]
    final = ppl["packed"] if point.quantized else ppl["pruned"]
    return {"name": point.name, "method": prune.method, "pattern": str(prune.sparsity),
            "target": round(prune.pattern.fraction, 6), "quantize": point.quantize,
            "format": point.params.pack.format,
            **{f"ppl_{name}": round(ppl[name], 4) if name in ppl else None for name in ("dense", "pruned", "packed")},
            "ppl": round(final, 4), "sparsity": sparsity_summary(records)["sparsity"],
            "bytes_per_weight": round(bytes_per_weight, 4),
            "size_ratio": round(bytes_per_weight / DENSE_BYTES_PER_WEIGHT, 4),
            "prune_seconds": round(prune_run["prune_seconds"], 2), "seconds": round(seconds, 2)}
