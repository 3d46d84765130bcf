"""Writers exclude each other: one lock per clone held by every runner of data/, and a
temporary sibling removed only when the process filling it is gone."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from flows.lock import writer_lock
from tasks.io.artifacts import write_artifact

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from flows.lock import writer_lock
with writer_lock("`prunepipe run`", Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_writer_waits_with_a_message(tmp_path):
    lock = tmp_path / ".prunepipe.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "2"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said, began = [], time.monotonic()
    with writer_lock("`prunepipe stage prune`", lock, said.append):
        waited = time.monotonic() - began   # the holder keeps the lock 2 s after saying "held"
    holder.wait()
    assert waited > 1.0 and len(said) == 1
    assert said[0].startswith(f"prunepipe: waiting for `prunepipe run` (pid {holder.pid}) to finish writing data/")


def test_the_lock_of_a_killed_writer_is_free(tmp_path):
    lock = tmp_path / ".prunepipe.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "60"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    said = []
    with writer_lock("`prunepipe run`", lock, said.append):
        assert said == []


def test_a_live_writers_temporary_folder_survives_another_writer(tmp_path):
    final = tmp_path / "data" / "pruned"
    final.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (int(dead.stdout), live.pid):
            (final.parent / f".pruned.tmp-{pid}-0123abcd").mkdir()
        (final.parent / ".pruned.tmp-0123abcd").mkdir()              # an older run's name, no pid: stale
        write_artifact(final, "demo", 1, {}, lambda tmp: (tmp / "part.bin").write_bytes(b"y"))
        assert sorted(p.name for p in final.parent.iterdir()) == [f".pruned.tmp-{live.pid}-0123abcd", "pruned"]
    finally:
        live.kill()
        live.wait()


def test_writers_in_threads_of_one_process_keep_each_others_folders(tmp_path):
    final = tmp_path / "data" / "pruned"
    started, release = threading.Event(), threading.Event()

    def slow(tmp: Path) -> None:
        (tmp / "part.bin").write_bytes(b"x")
        started.set()
        release.wait(30)

    worker = threading.Thread(target=write_artifact, args=(final, "demo", 1, {}, slow))
    worker.start()
    started.wait(30)
    write_artifact(tmp_path / "data" / "pruned", "demo", 1, {}, lambda tmp: (tmp / "part.bin").write_bytes(b"y"))
    release.set()
    worker.join(30)
    assert (final / "part.bin").read_bytes() == b"x"   # the slow writer finished: its folder was not removed
