"""What every stage function takes besides its configs and paths, and the run statistics
some of them write next to their artifact."""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.io.artifacts import write_json

Log = Callable[[str], None]
Progress = Callable[[int, str], Callable[[], None]]


@dataclass(frozen=True)
class StageContext:
    """log: one line of progress; progress(total, label) returns a callable that advances a bar;
    key: the run's cache key (tasks/stages/graph.stage_key), recorded in the artifact's metadata."""

    log: Log = print
    progress: Progress | None = None
    key: str | None = None


def peak_host_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def layer_records(records) -> list[dict]:
    """The per-Linear report that goes into an artifact: everything but the timings."""
    return [{k: v for k, v in asdict(r).items() if k != "seconds"} for r in records]


def seconds_per_layer(records) -> list[float]:
    layers: dict[int, float] = {}
    for r in records:
        layers[r.layer] = layers.get(r.layer, 0.0) + r.seconds
    return [round(layers[i], 3) for i in sorted(layers)]


def write_run_stats(path: Path, stats: dict) -> None:
    """Seconds and peak memory of a stage run. Kept outside the artifact, so that the same
    params and seed give a byte-identical artifact (and DVC hash) on every run."""
    write_json(path, {**stats, "peak_host_bytes": peak_host_bytes()})
