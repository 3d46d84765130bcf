"""Stage `evaluate_dense`: perplexity and zero-shot accuracy of the unpruned model (data/model/)
→ data/eval_dense/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tasks.evaluation import zero_shot
from tasks.io.model import check_seqlen, load_model_dir
from tasks.evaluation.perplexity import measure
from tasks.stages.common import StageContext

if TYPE_CHECKING:
    from tasks.config import EvaluateConfig


def evaluate_dense(cfg: EvaluateConfig, *, model: Path, out: Path, ctx: StageContext) -> Path:
    check_seqlen(cfg.seqlen, model, "evaluate.seqlen")
    tasks = zero_shot.load_tasks(cfg)   # a bad task name or an unreachable dataset stops here
    loaded, tokenizer, _ = load_model_dir(model)
    scores = zero_shot.score(tasks, loaded, tokenizer, cfg) if tasks else None
    return measure(cfg, loaded, tokenizer, model, out, ctx, scores)
