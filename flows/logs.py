"""Console logging of stage runs: an input error (UserError) is one line, not Prefect's tracebacks.

Installed by the CLI in its own process and, unless `--debug` (DEBUG_ENV) is set, by every
sweep point in the process that runs it, a Dask worker included, so a point that fails on a
worker prints no traceback there either.
"""

from __future__ import annotations

import logging
import os

from tasks.errors import UserError

DEBUG_ENV = "PRUNEPIPE_DEBUG"


class UserErrorsInOneLine(logging.Filter):
    """Prefect logs an exception raised in a task at every level it passes (the task run with
    its traceback, the task's final state, the flow run with its traceback, the flow's final
    state). An input error (UserError) is answered by main() in one line, so the console leaves
    those records out; the API handler still sends them, traceback included, to the Prefect UI,
    and `--debug` shows them here too."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, UserError):
            self.messages.add(str(error))
            return False
        if self.messages and record.levelno >= logging.INFO and record.name.startswith("prefect."):
            text = record.getMessage()
            return not any(message in text for message in self.messages)
        return True


def quiet_user_errors() -> None:
    """Install UserErrorsInOneLine on the console handlers Prefect set up (on the root logger)."""
    import prefect.main  # noqa: F401  (configures Prefect's logging)

    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler" and not any(
                isinstance(f, UserErrorsInOneLine) for f in handler.filters):
            handler.addFilter(UserErrorsInOneLine())


def quiet_dask() -> None:
    """distributed logs a cluster's start and stop at INFO, and a worker that closes its
    connection while the cluster shuts down as an INFO record with a CommClosedError
    traceback: noise to a sweep's user. Its warnings and errors still show; `--debug` keeps it all."""
    if not os.environ.get(DEBUG_ENV):
        logging.getLogger("distributed").setLevel(logging.WARNING)
