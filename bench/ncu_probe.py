"""One batch-1 launch of each main kernel for Nsight Compute: the static report predicts that the
L1 / shared-memory data path or instruction issue, not DRAM, caps `bitmask` and `bitmask-int4`
(kernels/static_report.py, `l1_bytes_per_byte`, `instr_per_byte`); ncu's speed-of-light section
measures DRAM, L1 and SM throughput. bench/gpu_check.sh runs it
once per format F (ncu prints a process's tables when it ends):

    ncu --clock-control none --profile-from-start off --section SpeedOfLight python3 bench/ncu_probe.py --formats F

Per format a random fp16 weight (8192 × 28672 by default, the benchmark's widest K) packed by the
pack stage's code, x (1, K): one call compiles and tunes the kernel and is checked against Ŵ in
float64, then one call inside cudaProfilerStart/Stop is the launch ncu profiles. Exit 1 when a
format's output is past the fp16 bound. Runs on the CPU under TRITON_INTERPRET=1 (no profiler).
"""

from __future__ import annotations

import argparse
import sys

import torch

from kernels import benchmark as kb
from kernels import launcher
from tasks.stages.benchmark import packer

# the formats whose static figures the run should confirm, at the groups the pipeline and benchmark use
GROUPS = {"bitmask-int4": 64, "bitmask": None, "int4": 128, "nm-int4": 128}  # bitmask: fp16 values


def probe(fmt: str, n: int, k: int, device: str) -> float:
    """Relative error of `fmt`'s kernel at batch 1; its second launch is the profiled one."""
    weight = packer(fmt, kb.random_weight(n, k, device), GROUPS[fmt])
    x = torch.randn(1, k, device=device, dtype=torch.float16)
    kernel = launcher(fmt)
    want = x.double() @ weight.dense(weight.tensors, torch.float64).T
    err = kb.rel_err(kernel(x, **weight.tensors, **weight.params), want)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        kernel(x, **weight.tensors, **weight.params)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    return err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(8192, 28672), metavar=("N", "K"))
    parser.add_argument("--formats", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    wrong = []
    for fmt in args.formats:
        err = probe(fmt, *args.shape, device)
        group = f" g{GROUPS[fmt]}" if GROUPS[fmt] else ""
        print(f"ncu_probe {fmt}{group} {args.shape[0]}x{args.shape[1]} batch 1: rel err {err:.2e}", flush=True)
        if kb.is_wrong(err, "float16"):
            wrong.append(fmt)
    if wrong:
        print(f"ncu_probe: past the fp16 bound: {', '.join(wrong)}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
