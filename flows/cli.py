"""`prunepipe` command line: run the whole flow, one stage, or show the metrics.

    prunepipe run              the `compress` flow (every stage, cached)
    prunepipe stage NAME       one stage's flow (what each `dvc repro` stage runs)
    prunepipe show             the metrics table from metrics.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

STAGE_NAMES = ("model", "calibrate", "prune", "quantize", "pack", "evaluate_dense", "evaluate")


def _prefect_env() -> None:
    # Each clone keeps its own Prefect state; no analytics leave the machine.
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


def show(path: Path = Path("metrics.json")) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics yet (run `dvc repro` or `prunepipe run`)")
    metrics = json.loads(path.read_text())
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    width = max(map(len, flat))
    return "\n".join(f"{key:<{width}}  {value}" for key, value in flat.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prunepipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run every stage as one Prefect flow")
    stage = sub.add_parser("stage", help="run one stage's flow")
    stage.add_argument("name", choices=STAGE_NAMES)
    sub.add_parser("show", help="print metrics.json as a table")
    args = parser.parse_args(argv)

    if args.command == "show":
        try:
            print(show())
        except FileNotFoundError as err:
            print(f"prunepipe: {err}", file=sys.stderr)
            return 1
        return 0

    _prefect_env()
    from flows.params import ParamsError, load_params
    from tasks.artifacts import ArtifactError
    from tasks.corpus import CorpusError
    from tasks.model import ModelSourceError

    try:
        params = load_params(args.params)
        if args.command == "run":
            from flows.compress import compress

            compress(params)
        else:
            from flows.stages import STAGES

            STAGES[args.name](params)
    except (ParamsError, ModelSourceError, CorpusError, ArtifactError) as err:
        print(f"prunepipe: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunepipe: interrupted; finished artifacts are intact, partial ones were discarded",
              file=sys.stderr)
        return 130
    if args.command == "run" or args.name == "evaluate":
        print(show())
    return 0


if __name__ == "__main__":
    sys.exit(main())
