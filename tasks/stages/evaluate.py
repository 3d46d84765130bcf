"""Stage `evaluate`: perplexity of the pruned, quantized and packed models on the held-out
split, and zero-shot accuracy (evaluate.tasks) of the pruned and packed ones, then the small,
diffable results: metrics.json (atomically) and the per-layer sparsity table and plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from transformers import AutoTokenizer

from tasks.evaluation import zero_shot
from tasks.evaluation.perplexity import measure, read_accuracy, read_perplexity
from tasks.formats.artifact import PACKED_FORMAT, load_metadata
from tasks.formats.packing import DENSE_BYTES_PER_WEIGHT
from tasks.io.artifacts import METADATA, check_artifact, read_metadata, write_json
from tasks.io.model import MODEL_KIND, MODEL_VERSION, check_seqlen, load_model_dir
from tasks.serving.packed_model import load_packed
from tasks.stages.common import StageContext

if TYPE_CHECKING:
    from tasks.config import EvaluateConfig


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
    """One small panel per projection type (and one for all of them), sparsity 0 to 1 against
    the decoder layer: equal lines stay apart instead of drawn over one another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(table.columns.drop("layer"))
    ncols = 4
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(10, 2.2 * nrows + 0.6), sharex=True, sharey=True,
                             squeeze=False)
    for ax, column in zip(axes.flat, columns):
        ax.plot(table["layer"], table[column], marker=".", lw=1.5, color="black" if column == "all" else "C0")
        ax.set_title(f"{column} (mean {table[column].mean():.3f})", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(columns):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("decoder layer")
    for ax in axes[:, 0]:
        ax.set_ylabel("sparsity")
    fig.suptitle(title)
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


def build_metrics(ppl: dict[str, float], prune_run: dict, packed_meta: dict, records: list[dict],
                  acc: dict[str, dict[str, float]] | None = None) -> dict:
    """ppl: perplexity of the "dense", "pruned", "quantized" and "packed" models; acc: task →
    zero-shot accuracy of the "dense", "pruned" and "packed" ones (None: no task configured).
    Sparsity comes from the final (quantized) weights; time and peaks are the prune stage's."""
    mib = 1 << 20
    bytes_per_weight = packed_meta["bytes_per_weight"]
    return {**{f"ppl_{name}": round(value, 4) for name, value in ppl.items()},
            **{f"acc_{name}": {task: round(value, 4) for task, value in tasks.items()}
               for name, tasks in (acc or {}).items()},
            **sparsity_summary(records),
            "format": packed_meta["config"]["pack"]["format"],
            "bytes_per_weight": round(bytes_per_weight, 4),
            "size_ratio": round(bytes_per_weight / DENSE_BYTES_PER_WEIGHT, 4),
            "prune_seconds": round(prune_run["prune_seconds"], 2),
            "peak_host_mib": round(prune_run["peak_host_bytes"] / mib, 1),
            "peak_device_mib": round(prune_run["peak_device_bytes"] / mib, 1)}


def evaluate_artifact(cfg: EvaluateConfig, *, model: Path, out: Path, ctx: StageContext) -> Path:
    """Perplexity of a model artifact, a Hugging Face folder or a packed one → out/: the sweep's
    `perplexity` stage, no zero-shot tasks. A stage function takes only its sections, paths and
    ctx (tests/test_graph.py), so `tasks` stays with measure_artifact."""
    return measure_artifact(cfg, model, out, ctx)


def measure_artifact(cfg: EvaluateConfig, model: Path, out: Path, ctx: StageContext,
                     tasks: zero_shot.Tasks | None = None) -> Path:
    """Perplexity of a model artifact → out/, and its accuracy on `tasks` (zero_shot.load_tasks)
    where given: the model load_packed returns is the one scored."""
    check_seqlen(cfg.seqlen, model, "evaluate.seqlen")
    if json.loads((model / METADATA).read_text()).get("kind") == PACKED_FORMAT:
        loaded, tokenizer = load_packed(model, decode="load"), AutoTokenizer.from_pretrained(model)
    else:
        loaded, tokenizer, _ = load_model_dir(model)
    scores = zero_shot.score(tasks, loaded, tokenizer, cfg) if tasks else None
    return measure(cfg, loaded, tokenizer, model, out, ctx, scores)


def evaluate(cfg: EvaluateConfig, *, pruned: Path, quantized: Path, packed: Path, eval_dense: Path,
             prune_run: Path, eval_pruned: Path, eval_quantized: Path, eval_packed: Path, metrics: Path,
             sparsity_csv: Path, sparsity_png: Path, ctx: StageContext) -> Path:
    for artifact in (pruned, quantized, packed, eval_dense):   # a broken one stops here, not after an hour
        check_artifact(artifact)
    tasks = zero_shot.load_tasks(cfg)   # so does a bad task name or an unreachable dataset
    evals = {"dense": eval_dense}
    # Not the quantized model: the packed one holds its weights (exactly, or rounded to pack.dtype).
    for name, model_dir, out in (("pruned", pruned, eval_pruned), ("quantized", quantized, eval_quantized),
                                 ("packed", packed, eval_packed)):
        evals[name] = measure_artifact(cfg, model_dir, out, ctx, None if name == "quantized" else tasks)
    ppl = {name: read_perplexity(path) for name, path in evals.items()}
    acc = {name: read_accuracy(evals[name]) for name in ("dense", "pruned", "packed")} if tasks else None
    records = json.loads((quantized / "layers.json").read_text())
    result = build_metrics(ppl, json.loads(prune_run.read_text()), load_metadata(packed), records, acc)
    table = layer_table(records)
    sparsity_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(sparsity_csv, index=False)
    prune_cfg = read_metadata(pruned, MODEL_KIND, MODEL_VERSION, verify=False)["config"]
    plot_layer_sparsity(table, sparsity_png, f"{prune_cfg['method']} at {prune_cfg['sparsity']}")
    write_json(metrics, result)
    ctx.log(json.dumps(result))
    return metrics
