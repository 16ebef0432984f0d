"""Which `dvc repro` (or `dvc exp run`, or queued experiment) runs this stage, so that the stages of one execution
share one group run even though DVC may skip any stage after this one.

DVC runs the last stage of a pipeline only when its inputs changed: when a rerun stage writes the same outputs as
before (a harness rerun after a code change, scoring the same model the same way), DVC skips everything after it,
and a group run left RUNNING for the last stage to close would stay RUNNING. So each stage run by DVC ends its group
FINISHED, and the next stage of the same execution sets it RUNNING again (pipeline/tracking/runs.py); a stage needs
to know which execution it belongs to, which no variable DVC sets says (`DVC_STAGE`, `DVC_ROOT`, `DVC_EXP_NAME`).

The DVC process is the ancestor of this process that holds DVC's write lock on this stage's outputs: the
`.dvc/tmp/rwlock` file of the workspace DVC runs the stage in, `{"write": {<path>: {"pid": ..., "cmd": ...}}}`
(dvc/rwlock.py). Its pid and start time name it: a pid alone may be reused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

RWLOCK = Path(".dvc") / "tmp" / "rwlock"


def dvc_process(workspace: Path | None = None) -> str | None:
    """`<pid>@<start time>` of the DVC process running this stage; None for a stage run by hand (no `DVC_STAGE`) or
    when the lock names none of this process's ancestors."""
    if not os.environ.get("DVC_STAGE"):
        return None
    writers = _lock_writers((workspace or Path.cwd()) / RWLOCK)
    for ancestor in psutil.Process().parents():  # the DVC process, then possibly a shell or torchrun below it
        if ancestor.pid in writers:
            return f"{ancestor.pid}@{ancestor.create_time():.3f}"
    return None


def _lock_writers(path: Path) -> set[int]:
    """The pids holding a write lock in DVC's rwlock file; none where it is missing or unreadable."""
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
        return {int(info["pid"]) for info in (lock.get("write") or {}).values()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        logger.warning("Cannot tell which DVC process runs this stage from %s (%s): its group run stays RUNNING "
                       "for the pipeline's last stage to close", path, error)  # fmt: skip
        return set()
