"""The sequential pruning engine on tiny random models of seven decoder families, with no
per-family code: layer discovery, Linear/Conv1D weights, and the replay of each layer's
recorded call (masks, rotary embeddings, per-layer-type masks in Gemma 3)."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from tasks.config import PruneConfig, SequentialConfig
from tasks.engine.layers import (capture_inputs, find_decoder_layers, is_prunable, layer_output, move_kwargs,
                          weight_view)
from tasks.pruning.pruners import prune_model

VOCAB, NSAMPLES, SEQLEN = 128, 4, 24
LOG = lambda message: None  # noqa: E731
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False)

# family → (model class, config class, config kwargs)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", COMMON),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", COMMON),
    "mistral": ("MistralForCausalLM", "MistralConfig", {**COMMON, "sliding_window": 8}),
    # one sliding-window layer (window 8 < SEQLEN) and one full-attention layer, each with
    # its own mask and its own rotary embeddings
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig",
               {**COMMON, "head_dim": 16, "sliding_window": 8,
                "layer_types": ["sliding_attention", "full_attention"]}),
    # fused qkv_proj and gate_up_proj
    "phi3": ("Phi3ForCausalLM", "Phi3Config", {**COMMON, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
    # model.decoder.layers, learned positions
    "opt": ("OPTForCausalLM", "OPTConfig",
            dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
                 max_position_embeddings=64, word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2,
                 eos_token_id=2)),
    # transformer.h, Conv1D with (in, out) weights, attention mask passed positionally
    "gpt2": ("GPT2LMHeadModel", "GPT2Config",
             dict(n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB,
                 bos_token_id=1, eos_token_id=2)),
}


def tiny_model(family: str, attn: str = "sdpa") -> nn.Module:
    model_cls, config_cls, kwargs = FAMILIES[family]
    config = getattr(transformers, config_cls)(**kwargs)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(config).float().eval()


def calibration_tokens(seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randint(3, VOCAB, (NSAMPLES, SEQLEN))


def decoder_modules(model: nn.Module) -> dict[str, nn.Module]:
    prefix, layers = find_decoder_layers(model)
    found = {f"{prefix}.{i}.{name}": m for i, layer in enumerate(layers)
             for name, m in layer.named_modules() if is_prunable(m)}
    assert found
    return found


@torch.no_grad()
def reference_layer_outputs(model: nn.Module, tokens: torch.Tensor) -> list[list[torch.Tensor]]:
    """[sample][layer] → the decoder layer's output in the model's own forward pass."""
    _, layers = find_decoder_layers(model)
    outputs: list[list[torch.Tensor]] = []
    handles = [layer.register_forward_hook(lambda m, a, out: outputs[-1].append(layer_output(out).clone()))
               for layer in layers]
    try:
        for row in tokens:
            outputs.append([])
            model(row.unsqueeze(0), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    assert all(len(per_sample) == len(layers) for per_sample in outputs)
    return outputs


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, what
    err = float((actual - expected).norm() / expected.norm())
    assert err < 1e-5, f"{what}: relative error {err:.2e}"


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> str:
    return request.param


def test_discovers_layers_and_modules(family):
    model = tiny_model(family)
    prefix, layers = find_decoder_layers(model)
    assert len(layers) == 2
    assert prefix in {"model.layers", "model.decoder.layers", "transformer.h"}
    for module in decoder_modules(model).values():
        out_features = module.out_features if isinstance(module, nn.Linear) else module.nf
        assert weight_view(module).shape[0] == out_features


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_replay_reproduces_the_model(family, attn):
    """capture_inputs + the recorded kwargs, replayed layer by layer, give the model's own
    layer outputs (wrong or missing masks/rotary embeddings per layer would not)."""
    model = tiny_model(family, attn)
    tokens = calibration_tokens()
    expected = reference_layer_outputs(model, tokens)
    _, layers = find_decoder_layers(model)
    with torch.no_grad():
        inputs = capture_inputs(model, layers, tokens, store=torch.device("cpu"))
        assert len(inputs.hidden) == NSAMPLES and len(inputs.kwargs) == len(layers)
        for sample, hidden in enumerate(inputs.hidden):
            for index, layer in enumerate(layers):
                hidden = layer_output(layer(hidden, **move_kwargs(inputs.kwargs[index], "cpu")))
                assert_close(hidden, expected[sample][index], f"{family}/{attn} sample {sample} layer {index}")


def test_engine_at_zero_sparsity_reproduces_the_model(family):
    """prune_model's own propagation (the last pass through each layer) matches the model,
    with the samples in uneven batches (3 + 1) that are each replaced by their output."""
    model = tiny_model(family)
    tokens = calibration_tokens()
    expected = reference_layer_outputs(model, tokens)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, layers = find_decoder_layers(model)
    seen: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = [layer.register_forward_hook(lambda m, a, out, i=i: seen[i].append(layer_output(out).clone()))
               for i, layer in enumerate(layers)]
    try:
        prune_model(model, tokens, PruneConfig(method="wanda", sparsity=0.0), SequentialConfig(batch_size=3), LOG)
    finally:
        for handle in handles:
            handle.remove()
    for index in range(len(layers)):
        # the engine runs the samples through a layer in batches; the recorded kwargs broadcast
        last = torch.cat(seen[index])[-NSAMPLES:]
        for sample in range(NSAMPLES):
            assert_close(last[sample:sample + 1], expected[sample][index], f"{family} sample {sample} layer {index}")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def check_forward(model: nn.Module, tokens: torch.Tensor) -> None:
    with torch.no_grad():
        logits = model(tokens[:2], use_cache=False).logits
    assert logits.shape == (2, tokens.shape[1], VOCAB)
    assert torch.isfinite(logits).all()


def test_wanda_unstructured(family):
    model = tiny_model(family)
    tokens = calibration_tokens()
    prefix, _ = find_decoder_layers(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_model(model, tokens, PruneConfig(method="wanda", sparsity=0.5), SequentialConfig(), LOG)
    modules = decoder_modules(model)
    assert {r.name for r in report.records} == set(modules)
    for name, module in modules.items():
        W = weight_view(module)
        zeros = (W == 0).sum(dim=1)
        assert zeros.eq(int(W.shape[1] * 0.5)).all(), f"{family}: {name} zeros per row {zeros.unique().tolist()}"
    after = model.state_dict()
    outside = [k for k in before if not k.startswith(prefix + ".")]
    assert outside, "embeddings / lm_head / final norm expected outside the decoder layers"
    changed = [k for k in outside if not torch.equal(before[k], after[k])]
    assert not changed, f"{family}: changed outside the decoder layers: {changed}"
    check_forward(model, tokens)


def test_sparsegpt_2_4(family):
    model = tiny_model(family)
    tokens = calibration_tokens()
    prune_model(model, tokens, PruneConfig(method="sparsegpt", sparsity="2:4"), SequentialConfig(), LOG)
    for name, module in decoder_modules(model).items():
        W = weight_view(module)
        kept = (W != 0).reshape(W.shape[0], -1, 4).sum(-1)
        assert kept.eq(2).all(), f"{family}: {name} nonzeros per group {kept.unique().tolist()}"
    check_forward(model, tokens)


def test_admm_unstructured(family):
    model = tiny_model(family)
    tokens = calibration_tokens()
    prune_model(model, tokens, PruneConfig(method="admm", sparsity=0.5), SequentialConfig(), LOG)
    for name, module in decoder_modules(model).items():
        W = weight_view(module)
        zeros = (W == 0).sum(dim=1)
        assert zeros.eq(int(W.shape[1] * 0.5)).all(), f"{family}: {name} zeros per row {zeros.unique().tolist()}"
    check_forward(model, tokens)


class _Block(nn.Module):
    def __init__(self, experts: int):
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(experts))

    def forward(self, hidden_states, scale=None):
        return sum(e(hidden_states) for e in self.experts) * scale


class _Toy(nn.Module):
    """More experts per block than blocks; the blocks get their hidden states by keyword."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.blocks = nn.ModuleList(_Block(experts=4) for _ in range(2))

    def forward(self, ids, use_cache=False):
        h = self.embed(ids)
        for i, block in enumerate(self.blocks):
            h = block(hidden_states=h, scale=torch.tensor(0.5 + i))
        return h


def test_outer_list_and_keyword_hidden_states():
    torch.manual_seed(0)
    model = _Toy().eval()
    prefix, layers = find_decoder_layers(model)
    assert prefix == "blocks"
    tokens = torch.randint(0, 16, (3, 5))
    inputs = capture_inputs(model, layers, tokens, store=torch.device("cpu"))
    assert [sorted(kw) for kw in inputs.kwargs] == [["scale"], ["scale"]]
    with torch.no_grad():
        for row, hidden in zip(tokens, inputs.hidden):
            for index, layer in enumerate(layers):
                hidden = layer(hidden, **inputs.kwargs[index])
            assert_close(hidden, model(row.unsqueeze(0)), "toy")
