"""Compile every kernel × path × production config for Hopper (sm_90) — no GPU needed.

    .venv/bin/python -m kernels.aot_check            # all configs, fp16 x
    .venv/bin/python -m kernels.aot_check --quick    # first config of each path only

Catches what TRITON_INTERPRET cannot: layout and tl.dot lowering, shared memory, register
spills. Prints registers per thread, spill bytes and shared memory per config, and exits 1 if any
config fails to compile. Uses the ptxas bundled with the triton wheel. Specialisation mimics a
real call on LLM shapes: 16-byte aligned pointers, K/N/strides multiples of 16, x stride 1.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the interpreter replaces the kernels this script compiles")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import _common, bitmask, int4, nm, nm_int4  # noqa: E402

# name → (kernel, pointer element types, format constexprs)
KERNELS = {
    "int4-g128": (int4._quant_matmul_kernel, dict(x="fp16", q="u8", s="fp16", z="u8", y="fp16"),
                  dict(BITS=4, GROUP=128)),
    "int4-g32": (int4._quant_matmul_kernel, dict(x="fp16", q="u8", s="fp16", z="u8", y="fp16"),
                 dict(BITS=4, GROUP=32)),
    "int8-g128": (int4._quant_matmul_kernel, dict(x="fp16", q="u8", s="fp16", z="u8", y="fp16"),
                  dict(BITS=8, GROUP=128)),
    "nm-2:4": (nm._nm_matmul_kernel, dict(x="fp16", v="fp16", i="u8", y="fp16"),
               dict(N_KEEP=2, M=4, INDEX_BITS=2)),
    "nm-4:8": (nm._nm_matmul_kernel, dict(x="fp16", v="fp16", i="u8", y="fp16"),
               dict(N_KEEP=4, M=8, INDEX_BITS=4)),
    "nm-int4-2:4-g128": (nm_int4._nm_int4_matmul_kernel, dict(x="fp16", v="u8", i="u8", s="fp16", z="u8", y="fp16"),
                         dict(N_KEEP=2, M=4, INDEX_BITS=2, GROUP=128)),
    "bitmask": (bitmask._bitmask_matmul_kernel, dict(x="fp16", mask="u8", v="fp16", ro="i32", y="fp16"), {}),
}
NOT_ALIGNED = {"B", "batch_bucket"}  # runtime ints that are not multiples of 16 in general


def jobs(quick: bool):
    gemv = _common.GEMV_CONFIGS[:1] if quick else _common.GEMV_CONFIGS
    tiled = _common.TILED_CONFIGS[:1] if quick else _common.TILED_CONFIGS
    for name in KERNELS:
        for rows in sorted({1, _common.GEMV_MAX_BATCH}):
            for config in gemv:
                blocks = dict(config.kwargs, BLOCK_M=_common.next_pow2(rows), GEMV_ROWS=rows)
                yield name, f"gemv B={rows}", blocks, config
        for config in tiled:
            yield name, "tiled", dict(config.kwargs, GEMV_ROWS=0), config


def compile_one(job) -> tuple[str, str, str, str]:
    name, path, blocks, config = job
    fn, pointers, fmt_meta = KERNELS[name]
    constexprs = dict(fmt_meta, **blocks, DOT_F32=False, stride_xk=1)
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = "*" + pointers[arg.removesuffix("_ptr")]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "i32"
            if arg not in NOT_ALIGNED:
                attrs[(i,)] = [["tt.divisibility", 16]]
    label = (f"{blocks['BLOCK_M']}x{blocks['BLOCK_N']}x{blocks['BLOCK_K']} "
             f"w{config.num_warps} s{config.num_stages}")
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    except Exception as e:  # report and go on: one bad config should not hide the others
        return name, path, label, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    # convert_layout ops move data between thread layouts, usually through shared memory
    converts = compiled.asm["ttgir"].count("ttg.convert_layout")
    return name, path, label, (f"{ptxas_usage(compiled.asm['ptx'])}, smem {compiled.metadata.shared} B, "
                               f"{converts} layout converts")


def ptxas_usage(ptx: str) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path  # the ptxas triton itself uses for sm_90
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        log = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return (f"{regs.group(1) if regs else '?'} regs, "
            f"spill {spills.group(1) if spills else '?'}/{spills.group(2) if spills else '?'} B")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the first config of each path")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    failed = 0
    with ProcessPoolExecutor(args.jobs) as pool:
        for name, path, label, result in pool.map(compile_one, list(jobs(args.quick))):
            failed += result.startswith("FAILED")
            print(f"{name:18s} {path:10s} {label:22s} {result}", flush=True)
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
