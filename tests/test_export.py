"""compressed-tensors `pack-quantized` export, read back by compressed-tensors' own
dequantizer and compared bit for bit with our dequantized weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tasks.serving.compressed_tensors import export_pack_quantized, pack_int32
from tasks.pruning.patterns import NM, mask_from_scores
from tasks.quantization.grid import QuantSpec, rtn

pytest.importorskip("compressed_tensors", reason="pip install compressed-tensors==0.20.0 (with loguru)")

SPECS = [QuantSpec(4, 128, True), QuantSpec(4, 64, False), QuantSpec(8, -1, True), QuantSpec(8, 32, False),
         QuantSpec(3, 32, False), QuantSpec(2, -1, False)]
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "torch_dtype": "float16"}


def quantized_layers():
    """One pruned (2:4) layer per spec, N = 44 so that N·b is not a multiple of 32."""
    layers, masks = {}, {}
    for i, spec in enumerate(SPECS):
        W = torch.randn(44, 256, generator=torch.Generator().manual_seed(i))
        masks[f"model.layers.{i}.mlp.up_proj"] = mask = mask_from_scores(W.abs(), NM(2, 4))
        layers[f"model.layers.{i}.mlp.up_proj"] = rtn(W, spec, mask)
    return layers, masks


def dequantize_with_compressed_tensors(folder) -> dict[str, torch.Tensor]:
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors |= load_file(path)
    # validate = dequantize + fail on any qparam its config did not account for
    return CompressedTensorsDequantizer(folder, dtype=torch.float16).validate(tensors)


def test_pack_int32_matches_compressed_tensors():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    for bits in (2, 3, 4, 8):
        for cols in (1, 31, 33, 100):
            codes = torch.randint(0, 1 << bits, (5, cols), dtype=torch.uint8)
            signed = (codes.int() - (1 << (bits - 1))).to(torch.int8)
            assert torch.equal(pack_int32(codes, bits), pack_to_int32(signed, bits))


@pytest.mark.parametrize("max_shard_bytes", [1 << 30, 40_000])
def test_compressed_tensors_dequantizes_our_export_exactly(tmp_path, max_shard_bytes):
    layers, masks = quantized_layers()
    dense = {"model.embed_tokens.weight": torch.randn(32, 256).half(), "model.norm.weight": torch.ones(256).half(),
             "lm_head.weight": torch.randn(32, 256).half(), "model.layers.0.mlp.up_proj.bias": torch.zeros(44).half()}
    out = export_pack_quantized(tmp_path / "ckpt", CONFIG, layers, dense, max_shard_bytes=max_shard_bytes)

    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert len(qc["config_groups"]) == len(SPECS) and config["hidden_size"] == 256
    assert (out / "model.safetensors.index.json").exists() == (max_shard_bytes < 1 << 20)

    restored = dequantize_with_compressed_tensors(out)
    for name, q in layers.items():
        got = restored[f"{name}.weight"]
        assert torch.equal(got, q.dequantize(torch.float16)), name
        assert (got[masks[name]] == 0).all()
    for name, tensor in dense.items():
        assert torch.equal(restored[name], tensor)


def test_symmetric_layers_carry_no_zero_point_and_groups_must_divide_k(tmp_path):
    layers, _ = quantized_layers()
    out = export_pack_quantized(tmp_path / "ckpt", CONFIG, layers, {})
    stored = load_file(out / "model.safetensors")
    for name, q in layers.items():
        assert (f"{name}.weight_zero_point" in stored) == (not q.spec.symmetric)
        assert stored[f"{name}.weight_packed"].dtype == torch.int32
        assert stored[f"{name}.weight_shape"].tolist() == [44, 256]
    bad = {"x": rtn(torch.randn(4, 96), QuantSpec(4, 64, False))}
    with pytest.raises(ValueError, match="x: compressed-tensors needs group_size 64 to divide K=96"):
        export_pack_quantized(tmp_path / "bad", CONFIG, bad, {})
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("spec", [QuantSpec(4, 32, True), QuantSpec(4, 32, False), QuantSpec(8, -1, False)],
                         ids=str)
def test_plain_from_pretrained_loads_the_export_with_our_weights(tmp_path, spec):
    """No loading options: symmetric exports load compressed (decompressed at the first forward),
    asymmetric ones are dequantized at load, as their config asks; every pruned zero stays zero."""
    from conftest import tiny_llama
    from transformers import AutoModelForCausalLM

    model = tiny_llama().half()
    masks = {name: mask_from_scores(module.weight.abs().float(), NM(2, 4)) for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name != "lm_head"}
    layers = {name: rtn(model.get_submodule(name).weight, spec, mask) for name, mask in masks.items()}
    dense = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in layers}
    out = export_pack_quantized(tmp_path / "ckpt", model.config.to_dict(), layers, dense, structure="2:4")

    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc.get("dequantize", False) == (not spec.symmetric)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.arange(1, 17)[None]
    with torch.no_grad():
        logits = loaded(ids).logits     # the first forward decompresses a compressed load
        for name, q in layers.items():
            model.get_submodule(name).weight.copy_(q.dequantize(torch.float16))
        want = model(ids).logits
    for name, q in layers.items():
        got = loaded.get_submodule(name).weight
        assert torch.equal(got.half(), q.dequantize(torch.float16)), name
        assert (got[masks[name]] == 0).all(), name
    assert torch.equal(loaded.lm_head.weight.half(), model.lm_head.weight)
    assert torch.allclose(logits.float(), want.float(), rtol=0, atol=2e-3 * want.abs().max().item())


def test_the_export_declares_its_sparsity(tmp_path):
    layers, masks = quantized_layers()
    out = export_pack_quantized(tmp_path / "ckpt", CONFIG, layers, {}, structure="2:4")
    sparsity = json.loads((out / "config.json").read_text())["quantization_config"]["sparsity_config"]
    zeros = sum(int((q.dequantize() == 0).sum()) for q in layers.values())
    assert zeros >= sum(int(m.sum()) for m in masks.values())   # the pruned half, and any code that is z
    assert sparsity == {"format": "dense", "targets": sorted(layers), "ignore": [],
                        "global_sparsity": zeros / (len(layers) * 44 * 256), "sparsity_structure": "2:4"}

    from compressed_tensors.config import SparsityCompressionConfig
    assert SparsityCompressionConfig.model_validate(sparsity).sparsity_structure == "2:4"   # it parses


@pytest.mark.parametrize("source", ["packed", "quantized"])
def test_prunepipe_export_writes_the_quantized_weights(packed_workspace, tmp_path, monkeypatch, capsys, source):
    from flows.cli import main
    from tasks.io.model import load_model_dir

    workspace = packed_workspace
    monkeypatch.chdir(workspace)
    assert main(["export", "--out", str(tmp_path / "serve"), "--from", source]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "serve")
    fake, _, _ = load_model_dir(workspace / "data" / "quantized")
    restored = dequantize_with_compressed_tensors(tmp_path / "serve")
    linears = [name for name in restored if ".layers." in name and name.endswith("proj.weight")]
    assert len(linears) == 2 * 7
    for name in linears:   # the fake-quantized float32 weights are exact in float16
        assert torch.equal(restored[name], fake.state_dict()[name].half()), name
    assert (tmp_path / "serve" / "tokenizer.json").is_file()


def test_export_perplexity_equals_the_quantized_model(packed_workspace, tokenizer, corpus_file, tmp_path,
                                                      monkeypatch):
    """The default pipeline's case (Wanda 50%, GPTQ 4-bit asymmetric): `prunepipe export`, then a
    plain from_pretrained, against data/quantized on held-out windows; the export stores the
    embeddings, norms and lm_head in float16, the only difference."""
    from flows.cli import main
    from tasks.evaluation.perplexity import perplexity
    from tasks.io.model import load_model_dir
    from tasks.text import corpus
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(packed_workspace)
    assert main(["export", "--out", str(tmp_path / "serve")]) == 0
    sparsity = json.loads((tmp_path / "serve" / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert sparsity["sparsity_structure"] == "unstructured" and sparsity["global_sparsity"] >= 0.5

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "serve", dtype=torch.float32)
    quantized, _, _ = load_model_dir(packed_workspace / "data" / "quantized")
    stream = corpus.tokenize_documents(corpus.load_split(str(corpus_file), "test"), tokenizer)
    windows = corpus.windows(stream, 32, tokenizer.bos_token_id)
    assert len(windows) >= 8
    want = perplexity(quantized, windows, 4, torch.device("cpu"))
    got = perplexity(exported, windows, 4, torch.device("cpu"))
    print(f"export {got:.6f} quantized {want:.6f} relative {got / want - 1:+.2e}")
    assert abs(got / want - 1) <= 1e-3, (got, want)


def test_export_without_the_artifact_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["export", "--out", "serve", "--from", "quantized"]) == 2
    assert capsys.readouterr().err == ("prunepipe: error: data/quantized: no artifact there "
                                       "(run `dvc repro` or `prunepipe run` first)\n")
    assert not (tmp_path / "serve").exists()
