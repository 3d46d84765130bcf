"""Scheduled runs: prefect.yaml's deployments on a local Prefect server (loopback, its own
PREFECT_HOME), a process worker, and one run of the nightly `compress` deployment on a tiny
model with a parameter override, as docs/operate.md tells an operator to do; its Prefect
artifacts (tables and reports) read back through the server's API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.params import parse_params
from test_flows import tiny_params

ROOT = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no healthy Prefect server at {url} after {seconds} s")


def _stop(process: subprocess.Popen) -> None:
    """Interrupt the process group (server and its uvicorn, worker and its flow runs)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_nightly_deployment_runs_on_a_local_server_and_worker(tmp_path, llama_folder, corpus_file):
    for item in ("flows", "tasks", "kernels", "prefect.yaml"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, tmp_path / item)
    params = parse_params(tiny_params(llama_folder, corpus_file)).model_dump(mode="json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "worker")}

    def start(name: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*PREFECT, *args], cwd=tmp_path, env=env, stdout=logs[name],
                                stderr=subprocess.STDOUT, start_new_session=True)

    def run(*args: str, timeout: float = 120) -> str:
        done = subprocess.run([*PREFECT, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    host, port = api.removeprefix("http://").removesuffix("/api").split(":")
    server = start("server", "server", "start", "--host", host, "--port", port)
    worker = None
    try:
        _wait_healthy(api, server)
        run("work-pool", "create", "prunepipe", "--type", "process", "--overwrite")
        deployed = run("--no-prompt", "deploy", "--all")
        assert "compress-from-params/nightly" in deployed and "sweep-from-params/weekly" in deployed
        worker = start("worker", "worker", "start", "--pool", "prunepipe", "--limit", "1")
        watched = run("deployment", "run", "compress-from-params/nightly", "-p", 'overrides={"prune.sparsity": 0.6}',
                      "--watch", "--watch-interval", "2", "--watch-timeout", "150", timeout=180)
        assert "Completed" in watched
        artifacts = read_artifacts(api)
    finally:
        for process in (worker, server):
            if process is not None:
                _stop(process)
        for log in logs.values():
            log.close()
    metrics = json.loads((tmp_path / "metrics.json").read_text())   # written where prefect deploy ran
    assert metrics["sparsity"] == pytest.approx(0.6, abs=0.01) and metrics["format"] == "bitmask-int4"
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["prune"]["sparsity"] == 0.5   # not edited
    assert (tmp_path / "data" / "packed" / "metadata.json").is_file()

    stages = ["model", "calibrate", "evaluate-dense", "prune", "quantize", "pack", "evaluate"]
    assert {f"{s}-report" for s in stages} | {"compress-metrics", "compress-report"} <= artifacts.keys()
    table = {row["metric"]: row["value"] for row in artifacts["compress-metrics"]}
    assert table["sparsity"] == metrics["sparsity"] and table["ppl_packed"] == metrics["ppl_packed"]
    assert '"sparsity": 0.6' in artifacts["compress-report"] and "layer_sparsity.png" in artifacts["compress-report"]
    packed = {row["figure"]: row["value"] for row in artifacts["pack-figures"]}
    assert packed["bytes_per_weight"] == pytest.approx(metrics["bytes_per_weight"], abs=1e-4)   # metrics.json rounds
    assert '"format": "bitmask-int4"' in artifacts["pack-report"]


def read_artifacts(api: str) -> dict:
    """The latest artifact under each key on the server at `api`: table rows, or Markdown text."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        found = client.read_latest_artifacts()
    return {a.key: json.loads(a.data) if a.type == "table" else a.data for a in found}
