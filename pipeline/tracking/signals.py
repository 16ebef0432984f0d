"""SIGINT and SIGTERM as a clean stop: the stage's MLflow run ends KILLED and the process exits 128 + signal.

Python turns SIGINT into KeyboardInterrupt, but SIGTERM (what `kill`, systemd, Kubernetes and batch schedulers send
before SIGKILL) ends the process at once by default, skipping every `except` and `finally`: the MLflow run would
stay RUNNING. Here both raise `Interrupted`, a KeyboardInterrupt, which `pipeline.tracking.runs.stage_run` already
ends KILLED.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number: what a shell reports for a process the signal ended (130, 143)."""
        return 128 + self.signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM raise `Interrupted` wherever the main thread is; the old handlers come back after."""
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class StopRequest:
    """Set by the first SIGINT/SIGTERM inside `deferred_signals`; the work polls it at its safe points."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextmanager
def deferred_signals() -> Iterator[StopRequest]:
    """Inside, the first SIGINT/SIGTERM only sets the yielded request, so the work can stop at a safe point (train:
    at the end of the optimizer step, after a checkpoint); a second one raises at once. Leaving the block after a
    request raises `Interrupted`, so the stop still ends the run KILLED.
    """
    request = StopRequest()

    def note(signum: int, frame) -> None:
        if request.requested:
            raise Interrupted(signum)
        request.signum = signum
        log.warning(
            "%s received: stopping after the current step with a checkpoint (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    previous = {signum: signal.signal(signum, note) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if request.signum is not None:
        raise Interrupted(request.signum)
