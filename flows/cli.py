"""`prunepipe` command line: run the whole flow, one stage, a sweep, report or export.

    prunepipe run                   the `compress` flow (every stage, cached)
    prunepipe stage NAME            one stage's flow (what each `dvc repro` stage runs)
    prunepipe sweep [--workers N]   the `sweep` flow: every point of params.yaml's sweep
    prunepipe sweep --point NAME    one sweep point (what each `dvc repro sweep/dvc.yaml` point runs, NAME from $DVC_STAGE)
    prunepipe sweep --summary       the sweep table and plots from results/sweep/
    prunepipe show                  the metrics table from metrics.json
    prunepipe report [--against REF] [--out DIR]  DIR/report.md (reports/): quality, diff against REF, plots
    prunepipe export --out DIR [--from packed|quantized]  a compressed-tensors checkpoint (vLLM)
    prunepipe generate "PROMPT" [--packed DIR] [--max-new-tokens N]  stream text from the packed model
    prunepipe dvc-yaml              write dvc.yaml and sweep/dvc.yaml from the stage graph

An input error (a parameter, a missing or altered file) prints one line naming the key or
the file and exits with status 2, also when a stage's Prefect task raised it (without
Prefect's tracebacks; `--debug` shows them, and the Prefect UI keeps them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from flows.logs import DEBUG_ENV, quiet_user_errors
from tasks.errors import UserError
from flows.lock import writer_lock
from tasks.stages.graph import METRICS, PACKED, QUANTIZED, STAGES


def _prefect_env() -> None:
    # Each clone keeps its own Prefect state; no analytics leave the machine.
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # The temporary server's first start creates its database; 20 s (Prefect's default) is
    # not always enough on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def show(path: Path = METRICS) -> str:
    from tasks.reports.summary import flatten

    if not path.is_file():
        raise UserError(f"{path}: no metrics yet (run `dvc repro` or `prunepipe run`)")
    try:
        flat = flatten(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as err:
        raise UserError(f"{path}: not a metrics file ({type(err).__name__}: {err}); restore it with "
                        "`git checkout -- metrics.json` or rerun `dvc repro`") from None
    if not flat:
        raise UserError(f"{path}: holds no metrics; restore it with `git checkout -- metrics.json` or rerun "
                        "`dvc repro`")
    width = max(map(len, flat))
    return "\n".join(f"{key:<{width}}  {value}" for key, value in flat.items())


def run_sweep(params, args: argparse.Namespace) -> int:
    from flows import sweep

    if args.point:
        sweep.sweep_point_flow(sweep.select(params, args.point))
    elif args.summary:
        sweep.sweep_summary_flow(params)
    else:
        sweep.expand(params)   # a bad combination stops here, before any work
        sweep.sweep.with_options(task_runner=sweep.sweep_runner(args.workers, args.address))(params)
        print(sweep.SWEEP_CSV)
    return 0


def _stop_on_ctrl_c() -> None:
    """Ctrl-C (SIGINT) and SIGTERM stop the command within seconds, with one line. Ctrl-C reaches Prefect's temporary API server too (same process group); once it is
    gone, the flow engine would retry its calls for minutes. Stop at once instead: writes are
    atomic, so finished artifacts are intact and a partial one is only a hidden temporary
    directory, removed by the next run."""
    def stop(signum, frame):
        print("\nprunepipe: interrupted; finished artifacts are intact, the partial one is discarded "
              "(the next run removes its temporary directory)", file=sys.stderr, flush=True)
        _stop_children()
        os._exit(128 + signum)

    # SIGTERM (`timeout`, a plain `kill`, a supervisor) the same way: only this process gets
    # it, so the temporary server, a child, is stopped here rather than left behind.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def _stop_children(grace: float = 3.0) -> None:
    """Terminate this process's children (Prefect's temporary server, local Dask workers),
    then kill those still alive after `grace` seconds."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    for child in psutil.wait_procs(children, timeout=grace)[1]:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def export(args: argparse.Namespace) -> int:
    from tasks.serving.compressed_tensors import export_artifact

    print(export_artifact({"packed": PACKED, "quantized": QUANTIZED}[args.source], args.out))
    return 0


def generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from tasks.serving.generate import generate as run_generate
    from tasks.serving.packed_model import load_packed

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens = {args.max_new_tokens}: must be at least 1")
    if not args.packed.is_dir():
        raise UserError(f"{args.packed}: no packed model there (run `dvc repro` or `prunepipe run` first, "
                        "or pass --packed DIR)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = load_packed(args.packed, dtype=dtype, decode=args.decode, device=device)
    tokenizer = AutoTokenizer.from_pretrained(args.packed)
    stats = run_generate(model, tokenizer, args.prompt, args.max_new_tokens,
                         emit=lambda text: print(text, end="", flush=True), chat=not args.raw)
    print(f"{stats.new_tokens} tokens in {stats.seconds:.2f} s ({stats.tokens_per_s:.2f} tokens/s, {device}, "
          f"prompt {stats.prompt_tokens} tokens)", file=sys.stderr)
    return 0


def write_dvc_yaml() -> int:
    from flows.dvc_yaml import write

    for path in write():
        print(path)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prunepipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show Prefect's tracebacks and the full trace, not one line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run every stage as one Prefect flow")
    stage = sub.add_parser("stage", help="run one stage's flow")
    stage.add_argument("name", choices=list(STAGES))
    sweep = sub.add_parser("sweep", help="run params.yaml's sweep (or one point of it, or its summary)")
    how = sweep.add_mutually_exclusive_group()
    how.add_argument("--workers", type=int, default=1, help="points at once, on a local Dask cluster if > 1")
    how.add_argument("--address", help="run the points on the Dask cluster at this address")
    how.add_argument("--point", metavar="NAME", help="run this point only (as `dvc repro sweep/dvc.yaml` does); "
                     "NAME or its DVC stage address, sweep/dvc.yaml:point@NAME")
    how.add_argument("--summary", action="store_true", help="write the sweep table and plots only")
    sub.add_parser("show", help="print metrics.json as a table")
    rep = sub.add_parser("report", help="write reports/report.md (or DIR/report.md with --out)")
    rep.add_argument("--against", metavar="REF", default="HEAD", help="git ref to diff metrics and params against")
    rep.add_argument("--image-base", default="", help="prefix for plot links (default: relative to the report)")
    rep.add_argument("--out", type=Path, default=Path("reports"), help="folder for report.md and its plots")
    exp = sub.add_parser("export", help="write a compressed-tensors checkpoint (the form vLLM loads)")
    exp.add_argument("--out", type=Path, required=True, help="the checkpoint folder to write")
    exp.add_argument("--from", dest="source", choices=("packed", "quantized"), default="packed",
                     help="the artifact to export: data/packed (default) or data/quantized")
    gen = sub.add_parser("generate", help="stream greedy text from the packed model")
    gen.add_argument("prompt")
    gen.add_argument("--packed", type=Path, default=PACKED, help="the packed artifact (default: data/packed)")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default 64)")
    gen.add_argument("--decode", choices=("auto", "load", "call"), default="auto",
                     help="load: dequantize every weight once (dense speed and memory); call: at every call "
                          "(packed memory; on a GPU through the kernels); auto (default): load on the CPU when "
                          "the weights fit in half the free memory, call on a GPU")
    gen.add_argument("--raw", action="store_true", help="the prompt as plain text, not a chat-template user turn")
    sub.add_parser("dvc-yaml", help="write dvc.yaml and sweep/dvc.yaml from the stage graph")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.command == "show":
        print(show())
        return 0
    if args.command == "report":
        from flows.report import report

        print(report(args.against, args.image_base, args.out))
        return 0
    if args.command == "export":
        return export(args)
    if args.command == "generate":
        return generate(args)
    if args.command == "dvc-yaml":
        return write_dvc_yaml()

    _prefect_env()
    _stop_on_ctrl_c()
    if args.debug:
        os.environ[DEBUG_ENV] = "1"   # local Dask workers inherit it: they keep their tracebacks too
    else:
        quiet_user_errors()
    from flows.params import load_params

    params = load_params(args.params)
    # one writer of data/ per clone (flows/lock.py); a bad params.yaml stopped above
    with writer_lock(f"`prunepipe {args.command}{' ' + args.name if args.command == 'stage' else ''}`"):
        if args.command == "run":
            from flows.compress import compress

            compress(params)
        elif args.command == "sweep":
            return run_sweep(params, args)
        else:
            from flows.stages import STAGE_FLOWS

            STAGE_FLOWS[args.name](params)
    if args.command == "run" or args.name == "evaluate":
        print(show())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        print(f"prunepipe: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
