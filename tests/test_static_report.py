"""The batch 1-16 production configs, compiled for sm_90, stay within the limits of
kernels/static_report.py: 128-bit packed loads, ≤ 6 main-loop instructions per packed byte, ≥ 264
CTAs at batch 1 on every target shape. No GPU: Triton's AOT compiler and the CUDA tools in its wheel.

The report runs in a subprocess: this test session sets TRITON_INTERPRET=1, which replaces every
@triton.jit function by the interpreter's and leaves nothing to compile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

triton = pytest.importorskip("triton", reason="Triton is not installed: nothing to compile")

from kernels import static_report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
MISSING = [name for name in ("ptxas", "nvdisasm", "cuobjdump") if not (TOOLS / name).is_file()]


def test_target_shapes_are_params_yaml_benchmark_shapes():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert [tuple(s) for s in params["benchmark"]["shapes"]] == list(static_report.TARGET_SHAPES)


@pytest.fixture(scope="module")
def batch_1_16_rows(tmp_path_factory):
    if MISSING:
        pytest.skip(f"triton's wheel lacks {', '.join(MISSING)} under {TOOLS}: cannot compile for sm_90")
    out = tmp_path_factory.mktemp("static") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "kernels.static_report", "--path", "batch 1-16", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), f"static_report failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return json.loads(out.read_text())


def test_every_format_declares_its_static_specs(batch_1_16_rows):
    assert batch_1_16_rows["formats_without_spec"] == []


def test_batch_1_16_configs_meet_the_limits(batch_1_16_rows):
    rows = batch_1_16_rows["rows"]
    assert rows
    broken = {f"{r['kernel']} {r['config']}": static_report.violations(static_report.Row(**r)) for r in rows}
    broken = {name: v for name, v in broken.items() if v}
    assert not broken, "\n".join(f"{name}: {'; '.join(v)}" for name, v in broken.items())


PTX_GATHER = """
$L__BB0_1:
	ld.param.u64 	%rd1, [k_param_1];
	ld.param.u64 	%rd2, [k_param_2];
	ld.global.v4.b32 	{%r1, %r2, %r3, %r4}, [%rd1];
	mul.wide.s32 	%rd3, %r1, 4;
	add.s64 	%rd4, %rd2, %rd3;
	ld.global.b32 	%r5, [%rd4];
	// begin inline asm
	{ .reg .pred p; .reg .b32 s, c; .reg .b64 a; .reg .b16 h; shl.b32 s, %r1, %r2; setp.lt.s32 p, s, 0; popc.b32 c, s; mad.wide.s32 a, c, 2, %rd1; mov.b16 h, 0; @p ld.global.nc.b16 h, [a]; cvt.f32.f16 %r6, h; }
	// end inline asm
	@%p1 bra 	$L__BB0_1;
"""


def test_ptx_scanner_sees_inline_asm_gathers_and_not_table_lookups():
    """param 1 is packed; param 2 a table indexed by a packed value (not packed data)."""
    loads = static_report.ptx_loop_loads(PTX_GATHER, {1})
    assert loads.bits == [128, 16]
    assert (loads.plain_bits, loads.gather_bits) == (128, 16)
