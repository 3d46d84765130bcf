"""Generation from a packed model: `load_packed(...).generate()` with the KV cache, the weights
decoded once at load or at every call, and `prunepipe generate` streaming the same text."""

from __future__ import annotations

import pytest
import torch

from prunepipe import load_packed
from tasks.serving.generate import generate
from tasks.serving.packed_model import PackedLinear, decode_at_load

GiB = 1 << 30


def greedy_without_cache(model, ids: torch.Tensor, steps: int, eos: int) -> list[int]:
    """Greedy continuation recomputing the whole sequence at every step (no KV cache)."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(ids, use_cache=False).logits[0, -1].argmax())
            out.append(token)
            if token == eos:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


@pytest.mark.parametrize("decode", ["load", "call"])
def test_packed_generate_with_kv_cache_matches_the_quantized_model(packed_workspace, tokenizer, decode):
    from tasks.io.model import load_model_dir

    packed = load_packed(packed_workspace / "data" / "packed", decode=decode)
    linears = [m for m in packed.modules() if isinstance(m, PackedLinear)]
    assert len(linears) == 2 * 7 and all((m.decoded is not None) == (decode == "load") for m in linears)
    assert not any(name.endswith("decoded") for name in packed.state_dict())   # never saved

    fake, _, _ = load_model_dir(packed_workspace / "data" / "quantized")   # the same weights, dense
    ids = tokenizer("the model prunes weights", return_tensors="pt").input_ids
    want = greedy_without_cache(fake, ids, 12, tokenizer.eos_token_id)
    pieces = []
    stats = generate(packed, tokenizer, "the model prunes weights", 12, emit=pieces.append)
    assert len(want) == 12 and stats.prompt_tokens == ids.shape[1] and stats.new_tokens == 12
    assert "".join(pieces) == tokenizer.decode(want, skip_special_tokens=True) + "\n"
    assert len(pieces) > 2   # streamed as it goes, not once at the end


def test_decode_at_load_follows_device_and_memory():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert decode_at_load("auto", cpu, 1 * GiB, 2 * GiB)
    assert not decode_at_load("auto", cpu, 1 * GiB + 1, 2 * GiB)      # over half the free memory
    assert not decode_at_load("auto", cuda, 1, 80 * GiB)                # the kernels read the packed bytes
    assert decode_at_load("load", cuda, 1, 0) and not decode_at_load("call", cpu, 1, 80 * GiB)
    with pytest.raises(ValueError, match="decode must be one of"):
        decode_at_load("once", cpu, 1, 1)


def test_prunepipe_generate_streams_the_text(packed_workspace, tokenizer, capsys):
    from flows.cli import main

    packed = packed_workspace / "data" / "packed"
    ids = tokenizer("kernels read", return_tensors="pt").input_ids
    want = greedy_without_cache(load_packed(packed), ids, 6, tokenizer.eos_token_id)
    assert len(want) == 6
    assert main(["generate", "kernels read", "--packed", str(packed), "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    assert out == tokenizer.decode(want, skip_special_tokens=True) + "\n"
    assert err.startswith(f"{len(want)} tokens in ") and "tokens/s, cpu, prompt" in err


@pytest.mark.parametrize("argv,line", [
    (["--packed", "nowhere"], "nowhere: no packed model there (run `dvc repro` or `prunepipe run` first, "
                              "or pass --packed DIR)"),
    (["--max-new-tokens", "0"], "--max-new-tokens = 0: must be at least 1"),
])
def test_prunepipe_generate_bad_input_exits_2(tmp_path, monkeypatch, capsys, argv, line):
    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["generate", "hello", *argv]) == 2
    assert capsys.readouterr().err == f"prunepipe: error: {line}\n"
