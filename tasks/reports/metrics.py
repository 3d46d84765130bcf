"""Small, diffable results: the per-layer sparsity table and plot, and metrics.json."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def layer_table(records: list[dict]) -> pd.DataFrame:
    """Wide table, one row per decoder layer: weighted overall sparsity, then one column per
    projection type (q_proj, …), in the order the model defines them."""
    frame = pd.DataFrame(records)
    frame["zeros"] = frame["sparsity"] * frame["rows"] * frame["cols"]
    frame["weights"] = frame["rows"] * frame["cols"]
    per_layer = frame.groupby("layer")[["zeros", "weights"]].sum()
    table = pd.DataFrame({"all": per_layer["zeros"] / per_layer["weights"]})
    kinds = frame.pivot_table(index="layer", columns="kind", values="sparsity", aggfunc="mean")
    table = table.join(kinds[list(dict.fromkeys(frame["kind"]))])
    return table.reset_index().round(6)


def plot_layer_sparsity(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for column in table.columns.drop("layer"):
        style = {"linewidth": 2.5, "color": "black"} if column == "all" else {"linewidth": 1, "alpha": 0.8}
        ax.plot(table["layer"], table[column], marker=".", label=column, **style)
    ax.set(xlabel="decoder layer", ylabel="sparsity (fraction of zeros)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sparsity_summary(records: list[dict]) -> dict:
    """Overall sparsity of the decoder-layer Linears and the sparsity of each projection type."""
    frame = pd.DataFrame(records)
    weights = frame["rows"] * frame["cols"]
    zeros = frame["sparsity"] * weights
    per_kind = (zeros.groupby(frame["kind"]).sum() / weights.groupby(frame["kind"]).sum())
    return {"sparsity": round(float(zeros.sum() / weights.sum()), 6),
            "sparsity_per_type": {k: round(float(v), 6) for k, v in per_kind.items()}}


DENSE_BYTES_PER_WEIGHT = 2.0   # fp16


def build_metrics(ppl: dict[str, float], prune_run: dict, packed_meta: dict, records: list[dict]) -> dict:
    """ppl: perplexity of the "dense", "pruned", "quantized" and "packed" models.
    Sparsity comes from the final (quantized) weights; time and peaks are the prune stage's."""
    mib = 1 << 20
    bytes_per_weight = packed_meta["bytes_per_weight"]
    return {**{f"ppl_{name}": round(value, 4) for name, value in ppl.items()},
            **sparsity_summary(records),
            "format": packed_meta["config"]["pack"]["format"],
            "bytes_per_weight": round(bytes_per_weight, 4),
            "size_ratio": round(bytes_per_weight / DENSE_BYTES_PER_WEIGHT, 4),
            "prune_seconds": round(prune_run["prune_seconds"], 2),
            "peak_host_mib": round(prune_run["peak_host_bytes"] / mib, 1),
            "peak_device_mib": round(prune_run["peak_device_bytes"] / mib, 1)}
