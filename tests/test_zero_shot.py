"""Zero-shot accuracy through lm-evaluation-harness, offline: a multiple-choice task the test
writes itself (loaded through evaluate.include_path) and the built-in wiki_cloze, each checked
against a float64 reference computed here; the packed model scored through load_packed; the
one-line errors for an unknown task and a hub task while offline."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from torch.nn import functional as F

from conftest import WORDS, make_tokenizer, tiny_llama
from tasks.config import (CalibrationConfig, EvaluateConfig, ModelConfig, PackConfig, PruneConfig, QuantizeConfig,
                          SequentialConfig)
from tasks.errors import UserError
from tasks.evaluation import zero_shot
from tasks.evaluation.perplexity import read_accuracy, read_perplexity
from tasks.stages.common import StageContext
from tasks.text import corpus

CTX = StageContext(lambda line: None)


@pytest.fixture(scope="module")
def tok(corpus_file):
    """A vocabulary with every word of the corpus as one token: short contexts, one-token targets."""
    return make_tokenizer(corpus_file, vocab_size=512)


@pytest.fixture(scope="module")
def trained(tok, corpus_file):
    """A tiny Llama, trained a little on the training split: right on some items, wrong on others."""
    model = tiny_llama(len(tok))
    stream = corpus.tokenize_documents(corpus.load_split(str(corpus_file), "train"), tok)
    windows = corpus.windows(stream, 64, tok.bos_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        batch = windows[torch.randint(len(windows), (8,), generator=generator)]
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def continuation_logprobs(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """float64: Σ log p(continuation tokens | BOS + context), and whether each is the argmax.
    The continuation's tokens are those that encoding context + continuation adds to the context's."""
    bos = [tokenizer.bos_token_id]
    ctx = bos + tokenizer.encode(context, add_special_tokens=False)
    whole = bos + tokenizer.encode(context + continuation, add_special_tokens=False)
    assert whole[:len(ctx)] == ctx and len(whole) > len(ctx)
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]]), use_cache=False).logits[0].double()
    logprobs = F.log_softmax(logits, dim=-1)[len(ctx) - 1:]                 # (continuation, vocab)
    target = torch.tensor(whole[len(ctx):])
    return float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def write_mc_task(folder, items: list[dict]) -> None:
    data = folder / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {folder / 'cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: question\n"
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")


def mc_items(corpus_file) -> list[dict]:
    """Which word follows a held-out passage's opening: the true one among four."""
    rng = random.Random(0)
    items = []
    for doc in corpus.load_split(str(corpus_file), "test"):   # 12 documents
        words = doc.rstrip(".").split()
        cut = rng.randrange(8, 24)   # well inside the tiny model's 256 positions
        true = words[cut]
        choices = [true, *rng.sample(sorted(set(WORDS) - {true}), 3)]
        rng.shuffle(choices)
        items.append({"question": " ".join(words[:cut]), "choices": choices, "gold": choices.index(true)})
    return items


def test_cloze_items_come_from_passages_ending_in_a_word():
    filler = " ".join(f"w{i}" for i in range(60))
    docs = [f"{filler} about the final answer.",          # item: the last 48 words, then " answer"
            f"{filler} in 1990.",                         # a number: no
            "Too short a context here to count as a passage.",
            f"{filler} ends with a quote\".",             # no full stop right after the word
            f"{filler}\n\n  spread   over lines   and finish."]
    items = zero_shot.cloze_items(docs, 10)
    assert [item["target"] for item in items] == [" answer", " finish"]
    context = items[0]["context"].split()
    assert len(context) == zero_shot.CONTEXT_WORDS and context[-3:] == ["about", "the", "final"]
    assert items[1]["context"].endswith("w59 spread over lines and") and "\n" not in items[1]["context"]
    assert zero_shot.cloze_items(docs, 1) == items[:1]


def test_multiple_choice_accuracy_is_the_float64_argmax(tmp_path, trained, tok, corpus_file):
    items = mc_items(corpus_file)
    write_mc_task(tmp_path, items)
    cfg = EvaluateConfig(tasks=("tiny_mc",), include_path=str(tmp_path), batch_size=3)
    scores = zero_shot.score(zero_shot.load_tasks(cfg), trained, tok, cfg)

    reference = copy.deepcopy(trained).double()
    lls = [[continuation_logprobs(reference, tok, item["question"], f" {choice}")[0]
            for choice in item["choices"]] for item in items]
    picks = [max(range(len(row)), key=row.__getitem__) for row in lls]
    margins = [sorted(row)[-1] - sorted(row)[-2] for row in lls]
    assert min(margins) > 1e-3, "a near tie would make float32 and float64 disagree by chance"
    expected = sum(pick == item["gold"] for pick, item in zip(picks, items)) / len(items)
    assert 0 < expected < 1, "the check needs both right and wrong answers"
    assert scores.accuracy == {"tiny_mc": expected} and scores.items == {"tiny_mc": len(items)}
    samples = sorted(scores.samples["tiny_mc"], key=lambda sample: sample["doc_id"])
    harness = [[ll for ll, _ in sample["filtered_resps"]] for sample in samples]
    assert [max(range(len(row)), key=row.__getitem__) for row in harness] == picks
    assert sum(harness, []) == pytest.approx(sum(lls, []), rel=1e-4)


def test_wiki_cloze_accuracy_is_the_greedy_match(trained, tok, corpus_file):
    cfg = EvaluateConfig(dataset=str(corpus_file), tasks=("wiki_cloze",), cloze_items=8)
    scores = zero_shot.score(zero_shot.load_tasks(cfg), trained, tok, cfg)

    items = zero_shot.cloze_items(corpus.load_split(str(corpus_file), "test"), 8)
    assert len(items) == 8
    reference = copy.deepcopy(trained).double()
    greedy = [continuation_logprobs(reference, tok, item["context"], item["target"])[1] for item in items]
    assert 0 < sum(greedy) < len(items), "the check needs both hits and misses"
    assert scores.accuracy == {"wiki_cloze": sum(greedy) / len(items)} and scores.items == {"wiki_cloze": 8}
    samples = sorted(scores.samples["wiki_cloze"], key=lambda sample: sample["doc_id"])
    assert [sample["arguments"][0] for sample in samples] == [(i["context"], i["target"]) for i in items]
    assert [sample["filtered_resps"][0][1] for sample in samples] == greedy


def test_packed_model_scores_as_the_weights_it_holds(tmp_path, trained, tok, corpus_file):
    """bitmask float16 is lossless for float16 weights: load_packed's model (PackedLinear modules)
    gets the accuracy, and the very log-likelihoods, of the quantized model with its decoder
    Linears rounded to float16."""
    from tasks.io.model import load_model_dir
    from tasks.stages.calibrate import calibrate
    from tasks.stages.evaluate import measure_artifact
    from tasks.stages.model import model as build_model
    from tasks.stages.pack import pack
    from tasks.stages.prune import prune
    from tasks.stages.quantize import quantize

    folder = tmp_path / "trained"
    trained.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    data, seq, prune_cfg = tmp_path / "data", SequentialConfig(), PruneConfig(method="wanda", sparsity=0.5)
    model = build_model(ModelConfig(source=str(folder)), out=data / "model", ctx=CTX)
    calib = calibrate(CalibrationConfig(dataset=str(corpus_file), nsamples=4, seqlen=32), model=model,
                      out=data / "calibration", ctx=CTX)
    pruned = prune(prune_cfg, seq, model=model, calibration=calib, out=data / "pruned",
                   run_stats=tmp_path / "prune_run.json", ctx=CTX)
    quantized = quantize(QuantizeConfig(method="none"), seq, prune_cfg, model=model, pruned=pruned,
                         calibration=calib, out=data / "quantized", run_stats=tmp_path / "quantize_run.json", ctx=CTX)
    packed = pack(PackConfig(format="bitmask", dtype="float16"), quantized=quantized, out=data / "packed", ctx=CTX)

    items = mc_items(corpus_file)
    write_mc_task(tmp_path, items)
    cfg = EvaluateConfig(dataset=str(corpus_file), seqlen=32, max_windows=2, tasks=("tiny_mc", "wiki_cloze"),
                         include_path=str(tmp_path), cloze_items=8)
    tasks = zero_shot.load_tasks(cfg)
    out = measure_artifact(cfg, packed, data / "eval_packed", CTX, tasks)
    assert read_perplexity(out) > 1 and set(read_accuracy(out)) == {"tiny_mc", "wiki_cloze"}

    rounded, _, _ = load_model_dir(quantized)
    for module in rounded.model.layers.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = module.weight.data.half().float()
    want = zero_shot.score(tasks, rounded, tok, cfg)
    assert read_accuracy(out) == want.accuracy
    from prunepipe import load_packed

    got = zero_shot.score(tasks, load_packed(packed, decode="load"), tok, cfg)
    for task in ("tiny_mc", "wiki_cloze"):
        resps = [[s["filtered_resps"] for s in sorted(scores.samples[task], key=lambda s: s["doc_id"])]
                 for scores in (got, want)]
        assert resps[0] == resps[1], task
    unrounded = zero_shot.score(tasks, load_model_dir(quantized)[0], tok, cfg)
    assert unrounded.samples["tiny_mc"] != want.samples["tiny_mc"], "float16 rounding must show in the sums"


def test_unknown_task_is_one_line_naming_it():
    with pytest.raises(UserError) as err:
        zero_shot.load_tasks(EvaluateConfig(tasks=("wiki_cloze", "arc_easyy")))
    message = str(err.value)
    assert "\n" not in message and message.startswith("evaluate.tasks: unknown task 'arc_easyy': not wiki_cloze")
    assert "did you mean arc_easy" in message


def test_hub_task_offline_is_one_line_before_any_perplexity(tmp_path, monkeypatch, llama_folder):
    import datasets
    import huggingface_hub.constants

    from tasks.stages.evaluate_dense import evaluate_dense
    from tasks.stages.model import model as build_model

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)   # read once, when datasets is imported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")   # nothing cached here
    model = build_model(ModelConfig(source=str(llama_folder)), out=tmp_path / "model", ctx=CTX)
    with pytest.raises(UserError) as err:
        evaluate_dense(EvaluateConfig(seqlen=32, tasks=("arc_easy",)), model=model, out=tmp_path / "eval", ctx=CTX)
    message = str(err.value)
    assert "\n" not in message and err.value.__cause__ is None and err.value.__suppress_context__
    assert message.startswith("evaluate.tasks: 'arc_easy' needs its dataset from the Hugging Face hub, and the hub "
                              "is unreachable"), message
    assert not (tmp_path / "eval").exists()


def test_a_task_without_acc_is_refused(tmp_path):
    (tmp_path / "items.jsonl").write_text('{"q": "one two", "a": "three"}\n')
    (tmp_path / "gen.yaml").write_text(
        f"task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'items.jsonl'}\n"
        f"  cache_dir: {tmp_path / 'cache'}\ntest_split: test\noutput_type: generate_until\ndoc_to_text: q\n"
        "doc_to_target: a\nmetric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    with pytest.raises(UserError, match=r"^evaluate.tasks: 'tiny_gen' reports no acc \(tiny_gen's metrics: "
                                        r"exact_match\); zero-shot accuracy takes multiple-choice"):
        zero_shot.load_tasks(EvaluateConfig(tasks=("tiny_gen",), include_path=str(tmp_path)))


def test_no_tasks_scores_nothing_and_a_missing_folder_is_named(tmp_path):
    assert zero_shot.load_tasks(EvaluateConfig(tasks=())) is None
    with pytest.raises(UserError, match=r"^evaluate.include_path = '.*nowhere': not a folder"):
        zero_shot.load_tasks(EvaluateConfig(tasks=("mine",), include_path=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="entries must be distinct"):
        EvaluateConfig(tasks=("wiki_cloze", "wiki_cloze"))
