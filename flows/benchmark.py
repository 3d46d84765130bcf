"""The `benchmark` stage's flow: kernels against torch's paths and batch-1 decode → bench/results/.

    prunepipe stage benchmark        (what `dvc repro` runs; params.yaml's `benchmark` section)

Writes bench/results/benchmark.json and bench/results/speedup.png (small, kept in git). Without a
CUDA GPU it times the CPU reference path on the packed model's shapes in well under a minute; the
full GPU run is bench/gpu_check.sh, which also runs the kernel tests on the GPU.
Not part of the `compress` flow: its numbers describe the machine, not the model.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.stages import benchmark
from tasks.config import BenchmarkConfig, Params

PACKED = Path("data") / "packed"  # flows/stages.PACKED (stages imports this module, not the reverse)
RESULTS = Path("bench") / "results"
BENCH_JSON, SPEEDUP_PNG = RESULTS / "benchmark.json", RESULTS / "speedup.png"


@task(cache_policy=NO_CACHE, persist_result=False)
def benchmark_task(cfg: BenchmarkConfig, packed_dir: str, out: str, plot: str) -> str:
    log = get_run_logger().info
    result = benchmark.run(**cfg.model_dump(), model_shapes=benchmark.model_shapes(Path(packed_dir)), log=log)
    benchmark.write_results(result, Path(out), Path(plot))
    log(f"{out}: {len(result['rows'])} rows on {result['gpu'] or 'the CPU'}")
    return out


@flow(name="benchmark")
def benchmark_flow(params: Params) -> str:
    return benchmark_task(params.benchmark, str(PACKED), str(BENCH_JSON), str(SPEEDUP_PNG))
