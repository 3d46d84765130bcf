"""One writer per clone: every runner that writes data/ (`prunepipe stage|run|sweep`, so each
`dvc repro` stage command too, and the scheduled `compress-from-params` deployment) holds an
exclusive lock on `.prunepipe.lock` in the working directory while it runs. A second writer
prints one line naming the holder and waits; the kernel releases the lock when its holder
exits, however it ends (a SIGKILL included), so a stale lock never blocks anyone."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK = Path(".prunepipe.lock")


@contextlib.contextmanager
def writer_lock(what: str, path: Path = LOCK,
                say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> Iterator[None]:
    """Hold the clone's writer lock for the block; `what` names this run to a waiting one."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another prunepipe run"
            say(f"prunepipe: waiting for {holder} to finish writing data/ in this clone ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
