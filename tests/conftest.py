"""Offline fixtures: a tiny corpus written by the test, a tokenizer trained on it, and tiny
random decoder models built from configs (no hub, no network); a git + DVC workspace helper."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

if not torch.cuda.is_available():
    # Triton kernels run in its interpreter on the CPU. Set before anything imports triton:
    # the mode is fixed when a @triton.jit function is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

WORDS = ("the model prunes weights of every layer while calibration text flows through "
         "sparse matrices keep half their values and quantized codes shrink memory bandwidth "
         "kernels read fewer bytes so decoding runs faster on graphics processors").split()


def make_corpus(path: Path, documents: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        start = rng.randrange(len(WORDS))
        words = [WORDS[(start + i * rng.choice((1, 1, 2, 3))) % len(WORDS)] for i in range(rng.randint(40, 90))]
        docs.append({"text": " ".join(words).capitalize() + "."})
    path.write_text(json.dumps(docs))
    return path


def make_tokenizer(corpus: Path, vocab_size: int = 256):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [d["text"] for d in json.loads(corpus.read_text())]
    tok.train_from_iterator(texts, trainer)
    tok.decoder = decoders.ByteLevel()
    # Like Llama's tokenizer: every encoded sequence starts with BOS.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama(vocab_size: int = 256, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size,
                         max_position_embeddings=256, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "docs.json")


@pytest.fixture(scope="session")
def tokenizer(corpus_file):
    return make_tokenizer(corpus_file)


@pytest.fixture(scope="session")
def llama_folder(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama saved as a plain Hugging Face folder (a user's local model)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_llama(len(tokenizer))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def dvc_workspace(root: Path, items: tuple[str, ...], params: dict):
    """A git + DVC repository in `root` with copies of `items` of this repository and `params`
    as params.yaml, its own Prefect home, and this venv's `prunepipe` on the PATH.
    Returns run(*cmd) → stdout, failing the test (with the output) on a non-zero exit."""
    repo = Path(__file__).resolve().parents[1]
    for item in items:
        (root / item).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (repo / item).is_dir() else shutil.copy)(repo / item, root / item)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PREFECT_HOME": str(root / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    return run


@pytest.fixture(scope="session")
def packed_workspace(tmp_path_factory, llama_folder, corpus_file) -> Path:
    """A tiny Llama through the stages: data/quantized (Wanda 50%, GPTQ 4-bit asymmetric, groups
    of 32) and data/packed (bitmask-int4), under the returned root."""
    from tasks.config import CalibrationConfig, ModelConfig, PackConfig, PruneConfig, QuantizeConfig, SequentialConfig
    from tasks.stages.calibrate import calibrate
    from tasks.stages.common import StageContext
    from tasks.stages.model import model
    from tasks.stages.pack import pack
    from tasks.stages.prune import prune
    from tasks.stages.quantize import quantize

    root, ctx, seq = tmp_path_factory.mktemp("workspace"), StageContext(lambda line: None), SequentialConfig()
    data, prune_cfg = root / "data", PruneConfig(sparsity=0.5)
    model(ModelConfig(source=str(llama_folder)), out=data / "model", ctx=ctx)
    calibrate(CalibrationConfig(dataset=str(corpus_file), nsamples=4, seqlen=32), model=data / "model",
              out=data / "calibration", ctx=ctx)
    prune(prune_cfg, seq, model=data / "model", calibration=data / "calibration", out=data / "pruned",
          run_stats=root / "prune_run.json", ctx=ctx)
    quantize(QuantizeConfig(group_size=32), seq, prune_cfg, model=data / "model", pruned=data / "pruned",
             calibration=data / "calibration", out=data / "quantized", run_stats=root / "quantize_run.json", ctx=ctx)
    pack(PackConfig(format="bitmask-int4"), quantized=data / "quantized", out=data / "packed", ctx=ctx)
    return root
