"""kernels/dispatch.py: the decision cache, keys, rejection of wrong candidates, the CPU path
through PackedLinear; the CUDA measurements themselves run only where there is a GPU."""

from __future__ import annotations

import json
import logging
from importlib.metadata import version

import pytest
import torch
from torch.nn import functional as F

from kernels import dispatch
from kernels.dispatch import Dispatcher, PackedWeight, dispatch_key, kernels_digest, read_cache, write_cache
from tasks.formats.packing import pack_weight, unpack_weight
from tasks.serving.packed_model import PackedLinear, kernel_params
from tasks.pruning.patterns import NM, mask_from_scores
from tasks.quantization.grid import QuantSpec, rtn

CUDA = torch.cuda.is_available()


def packed_layer(fmt: str = "int4", n: int = 48, k: int = 128, device: str = "cpu", seed: int = 0) -> PackedLinear:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    nm = (2, 4) if fmt.startswith("nm") else None
    mask = mask_from_scores(w.abs(), NM(2, 4)) if nm else None
    quantized = rtn(w, QuantSpec(4 if "int4" in fmt else 8, 32, False), mask) if "int" in fmt else None
    layer, tensors = pack_weight(w, fmt, mask=mask, quantized=quantized, nm=nm)
    return PackedLinear(layer, tensors, torch.randn(n, generator=gen)).to(device)


def weight(fmt: str = "int4", **params) -> PackedWeight:
    module = packed_layer(fmt)
    return dispatch.PackedWeight(fmt, module.layer.shape, module.packed(), params or kernel_params(module.layer),
                                 module._unpack)


def test_cache_round_trip_is_atomic(tmp_path):
    path = tmp_path / "sub" / "dispatch.json"
    assert read_cache(path) == {}
    entries = {"int4[group_size=128] 4096x4096 bucket 1 float16 | GPU | torch x | triton y":
               {"path": "triton", "ms": {"torch": 0.2, "triton": 0.05}, "rejected": {}}}
    write_cache(path, entries)
    assert read_cache(path) == entries
    assert json.loads(path.read_text())["version"] == dispatch.CACHE_VERSION
    with pytest.raises(TypeError):  # a failed write leaves the old file whole and no temporary behind
        write_cache(path, {"bad": {"path": object()}})
    assert read_cache(path) == entries
    assert [p.name for p in path.parent.iterdir()] == ["dispatch.json"]


@pytest.mark.parametrize("text", ["{not json", json.dumps({"version": 99, "entries": {}}), "[]"])
def test_unreadable_cache_starts_afresh(tmp_path, caplog, text):
    path = tmp_path / "dispatch.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="prunepipe.dispatch"):
        assert read_cache(path) == {}
    assert "starting afresh" in caplog.text


def test_key_names_format_shape_bucket_dtype_device_and_versions():
    w = weight("int4")
    key = dispatch_key(w, 5, torch.float16, "NVIDIA H200")
    for part in ("int4[group_size=32]", "48x128", "bucket 8", "float16", "NVIDIA H200",
                 f"torch {torch.__version__}", f"triton {version('triton')}", f"kernels {kernels_digest()}"):
        assert part in key
    assert dispatch_key(w, 7, torch.float16, "NVIDIA H200") == key  # same bucket, same decision
    others = {dispatch_key(w, 9, torch.float16, "NVIDIA H200"), dispatch_key(w, 5, torch.bfloat16, "NVIDIA H200"),
              dispatch_key(w, 5, torch.float16, "NVIDIA H100"), dispatch_key(weight("int4", group_size=128), 5,
                                                                           torch.float16, "NVIDIA H200")}
    assert key not in others and len(others) == 4


def test_kernel_digest_changes_with_any_kernel_source(tmp_path):
    """A decision timed against other kernel code is not reused: every source byte and name counts."""
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not a source")
    first = kernels_digest(tmp_path)
    assert len(first) == 12 and int(first, 16) >= 0
    (tmp_path / "notes.txt").write_text("still not a source")
    assert kernels_digest.__wrapped__(tmp_path) == first
    (tmp_path / "a.py").write_text("x = 2\n")
    second = kernels_digest.__wrapped__(tmp_path)
    assert second != first
    (tmp_path / "a.py").rename(tmp_path / "b.py")
    assert kernels_digest.__wrapped__(tmp_path) not in (first, second)


def test_kernel_params_follow_the_launchers():
    assert kernel_params(packed_layer("int4").layer) == {"group_size": 32}
    assert kernel_params(packed_layer("nm").layer) == {"n": 2, "m": 4}
    assert kernel_params(packed_layer("nm-int4").layer) == {"group_size": 32, "n": 2, "m": 4}
    assert kernel_params(packed_layer("bitmask").layer) == {}


def test_incorrect_or_failing_candidate_is_never_chosen(tmp_path, caplog):
    timed = []

    def timer(name, calls):
        timed.append(name)
        for call in calls:
            call()
        return {"torch": 2.0, "good": 1.0, "wrong": 0.001, "broken": 0.001}[name]

    def broken(x):
        raise RuntimeError("no kernel image for this GPU")

    def candidates(w, x):
        return {"torch": lambda x: dispatch.reference(x, w), "wrong": lambda x: dispatch.reference(x, w) * 1.1,
                "broken": broken, "good": lambda x: dispatch.reference(x, w).clone()}

    path = tmp_path / "dispatch.json"
    dispatcher = Dispatcher(path, timer=timer, candidates=candidates)
    with caplog.at_level(logging.WARNING, logger="prunepipe.dispatch"):
        entry = dispatcher.decide("the key", weight("int4"), torch.randn(3, 128))
    assert entry["path"] == "good" and sorted(timed) == ["good", "torch"]
    assert entry["rejected"]["wrong"].startswith("max abs error")
    assert entry["rejected"]["broken"] == "RuntimeError: no kernel image for this GPU"
    assert "rejected wrong" in caplog.text and "rejected broken" in caplog.text
    # recorded on disk: a new process reads the decision instead of measuring again
    assert Dispatcher(path, timer=None, candidates=None).entries["the key"]["path"] == "good"


def test_only_the_reference_left_is_chosen_without_timing(tmp_path):
    def timer(name, calls):
        raise AssertionError("nothing to race")

    def candidates(w, x):
        return {"torch": lambda x: dispatch.reference(x, w),
                "nan": lambda x: torch.full_like(dispatch.reference(x, w), float("nan"))}

    dispatcher = Dispatcher(tmp_path / "d.json", timer=timer, candidates=candidates)
    entry = dispatcher.decide("k", weight("nm"), torch.randn(2, 128))
    assert entry == {"path": "torch", "ms": {}, "rejected": {"nan": entry["rejected"]["nan"]}}


@pytest.mark.parametrize("fmt", ["int4", "nm", "nm-int4", "bitmask", "bitmask-int4", "int8"])
def test_cpu_forward_is_exactly_the_reference_and_never_measures(tmp_path, monkeypatch, fmt):
    def refuse(*args):
        raise AssertionError("the CPU path must not build candidates, time or read a cache")

    monkeypatch.setenv(dispatch.CACHE_ENV, str(tmp_path / "dispatch.json"))
    dispatch.default_dispatcher.cache_clear()
    monkeypatch.setattr(dispatch, "candidates", refuse)
    module = packed_layer(fmt)
    x = torch.randn(2, 5, 128)
    want = F.linear(x, unpack_weight(module.packed(), module.layer, x.dtype), module.bias)
    assert torch.equal(module(x), want)
    assert torch.equal(Dispatcher(tmp_path / "other.json", timer=refuse, candidates=refuse)
                       .linear(x, module.packed_weight(), module.bias), want)
    assert dispatch.default_dispatcher.cache_info().currsize == 0
    assert not list(tmp_path.iterdir())


def offered(fmt: str) -> set[str]:
    """The candidates for packed_layer(fmt) (groups of 32) and fp16 x, at every batch."""
    return ({"torch"} | ({"triton"} if fmt in dispatch.KERNEL_FORMATS else set())
            | ({"dequant"} if fmt in dispatch.KERNEL_FORMATS else set()) | ({"tinygemm"} if fmt == "int4" else set())
            | ({"cusparselt"} if fmt == "nm" else set()))


@pytest.mark.parametrize("fmt", ["int4", "int8", "nm", "nm-int8", "nm-int4", "bitmask", "bitmask-int8",
                                 "bitmask-int4"])
@pytest.mark.parametrize("batch", [1, 16, 2048])
def test_every_peer_is_offered_at_every_batch(fmt, batch):
    x = torch.randn(batch, 128, dtype=torch.float16)
    assert set(dispatch.candidates(weight(fmt), x)) == offered(fmt)
    assert set(dispatch.candidates(weight(fmt), x.float())) == {"torch"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("fmt", ["int4", "int8", "nm", "nm-int8", "nm-int4", "bitmask", "bitmask-int8", "bitmask-int4"])
def test_fused_dequant_path_matches_the_reference(fmt, dtype):
    """Under TRITON_INTERPRET (conftest) the `dequant` candidate runs on the CPU: Ŵ written by the
    Triton kernel equals the torch fallback's bit for bit, so y does too."""
    from kernels import available

    if not available():
        pytest.skip("needs Triton with CUDA or TRITON_INTERPRET=1")
    w = weight(fmt)
    x = torch.randn(5, 128, dtype=dtype)
    y = dispatch.candidates(w, x)["dequant"](x)
    assert torch.isfinite(y).all() and torch.equal(y, dispatch.reference(x, w))


# ----------------------------------------------------------------------------- CUDA only

@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the candidates and their timing run there")
@pytest.mark.parametrize("fmt,batch", [("int4", 1), ("int4", 40), ("nm", 1), ("nm-int4", 16), ("bitmask", 3),
                                       ("nm", 600), ("bitmask-int4", 2)])
def test_cuda_dispatch_picks_a_correct_path_once(tmp_path, fmt, batch):
    module = packed_layer(fmt, n=256, k=512, device="cuda").half()
    timed = []

    def timer(name, calls):
        timed.append(name)
        return dispatch._cuda_timer(name, calls)

    dispatcher = Dispatcher(tmp_path / "dispatch.json", timer=timer)
    x = torch.randn(batch, 512, device="cuda", dtype=torch.float16)
    want = F.linear(x, module.dense_weight(torch.float16), module.bias)
    got = dispatcher.linear(x, module.packed_weight(), module.bias)
    assert (got - want).abs().max() <= 1e-2 * want.abs().max()
    (key, entry), = read_cache(tmp_path / "dispatch.json").items()
    assert torch.cuda.get_device_name() in key and entry["path"] in offered(fmt)
    assert not entry["rejected"], entry["rejected"]
    expected = offered(fmt)
    assert set(entry["ms"]) == (expected if len(expected) > 1 else set())
    count = len(timed)
    again = x[:-1] if dispatch.batch_bucket(batch - 1) == dispatch.batch_bucket(batch) else x
    dispatcher.linear(again, module.packed_weight(), module.bias)  # same key: decided, not raced again
    assert len(timed) == count


@pytest.mark.parametrize("fmt", ["bitmask", "bitmask-int4", "bitmask-int8"])
def test_bitmask_streams_keep_their_slack_off_the_cpu(fmt):
    """Moved off the CPU (here to `meta`), a PackedLinear's bitmask stream has STREAM_SLACK bytes of
    storage after it (the kernels' unclamped loads), and a PackedWeight copy keeps them; on the CPU
    nothing is copied."""
    from kernels._common import has_slack, with_slack

    layer = packed_layer(fmt)
    assert not has_slack(layer.values)
    moved = layer.to("meta")
    assert has_slack(moved.values) and moved.values.shape == layer.values.shape
    weight = packed_layer(fmt).packed_weight()
    tensors = dict(weight.tensors, values=with_slack(weight.tensors["values"]))
    padded = PackedWeight(weight.format, weight.shape, tensors, weight.params, weight.dense)
    copied = padded.copy().tensors["values"]
    assert has_slack(copied) and torch.equal(copied, weight.tensors["values"])
    assert copied.data_ptr() != padded.tensors["values"].data_ptr()
