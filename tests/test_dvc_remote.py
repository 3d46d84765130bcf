"""A DVC remote for real: moto's S3 server on localhost, `dvc push` from one clone, `dvc pull` into a
second clone at another path, which then has nothing to reproduce.

The project is a two-stage stand-in written by the test, not our pipeline: `dvc repro` of our
stages on a tiny model starts Prefect's temporary server in each of eight stages (about two
minutes), and what a remote must carry is the same either way: persisted stage outputs, params,
a lock file and metrics. The stand-in keeps the test under a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import dvc_workspace

pytest.importorskip("dvc_s3", reason="pip install dvc-s3==3.3.0")
moto_server = pytest.importorskip("moto.server", reason="pip install 'moto[server]==5.2.5'")

STAGES = """\
stages:
  make:
    cmd: python stage.py make
    deps: [stage.py]
    params: [make.count]
    outs:
      - data/made: {persist: true}
  total:
    cmd: python stage.py total
    deps: [stage.py, data/made]
    outs:
      - data/total: {persist: true}
    metrics:
      - metrics.json: {cache: false}
"""

SCRIPT = """\
import json, pathlib, sys, yaml
count = yaml.safe_load(open("params.yaml"))["make"]["count"]
if sys.argv[1] == "make":
    pathlib.Path("data/made").mkdir(parents=True, exist_ok=True)
    pathlib.Path("data/made/values.txt").write_text("\\n".join(str(i * i) for i in range(count)))
else:
    total = sum(map(int, pathlib.Path("data/made/values.txt").read_text().split()))
    pathlib.Path("data/total").mkdir(parents=True, exist_ok=True)
    pathlib.Path("data/total/sum.txt").write_text(str(total))
    pathlib.Path("metrics.json").write_text(json.dumps({"total": total}))
"""


@pytest.fixture
def s3_endpoint(monkeypatch):
    """An S3 API on a free localhost port with the bucket `prunepipe`; credentials in the environment."""
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="prunepipe")
    yield endpoint
    server.stop()


@pytest.mark.slow
def test_a_second_clone_pulls_the_artifacts_and_runs_no_stage(tmp_path, s3_endpoint):
    first = tmp_path / "laptop" / "prunepipe"
    first.mkdir(parents=True)
    run = dvc_workspace(first, (), {"make": {"count": 5}})
    (first / "dvc.yaml").write_text(STAGES)
    (first / "stage.py").write_text(SCRIPT)
    assert "Running stage 'make'" in run("dvc", "repro")
    # what docs/operate.md tells a user to run: the remote's address in .dvc/config (committed),
    # credentials in the environment (or `dvc remote modify --local`, never committed)
    run("dvc", "remote", "add", "-d", "shared", "s3://prunepipe/dvc-cache")
    run("dvc", "remote", "modify", "shared", "endpointurl", s3_endpoint)
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline")
    assert "pushed" in run("dvc", "push")

    second = tmp_path / "ci" / "checkout"
    run("git", "clone", "-q", str(first), str(second))
    shutil.rmtree(first / "data")   # the second clone can only get them from the remote
    shutil.rmtree(first / ".dvc" / "cache")
    pull = in_folder(second)
    assert "2 files added" in pull("dvc", "pull")   # data/made and data/total, from the S3 server
    assert (second / "data/total/sum.txt").read_text() == "30"
    assert json.loads((second / "metrics.json").read_text()) == {"total": 30}
    assert pull("dvc", "status").strip() == "Data and pipelines are up to date."
    repro = pull("dvc", "repro")
    assert "Running stage" not in repro and "Stage 'total' didn't change, skipping" in repro


def in_folder(root):
    """run(*cmd) → stdout in `root`, with this venv's dvc on the PATH; fails the test on an error."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout
    return run
