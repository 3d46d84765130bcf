"""Tables, plots and the Markdown report across runs: the sweep (results/sweep/*.json),
the kernel benchmarks (bench/results/*.json) and reports/report.md.

Apart from metrics.json's own code (tasks/stages/evaluate.py) so that a change to a sweep plot
reruns the sweep's summary only.
"""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import pandas as pd

from tasks.formats.packing import DENSE_BYTES_PER_WEIGHT


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def flatten(metrics: dict) -> dict:
    """{"a": {"b": 1}} → {"a.b": 1}, one level deep (metrics.json's nesting)."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


# ---------------------------------------------------------------- sweep


def pareto_front(cost: list[float], loss: list[float]) -> list[bool]:
    """True where no other point is at least as good on both axes and better on one."""
    points = list(zip(cost, loss))
    return [not any(c <= c0 and l <= l0 and (c, l) != (c0, l0) for c, l in points) for c0, l0 in points]


def sweep_table(results: list[dict]) -> pd.DataFrame:
    """One row per point (results/sweep/<name>.json), with `pareto`: on the front of
    perplexity against bytes per weight."""
    table = pd.DataFrame(results)
    table["pareto"] = pareto_front(list(table["bytes_per_weight"]), list(table["ppl"]))
    return table


def _styles(table: pd.DataFrame) -> tuple[dict, dict]:
    colors = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(table["method"]))}
    lines = dict(zip(dict.fromkeys(table["quantize"]), cycle(("-", "--", ":", "-."))))
    return colors, lines


def _label(method: str) -> str:
    return "no pruning" if method == "none" else method


def plot_ppl_vs_sparsity(table: pd.DataFrame, path: Path) -> None:
    """Final perplexity against target sparsity: a line per method (and quantizer) over the
    unstructured points, a square per N:M point, the dense model dashed."""
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    colors, lines = _styles(table)
    for (method, quantize), rows in table.groupby(["method", "quantize"], sort=False):
        label = _label(method) if len(lines) == 1 else f"{_label(method)} ({quantize})"
        nm = rows["pattern"].str.contains(":")
        flat = rows[~nm].sort_values("target")
        ax.plot(flat["target"], flat["ppl"], marker="o", color=colors[method], ls=lines[quantize], label=label)
        ax.scatter(rows[nm]["target"], rows[nm]["ppl"], marker="s", s=60, color=colors[method], zorder=3)
        for _, row in rows[nm].iterrows():
            ax.annotate(row["pattern"], (row["target"], row["ppl"]), textcoords="offset points", xytext=(6, -3),
                        fontsize=8)
    ax.axhline(table["ppl_dense"].iloc[0], color="gray", ls="--", lw=1, label="dense")
    ax.set(xlabel="target sparsity (squares: N:M)", ylabel="perplexity", yscale="log",
           title="Perplexity against sparsity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_pareto(table: pd.DataFrame, path: Path) -> None:
    """Perplexity against stored bytes per weight; the front (no point both smaller and
    better) joined and labelled, the dense fp16 model as a star."""
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    colors, _ = _styles(table)
    markers = dict(zip(dict.fromkeys(table["quantize"]), cycle("o^sDvP")))
    for (method, quantize), rows in table.groupby(["method", "quantize"], sort=False):
        ax.scatter(rows["bytes_per_weight"], rows["ppl"], color=colors[method], marker=markers[quantize],
                   label=f"{_label(method)} ({quantize})", alpha=0.8)
    front = table[table["pareto"]].sort_values("bytes_per_weight")
    ax.plot(front["bytes_per_weight"], front["ppl"], color="black", lw=1, drawstyle="steps-post", zorder=0)
    for _, row in front.iterrows():
        ax.annotate(row["name"], (row["bytes_per_weight"], row["ppl"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=7)
    ax.scatter([DENSE_BYTES_PER_WEIGHT], [table["ppl_dense"].iloc[0]], marker="*", s=150, color="gray",
               label="dense fp16")
    ax.set(xlabel="bytes per weight (decoder Linears, packed)", ylabel="perplexity", yscale="log",
           title="Perplexity against size: the Pareto front")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, path)


# ---------------------------------------------------------------- kernel benchmarks


def speedup_table(rows: list[dict]) -> pd.DataFrame:
    """Benchmark rows (kernel, N, K, batch, ms, dense_ms) → median speedup over the shapes,
    one row per kernel, one column per batch size."""
    frame = pd.DataFrame(rows).dropna(subset=["ms", "dense_ms"])   # failed or unmatched rows
    frame["speedup"] = frame["dense_ms"] / frame["ms"]
    return frame.pivot_table(index="kernel", columns="batch", values="speedup", aggfunc="median").round(3)


def plot_speedup(table: pd.DataFrame, path: Path) -> None:
    """One line per kernel; the legend outside the axes, margins so that no point sits on a border."""
    fig, ax = _pyplot().subplots(figsize=(9, 4.5))
    for kernel, row in table.iterrows():
        ax.plot(row.index, row.values, marker="o", label=kernel)
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set(yscale="log", xlabel="batch (tokens)", ylabel="speedup over dense fp16",
           title="Kernel speedup against batch (median over shapes)")
    ax.margins(x=0.08, y=0.15)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    _save(fig, path)


# ---------------------------------------------------------------- Markdown report

REPORT_MARKER = "<!-- prunepipe-report -->"   # how CI finds its own PR comment to edit
SWEEP_COLUMNS = ["name", "format", "ppl", "sparsity", "bytes_per_weight", "pareto"]
# Relative changes at most this large are noise. Quality: perplexities moved by up to 1.2e-5
# between two machines of one kind (ppl_dense 16.3101 / 16.3099); the GPTQ-derived ones get the
# band bench/noise_band.py measures for the solver in use (`quality_bands`). Machine figures:
# prune_seconds was 82 s and 169 s in two runs a few commits apart on the shared 2-core machine.
NOISE = {"quality": 1e-4, "machine": 0.5}
GPTQ_METRICS = ("ppl_quantized", "ppl_packed")
MACHINE_NOTE = ("Machine-dependent: times and peak memory of whatever machine ran the pipeline; "
                "compare them only between runs on the same, otherwise idle machine.")


def machine_dependent(name: str) -> bool:
    """Times and peak memory (prune_seconds, peak_host_mib, …): figures of the machine, not the model."""
    leaf = name.rsplit(".", 1)[-1]
    return "seconds" in leaf or leaf.startswith("peak_")


def relative_change(old, new) -> float | None:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    return (new - old) / abs(old) if numeric and old else None


def quality_bands(noise_band: dict, solver_dtype: str) -> dict[str, float]:
    """Per-metric noise bands from bench/results/noise-band-cpu.json: the GPTQ-derived perplexities
    move as far as they moved with this solver between thread counts (`spread`) or between two
    machines of one kind (`between_machines`), and never less than NOISE."""
    moved = [noise_band.get(key, {}).get(solver_dtype, {}).get("relative", 0.0)
             for key in ("spread", "between_machines")]
    return {name: max(NOISE["quality"], *moved) for name in GPTQ_METRICS}


def change_rows(diff: dict, machine: bool, bands: dict[str, float] | None = None) -> list[dict]:
    """`dvc metrics diff --json` ({file: {metric: {old, new}}}) → the quality (or, with `machine`,
    the machine-dependent) changes as rows: metric, before, now, change, note ("noise" within the
    metric's band: `bands`, else NOISE)."""
    rows = []
    for file, metrics in diff.items():
        for name, values in metrics.items():
            if machine_dependent(name) != machine:
                continue
            old, new = values.get("old"), values.get("new")
            change = relative_change(old, new)
            band = (bands or {}).get(name, NOISE["machine" if machine else "quality"])
            rows.append({"metric": name if file == "metrics.json" else f"{file}: {name}", "before": old, "now": new,
                         "change": "" if change is None else f"{change:+.4%}",
                         "note": "noise" if change is not None and abs(change) <= band else ""})
    return rows


def _section(title: str, body: str | list[dict]) -> list[str]:
    """A heading and its table; one line when nothing changed; the error line when dvc failed."""
    if isinstance(body, str):
        return [f"**{title}**: {body}"]
    if not body:
        return [f"**{title}**: unchanged."]
    return [f"### {title}", pd.DataFrame(body).to_markdown(index=False)]


def param_rows(diff: dict) -> list[dict]:
    """`dvc params diff --json` → rows: param, before, now."""
    return [{"param": name, "before": values.get("old"), "now": values.get("new")}
            for params in diff.values() for name, values in params.items()]


def markdown_report(metrics: dict, against: str, metrics_diff: dict | str, params_diff: dict | str,
                    sweep: pd.DataFrame | str | None, speedups: pd.DataFrame | None, images: dict[str, str],
                    bands: dict[str, float] | None = None) -> str:
    """Quality first (metrics, their changes against `against`, params), then the sweep, kernel
    speedups, the machine-dependent figures, the plots. metrics_diff / params_diff: dvc's --json
    diffs, or the line saying why dvc failed; sweep: its table, or the line saying it is stale;
    speedups: speedup_table; images: caption → link; bands: quality_bands."""
    flat = flatten(metrics)
    quality = {k: v for k, v in flat.items() if not machine_dependent(k)}
    machine = {k: v for k, v in flat.items() if machine_dependent(k)}
    failed = isinstance(metrics_diff, str)
    parts = [REPORT_MARKER, "## prunepipe report", "### Quality (metrics.json)",
             pd.DataFrame(quality.items(), columns=["metric", "value"]).to_markdown(index=False)]
    parts += _section(f"Quality against `{against}`", metrics_diff if failed else change_rows(metrics_diff, False, bands))
    parts += _section(f"Parameters against `{against}`",
                      params_diff if isinstance(params_diff, str) else param_rows(params_diff))
    if isinstance(sweep, str):
        parts += [f"**Sweep**: {sweep}"]
    elif sweep is not None:
        shown = sweep[SWEEP_COLUMNS].assign(pareto=sweep["pareto"].map({True: "★", False: ""}))
        parts += ["### Sweep", "★: on the Pareto front of perplexity against bytes per weight.",
                  shown.to_markdown(index=False)]
    if speedups is not None:
        parts += ["### Kernel speedup over dense (median over shapes, by batch)",
                  speedups.reset_index().to_markdown(index=False)]
    parts += ["### Timings and memory (machine-dependent)", MACHINE_NOTE,
              pd.DataFrame(machine.items(), columns=["figure", "value"]).to_markdown(index=False)]
    parts += _section(f"Timings and memory against `{against}`",
                      metrics_diff if failed else change_rows(metrics_diff, True))
    if images:
        parts += ["### Plots", *(f"![{caption}]({link})" for caption, link in images.items())]
    return "\n\n".join(parts) + "\n"
