"""Zero-shot accuracy through lm-evaluation-harness (lm-eval 0.4.13), and its built-in offline task.

The model goes in as an object (what load_model_dir or load_packed returns) inside lm-eval's
HFLM, with its tokenizer: the packed model itself is scored, not a reloaded copy. Each task
reports lm-eval's `acc`:
    multiple choice:  argmax_c Σ log p(tokens of " c" | context) == gold
    loglikelihood:    every target token is the argmax of its next-token distribution
                      (is_greedy: LAMBADA's accuracy)
Encodings start with BOS exactly where the perplexity windows do (evaluate.add_bos).

`wiki_cloze`, a last-word cloze in the manner of LAMBADA (Paperno et al. 2016), built from the
held-out split of `evaluate.dataset` (the same text the perplexity reads). In document order,
each held-out document whose text ends in a full stop right after an alphabetic word gives
    context: the last CONTEXT_WORDS words before that word (whitespace collapsed)
    target:  " " + the word, full stop left out
when the context holds at least MIN_CONTEXT_WORDS words; the first `evaluate.cloze_items` are
scored. Its data goes to lm-eval as a JSON Lines file in a temporary folder.

Every task is loaded (its dataset fetched) once, before any model is scored: an unknown name,
a hub dataset out of reach or a task without `acc` is one line before any perplexity is spent.
No remote code runs: datasets 5 runs no dataset scripts at all, and HFLM gets
trust_remote_code=False.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tasks.errors import UserError
from tasks.evaluation.perplexity import bos_id
from tasks.text import corpus

CLOZE = "wiki_cloze"
CONTEXT_WORDS, MIN_CONTEXT_WORDS = 48, 16
ACC = "acc,none"   # lm-eval's result key: metric "acc", filter "none"


def cloze_items(docs: list[str], count: int) -> list[dict[str, str]]:
    """The first `count` wiki_cloze items of `docs` (see the module docstring): {context, target}."""
    items = []
    for doc in docs:
        text = " ".join(doc.split())
        if not text.endswith("."):
            continue
        before, _, word = text[:-1].rstrip().rpartition(" ")
        words = before.split()
        if word.isalpha() and len(words) >= MIN_CONTEXT_WORDS:
            items.append({"context": " ".join(words[-CONTEXT_WORDS:]), "target": f" {word}"})
            if len(items) == count:
                break
    return items


def cloze_task(data_file: Path, cache_dir: Path) -> dict:
    """wiki_cloze as an lm-eval task config: the local JSON Lines file, read into memory."""
    return {"task": CLOZE, "dataset_path": "json", "test_split": "test",
            "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir),
                               "keep_in_memory": True},
            "output_type": "loglikelihood", "doc_to_text": "context", "doc_to_target": "target",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1}}


@dataclass(frozen=True)
class Tasks:
    """evaluate.tasks, loaded: each requested name's top-level lm-eval objects (a Task, a Group,
    or a tag's Tasks) and the leaf tasks it scores."""

    manager: object                                   # lm_eval.tasks.TaskManager
    top: dict[str, list] = field(default_factory=dict)
    leaves: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scores:
    accuracy: dict[str, float]      # requested task (or a tag's member) → acc
    items: dict[str, int]           # the same keys → documents scored
    samples: dict[str, list[dict]]  # leaf task → lm-eval's per-document records


def quiet_harness() -> None:
    """lm-eval logs every step at INFO: the stage shows its warnings only."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)


@contextlib.contextmanager
def _no_dataset_bars():
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _manager(names: tuple[str, ...], include_path: Path | None):
    """lm-eval's task index: the user's folder only when it names every task (indexing lm-eval's
    ~15k built-in entries takes seconds), else the built-ins with the user's folder over them."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=False)
    if all(name == CLOZE or name in local.all_tasks for name in names):
        return local
    return TaskManager(include_path=str(include_path) if include_path else None)


def _unknown(name: str, manager, include_path: str | None) -> UserError:
    near = difflib.get_close_matches(name, [CLOZE, *manager.all_tasks], n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    where = f", a task of evaluate.include_path ({include_path})" if include_path else ""
    return UserError(f"evaluate.tasks: unknown task {name!r}: not {CLOZE} (built in){where} or a task, group or tag "
                     f"of lm-eval's registry (`lm-eval ls tasks` lists them){hint}")


def _load_one(manager, name: str, cfg, tmp: Path) -> dict:
    if name == CLOZE:
        items = cloze_items(corpus.load_split(cfg.dataset, "test"), cfg.cloze_items)
        if not items:
            raise UserError(f"evaluate.tasks: {CLOZE} finds no item in the held-out split of evaluate.dataset = "
                            f"{cfg.dataset!r}: no document ends in a full stop after a word with at least "
                            f"{MIN_CONTEXT_WORDS} words before it")
        data = tmp / f"{CLOZE}.jsonl"
        data.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
        spec = cloze_task(data, tmp / "cache")
    elif name in manager.all_tasks:
        spec = name
    else:
        raise _unknown(name, manager, cfg.include_path)
    try:
        return manager.load([spec])
    except ConnectionError as err:   # datasets' "Couldn't reach '<dataset>' on the Hub (…)"
        raise UserError(f"evaluate.tasks: {name!r} needs its dataset from the Hugging Face hub, and the hub is "
                        f"unreachable (no network, or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set) with no local copy "
                        f"cached: {err}") from None
    except Exception as err:  # a task's YAML, dataset or code: lm-eval and datasets raise many types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"evaluate.tasks: cannot load {name!r}: {type(err).__name__}: {reason}") from err


def load_tasks(cfg) -> Tasks | None:
    """The tasks of the `evaluate` section (cfg: EvaluateConfig), loaded and checked; None when
    evaluate.tasks is empty. Raises UserError naming the task at fault."""
    if not cfg.tasks:
        return None
    quiet_harness()
    include = Path(cfg.include_path) if cfg.include_path else None
    if include and not include.is_dir():
        raise UserError(f"evaluate.include_path = {cfg.include_path!r}: not a folder (of lm-eval task YAMLs)")
    manager = _manager(cfg.tasks, include)
    top, leaves = {}, {}
    with tempfile.TemporaryDirectory(prefix="prunepipe-tasks-") as tmp, _no_dataset_bars():
        for name in cfg.tasks:
            loaded = _load_one(manager, name, cfg, Path(tmp))
            groups = loaded.get("groups", {})
            top[name] = [groups[name]] if name in groups else list(loaded["tasks"].values())
            leaves[name] = list(loaded["tasks"])
            if lacking := [leaf for leaf, task in loaded["tasks"].items() if "acc" not in task.aggregation()]:
                metrics = ", ".join(loaded["tasks"][lacking[0]].aggregation()) or "none"
                raise UserError(f"evaluate.tasks: {name!r} reports no acc ({lacking[0]}'s metrics: {metrics}); "
                                "zero-shot accuracy takes multiple-choice and loglikelihood tasks")
    return Tasks(manager, top, leaves)


def _harness_lm(model: nn.Module, tokenizer, batch_size: int, bos: int | None):
    from lm_eval.models.huggingface import HFLM

    class HarnessLM(HFLM):
        """HFLM that encodes as the perplexity does: no special tokens, BOS first where wanted."""

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None,
                       **kwargs) -> list[int]:
            ids = self.tokenizer.encode(string, add_special_tokens=False)
            if bos is not None and add_special_tokens is not False:
                ids = [bos, *ids]
            return ids[-left_truncate_len:] if left_truncate_len else ids

    # HFLM warns twice that a model object (not a name) came in: that is the point here.
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        return HarnessLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, trust_remote_code=False)
    finally:
        hf_logger.setLevel(level)


def _row(results: dict, key: str) -> dict:
    return results.get("results", {}).get(key) or results.get("groups", {}).get(key) or {}


def score(tasks: Tasks, model: nn.Module, tokenizer, cfg) -> Scores:
    """Zero-shot `acc` of `model` on the loaded tasks (cfg: EvaluateConfig: batch_size, device, add_bos)."""
    from lm_eval.evaluator import simple_evaluate

    quiet_harness()
    model.to(torch.device(cfg.device)).eval()
    lm = _harness_lm(model, tokenizer, cfg.batch_size, bos_id(tokenizer, cfg.add_bos))
    # No seeds: scoring draws nothing at random, and the global RNGs are not lm-eval's to reset.
    results = simple_evaluate(lm, tasks=[obj for objs in tasks.top.values() for obj in objs],
                              task_manager=tasks.manager, bootstrap_iters=0, log_samples=True,
                              random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    counts = {leaf: n["effective"] for leaf, n in results["n-samples"].items()}
    accuracy, items = {}, {}
    for name, leaves in tasks.leaves.items():
        if ACC in _row(results, name):
            accuracy[name], items[name] = float(_row(results, name)[ACC]), sum(counts[leaf] for leaf in leaves)
        else:   # a tag, or a group without an aggregate: its members, each on its own
            for leaf in leaves:
                accuracy[leaf], items[leaf] = float(_row(results, leaf)[ACC]), counts[leaf]
    return Scores(accuracy, items, results.get("samples", {}))
