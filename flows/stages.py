"""One Prefect flow per pipeline stage, each derived from the stage graph (tasks/stages/graph.py)
and running the stage's library function in one Prefect task.

Under `dvc repro` DVC owns caching between stages, so the stage flows run their task with
caching off. The `compress` flow and the sweep run the same task under a cache key
(graph.stage_key: config sections, input artifact digests, the stage's declared code);
a hit stands only while every output exists, written for that key, with intact files.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from tqdm.auto import tqdm

from flows.artifacts import publish_stage
from tasks.config import Params
from tasks.stages.common import StageContext
from tasks.stages.graph import STAGES, Stage, outputs_match, stage_key


def _progress(total: int, label: str):
    bar = tqdm(total=total, desc=label, unit="step", dynamic_ncols=True)
    return lambda: (bar.update(), bar.close() if bar.n >= total else None)


def _log(message: str) -> None:
    get_run_logger().info(message)


@task(cache_policy=NO_CACHE, persist_result=False)
def stage_task(stage: Stage, configs: dict, inputs: dict[str, str], outputs: dict[str, str], key: str) -> dict:
    """Run the stage's function: configs positionally, artifacts as keywords; returns the outputs."""
    paths = {name: Path(path) for name, path in {**inputs, **outputs}.items()}
    stage.load()(*configs.values(), **paths, ctx=StageContext(_log, _progress, key))
    return outputs


def run_stage(stage: Stage, params: Params, *, inputs: dict | None = None, outputs: dict | None = None,
              cache: bool = False) -> dict[str, str]:
    """One run of `stage` on `params`' sections; `inputs`/`outputs` replace declared paths
    (the sweep's points write under data/sweep/). Returns the output paths by name."""
    inputs = {name: str(path) for name, path in {**stage.inputs, **(inputs or {})}.items()}
    outputs = {name: str(path) for name, path in
               {**{name: out.path for name, out in stage.outputs.items()}, **(outputs or {})}.items()}
    configs = {name: getattr(params, name) for name in stage.params}
    key = stage_key(stage, configs, {name: Path(path) for name, path in inputs.items()})
    run = stage_task.with_options(name=stage.name)
    if cache:
        # Prefect has no "the cached result's files are gone" test: refresh the entry whenever
        # an output is missing, altered or made for another key.
        policy = CacheKeyFnPolicy(cache_key_fn=lambda context, parameters: key)
        run = run.with_options(cache_policy=policy, persist_result=True,
                               refresh_cache=not outputs_match([Path(p) for p in outputs.values()], key))
    return run(stage, configs, inputs, outputs, key)


def _stage_flow(stage: Stage):
    @flow(name=stage.name.replace("_", "-"))
    def stage_flow(params: Params) -> dict[str, str]:
        outputs = run_stage(stage, params)
        publish_stage(stage, {name: getattr(params, name) for name in stage.params}, outputs)
        return outputs

    return stage_flow


STAGE_FLOWS = {name: _stage_flow(stage) for name, stage in STAGES.items()}
