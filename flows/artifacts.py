"""What a run shows in Prefect's UI: per stage and per `compress` run, a table of its figures and a
Markdown report with the params it ran on and where its outputs and plots are.

    publish_stage(stage, configs, outputs)      # in a stage flow, after its task
    publish_compress(params, metrics)           # at the end of the compress flow

Artifact keys (Prefect keeps every version under a key): `<stage>-figures` and `<stage>-report`
(stage names with dashes), `compress-metrics` and `compress-report`. Plots are given as paths:
the Prefect server may run elsewhere and cannot serve files from the clone.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.config import Params
from tasks.io.artifacts import METADATA
from tasks.reports.summary import flatten
from tasks.stages.graph import SPARSITY_PNG, Stage

SKIPPED = {"key", "kind", "version"}   # metadata every artifact has: not a figure


def _scalars(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool)) and k not in SKIPPED}


def output_figures(path: Path) -> dict:
    """The scalar figures an output holds: a stage artifact's metadata (perplexity, bytes per
    weight, tokens, …; not its config, files or inputs) or a JSON file (metrics.json, run stats;
    nested one level as `a.b`)."""
    if (path / METADATA).is_file():
        return _scalars(json.loads((path / METADATA).read_text()))
    if path.suffix == ".json" and path.is_file():
        return _scalars(flatten(json.loads(path.read_text())))
    return {}


def figure_rows(outputs: dict[str, str]) -> list[dict]:
    """Table rows {output, figure, value} over every output's figures."""
    return [{"output": path, "figure": name, "value": value}
            for path in outputs.values() for name, value in output_figures(Path(path)).items()]


def _config_block(configs: dict) -> str:
    dumped = {name: config.model_dump(mode="json") for name, config in configs.items()}
    return "```json\n" + json.dumps(dumped, indent=2) + "\n```"


def _paths(paths: list[str]) -> str:
    return "\n".join(f"- `{Path(p).resolve()}`" for p in paths) or "- none"


def stage_report(stage: Stage, configs: dict, outputs: dict[str, str]) -> str:
    """Markdown: the params sections the stage read, its outputs, its plots."""
    plots = [p for p in outputs.values() if p.endswith(".png")]
    return "\n\n".join([f"# Stage `{stage.name}`", "## Params", _config_block(configs),
                        "## Outputs", _paths([p for p in outputs.values() if p not in plots]),
                        "## Plots", _paths(plots)])


def compress_report(params: Params, metrics: dict) -> str:
    """Markdown: the metrics, every params section, and the plots the chain wrote."""
    rows = "\n".join(f"| `{key}` | {value} |" for key, value in _scalars(flatten(metrics)).items())
    configs = {name: getattr(params, name) for name in type(params).model_fields}
    plots = [str(p) for p in (SPARSITY_PNG,) if p.is_file()]
    return "\n\n".join(["# compress run", "## Metrics", "| metric | value |\n|---|---|\n" + rows,
                        "## Params", _config_block(configs), "## Plots", _paths(plots)])


def _key(name: str) -> str:
    return name.replace("_", "-")   # Prefect keys: lowercase letters, digits and dashes


def publish_stage(stage: Stage, configs: dict, outputs: dict[str, str]) -> None:
    rows = figure_rows(outputs)
    if rows:
        create_table_artifact(rows, key=f"{_key(stage.name)}-figures", description=f"Figures of stage {stage.name}")
    create_markdown_artifact(stage_report(stage, configs, outputs), key=f"{_key(stage.name)}-report",
                             description=f"Stage {stage.name}: params, outputs, plots")


def publish_compress(params: Params, metrics: dict) -> None:
    create_table_artifact([{"metric": k, "value": v} for k, v in _scalars(flatten(metrics)).items()],
                          key="compress-metrics", description="metrics.json of this run")
    create_markdown_artifact(compress_report(params, metrics), key="compress-report",
                             description="compress run: metrics, params, plots")
