"""SIGTERM (`timeout`, a plain `kill`, a supervisor) stops a stage within seconds, with one
line and a non-zero exit, and stops Prefect's temporary server with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml


@pytest.mark.slow
def test_sigterm_mid_stage_stops_it_and_its_server(tmp_path, llama_folder):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"source": str(llama_folder)}}))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "stage", "model"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:  # the stage's flow has begun; its task would finish 0.1 s after it logs
        seen.append(line)
        if "Beginning flow run" in line:
            break
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "Prefect's temporary server runs as a child"
    began = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)    # this process only, as `kill PID` and `timeout` send it
    try:
        out = "".join(seen) + proc.communicate(timeout=60)[0]
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - began < 30, out[-3000:]
    assert "prunepipe: interrupted; finished artifacts are intact" in out and "Traceback" not in out
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], \
        "the temporary server outlived the stage"
    assert not (tmp_path / "data" / "model").exists()
