"""The benchmark stage on the CPU (kernels/benchmark.py, tasks/stages/benchmark.py): rows, the result file,
the model's shapes, and that a decode step could be captured in a CUDA graph. The GPU run itself
is bench/gpu_check.sh."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flows.params import ParamsError, parse_params
from kernels import FORMATS as FORMAT_KERNELS
from kernels import benchmark as ops
from kernels.dispatch import Dispatcher
from kernels.timing import rotation_count
from tasks.formats.packing import FORMAT_VERSION
from tasks.stages import benchmark

FORMATS = ["int4", "int8", "nm", "nm-int4", "bitmask", "bitmask-int4"]
SETTINGS = dict(shapes=[[64, 256]], batches=[1, 16], formats=FORMATS, group_size=32, warmup=1, reps=2, max_ms=50.0,
                decode_layers=2, decode_tokens=4, decode_formats=["int4"], cpu_batches=[1, 3], cpu_reps=1)


def test_cpu_rows_time_the_reference_path_of_every_format():
    rows = ops.add_speedups(ops.cpu_rows([(48, 128)], [1, 3], FORMATS, 32, benchmark.packer, reps=1))
    assert [(r["kernel"], r["batch"]) for r in rows[:2]] == [("dense-torch", 1), ("dense-torch", 3)]
    assert {r["kernel"] for r in rows} == {"dense-torch", *(f"torch-dequant-{f}" for f in FORMATS)}
    for row in rows:
        assert row["ms"] > 0 and row["err"] < 1e-5 and row["dtype"] == "float32" and not row["wrong"], row
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["ms"])
    packed = {r["format"]: r["bytes"] for r in rows}
    assert packed["int4"] < packed["int8"] < packed["dense"] and packed["nm-int4"] < packed["nm"]


def test_gpu_rows_assemble_on_the_cpu_under_the_interpreter(tmp_path):
    """op_rows' bookkeeping (packing, checks, peers that refuse, speedups, the deadline) with the
    Triton kernels in TRITON_INTERPRET (set by conftest) and a clock that only runs each call."""
    from kernels import _common

    if not _common.INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1 on the CPU (a GPU runs the real thing in bench/gpu_check.sh)")

    def clock(calls, warmup, reps, max_ms):
        for call in calls:
            call()
        return 1.0 + len(calls)

    timing = ops.Timing(warmup=1, reps=2, max_ms=10.0, clock=clock)
    steps = []
    rows = ops.add_speedups(ops.op_rows([(32, 128)], [1, 5], FORMATS, 32, timing, benchmark.packer,
                                        Dispatcher(tmp_path / "dispatch.json"), device="cpu", log=lambda m: None,
                                        on_step=lambda rows: steps.append(len(rows))))
    by_kernel = {(r["kernel"], r["batch"]): r for r in rows}
    for fmt in FORMATS:
        paths = ("triton", "torch-dequant", "dispatch") if fmt in FORMAT_KERNELS else ("torch-dequant", "dispatch")
        for batch in (1, 5):
            for path in paths:
                row = by_kernel[(f"{path}-{fmt}", batch)]
                assert row["ms"] == 3.0 and row["err"] < 2e-3 and not row["wrong"], row  # 2 copies each
                assert row["speedup"] == 1.0, row
    assert steps == sorted(steps) and steps[-1] == len(rows) and len(steps) == 1 + len(FORMATS) + 2
    assert by_kernel[("dense-cublas", 5)]["bytes"] == 32 * 128 * 2
    for peer in ("torch-2:4-semi", "torch-2:4-cslt", "torch-int4-tinygemm"):  # CUDA-only ops: an error row each
        assert by_kernel[(peer, 1)]["ms"] is None and by_kernel[(peer, 1)]["error"], peer
    cut = ops.op_rows([(32, 128)], [1], ["int4"], 32, timing, benchmark.packer, Dispatcher(tmp_path / "d.json"),
                      deadline=0.0, device="cpu", log=lambda m: None)
    assert [r["kernel"] for r in cut] == [ops.DEADLINE]


def test_a_row_off_the_reference_is_marked_wrong():
    """gpu_check.sh fails on such a row: 2% off is beyond fp16's bound (1%), NaN is never right."""
    x, w = torch.randn(3, 64, dtype=torch.float16), torch.randn(8, 64)
    want = x.double() @ w.double().T
    clock = lambda calls, warmup, reps, max_ms: 1.0  # noqa: E731
    timing = ops.Timing(warmup=0, reps=1, max_ms=1.0, clock=clock)
    for scale, wrong in ((1.0, False), (1.02, True), (float("nan"), True)):
        row = ops.measure(ops.where(8, 64, x), "k", "f", lambda w: (x.double() @ w.double().T * scale).half(), [w],
                          want, 0, timing)
        assert row["wrong"] is wrong, (scale, row)


def test_rotation_exceeds_twice_the_cache():
    assert rotation_count(10 << 20, 60 << 20) * (10 << 20) > 2 * (60 << 20)
    assert rotation_count(1 << 30, 60 << 20) == 2


def test_tinygemm_layout_dequantizes_to_our_codes():
    """torch's int4 peer gets our codes: (q − 8)·s + (8 − z)·s = (q − z)·s, up to bf16 rounding of s, z'."""
    from kernels.testing import quantize

    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    q, scales, zeros, w_hat = quantize(w, 4, 32)
    s = scales.double().repeat_interleave(32, 1)
    z = zeros.double().repeat_interleave(32, 1)
    tiny = (q.double() - 8) * s + (8 - z) * s
    assert torch.allclose(tiny, w_hat)
    packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    assert ((packed[:, 0] >> 4) == q[:, 0]).all() and ((packed[:, 0] & 15) == q[:, 1]).all()


def test_run_without_cuda_writes_json_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    logged = []
    result = benchmark.run(**SETTINGS, model_shapes=[(32, 64), (96, 64), (32, 64)], log=logged.append)
    assert result["gpu"] is None and result["note"] == benchmark.NO_CUDA_NOTE and result["decode"] is None
    assert {(r["N"], r["K"], r["batch"]) for r in result["rows"]} == {(32, 64, 1), (32, 64, 3), (96, 64, 1),
                                                                      (96, 64, 3)}
    assert set(result["libraries"]) == {"torch", "triton", "transformers"} and logged
    out = tmp_path / "bench" / "results"
    benchmark.write_results(result, out / "benchmark.json", out / "speedup.png")
    assert json.loads((out / "benchmark.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.json", "speedup.png"]
    without_model = benchmark.run(**SETTINGS, model_shapes=[], log=logged.append)
    assert {(r["N"], r["K"]) for r in without_model["rows"]} == {(64, 256)}


def test_model_shapes_come_from_the_packed_metadata(tmp_path):
    layers = {"model.layers.0.self_attn.q_proj": {"shape": [576, 576]},
              "model.layers.0.self_attn.k_proj": {"shape": [192, 576]},
              "model.layers.1.self_attn.q_proj": {"shape": [576, 576]}}
    (tmp_path / "metadata.json").write_text(json.dumps({"kind": "prunepipe-packed", "version": FORMAT_VERSION, "layers": layers}))
    assert benchmark.model_shapes(tmp_path) == [(576, 576), (192, 576)]


def test_params_section_is_validated():
    assert parse_params({}).benchmark.batches == (1, 16, 128, 2048)
    with pytest.raises(ParamsError, match=r"benchmark.formats = .*no kernel for \['dense'\]"):
        parse_params({"benchmark": {"formats": ["dense"]}})
    with pytest.raises(ParamsError, match="benchmark.decode_formats"):
        parse_params({"benchmark": {"decode_formats": ["int3"]}})


class NoHostSync(TorchDispatchMode):
    """Fails on any torch op that reads a tensor's value back to the host (.item(), nonzero): such
    an op raises inside CUDA graph capture. (Reads hidden inside one backend kernel stay unseen:
    the GPU run falls back to eager steps, and says so, if a capture still fails.)"""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            raise AssertionError(f"host sync in a decode step: {func}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fmt", ["dense", "int4", "nm-int4", "int8"])
def test_decode_step_reads_nothing_back_to_the_host(fmt):
    from transformers import StaticCache

    from conftest import tiny_llama
    from tasks.engine.layers import find_decoder_layers, prunable_modules

    model = tiny_llama()
    prefix, blocks = find_decoder_layers(model)
    linears = {name: m for i, b in enumerate(blocks) for name, m in prunable_modules(b, f"{prefix}.{i}", ()).items()}
    if fmt != "dense":
        benchmark.swap(model, {name: benchmark.pack_linear(m, fmt, 32) for name, m in linears.items()})
    cache = StaticCache(config=model.config, max_cache_len=16)
    ids = torch.ones(1, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(benchmark.WARM_STEPS):  # lazy cache allocation happens here, as on the GPU
            benchmark.decode_step(model, ids, cache)
        with NoHostSync():
            logits = benchmark.decode_step(model, ids, cache)
    assert logits.shape == (1, 1, model.config.vocab_size) and torch.isfinite(logits).all()
    assert ids.item() == logits[0, -1].argmax().item()
    assert int(cache.get_seq_length()) == benchmark.WARM_STEPS + 1


def test_pack_linear_prunes_and_quantizes_as_named():
    linear = torch.nn.Linear(64, 32, bias=True)
    nm_int4 = benchmark.pack_linear(linear, "nm-int4", 32)
    w = nm_int4.dense_weight(torch.float32)
    assert nm_int4.layer.format == "nm-int4" and (w.view(32, 16, 4) != 0).sum(-1).max() <= 2
    assert torch.equal(nm_int4.bias, linear.bias)
    bitmask = benchmark.pack_linear(linear, "bitmask", 32).dense_weight(torch.float32)
    assert statistics.mean((bitmask == 0).float().mean(1).tolist()) == pytest.approx(0.5)
    int8 = benchmark.pack_linear(linear, "int8", 32).dense_weight(torch.float32)
    assert (int8 - linear.weight).abs().max() < 0.01


def test_gpu_check_fails_on_a_wrong_row_our_failure_or_an_uncaptured_decode():
    """bench/gpu_bench.py's verdict: a peer that refuses a shape is a result; the rest fail the run."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_bench", Path(__file__).parents[1] / "bench" / "gpu_bench.py")
    gpu_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_bench)
    at = {"N": 8, "K": 64, "batch": 1}
    good = {"rows": [{"kernel": "triton-int4", **at, "err": 1e-4, "wrong": False},
                     {"kernel": "torch-2:4-cslt", **at, "error": "RuntimeError: unsupported"}],
            "decode": [{"format": "dense", "cuda_graph": True}]}
    assert gpu_bench.failures(good) == []
    bad = {"rows": [{"kernel": "dispatch-nm", **at, "err": 0.5, "wrong": True},
                    {"kernel": "triton-bitmask", **at, "error": "CompilationError: x"}],
           "decode": [{"format": "int4", "cuda_graph": False, "graph_error": "capture failed"}]}
    assert gpu_bench.failures(bad) == ["wrong: dispatch-nm 8x64 batch 1 err 0.5",
                                       "failed: triton-bitmask 8x64 batch 1: CompilationError: x",
                                       "decode int4: capture failed"]


def test_ncu_probe_checks_each_kernel_and_names_a_wrong_one(capsys, monkeypatch):
    """bench/ncu_probe.py (the launches gpu_check.sh profiles) at a small shape under the
    interpreter: every format within the fp16 bound; a kernel 2% off is named and fails the run."""
    import importlib.util
    from pathlib import Path

    from kernels import _common

    if not _common.INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1 on the CPU (a GPU runs it under ncu in bench/gpu_check.sh)")
    spec = importlib.util.spec_from_file_location("ncu_probe", Path(__file__).parents[1] / "bench" / "ncu_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.main(["--shape", "64", "640"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == list(probe.GROUPS)
    assert all(float(line.split()[-1]) < 1e-3 for line in lines), lines

    real = probe.launcher
    monkeypatch.setattr(probe, "launcher", lambda fmt: (lambda x, **kw: real(fmt)(x, **kw) * 1.02)
                        if fmt == "int4" else real(fmt))
    assert probe.main(["--shape", "64", "640", "--formats", "bitmask", "int4"]) == 1
    assert capsys.readouterr().err.strip() == "ncu_probe: past the fp16 bound: int4"
