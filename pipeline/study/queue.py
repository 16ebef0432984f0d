"""A study's points as queued DVC experiments: queue them by name, start N workers, wait, and read why one failed.

DVC's own machinery throughout: `Repo.experiments.run(queue=True, name=...)` is what `dvc exp run --queue --name`
calls (in this process, so queueing 40 points does not start 40 interpreters), the Celery queue's `status()` is what
`dvc queue status` prints, and `dvc queue logs` keeps each experiment's output.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.errors import UserError
from pipeline.study.plan import Point

log = logging.getLogger(__name__)

PENDING = ("Queued", "Running")
QUEUE_POLL_S = 5.0


@dataclass(frozen=True)
class QueueEntry:
    name: str | None
    rev: str
    """The queued experiment's stash commit, which `dvc queue logs` takes (a name is queued again after a failure)."""
    status: str
    """`dvc queue status`'s word: Queued, Running, Success or Failed."""


def queue_points(root: Path, points: Sequence[Point]) -> None:
    """Queue each point under its name. Points were all checked before (plan.plan_study), so a failure here is
    DVC's (a locked repo, a name taken by hand): the points queued so far stay, and running the study again queues
    only the rest."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        for point in points:
            try:
                repo.experiments.run(queue=True, params=list(point.overrides), name=point.name)
            except DvcException as error:
                raise UserError(f"`dvc exp run --queue --name {point.name}` ({' '.join(point.varies)}) failed: "
                                f"{error}; run the study again to queue the rest") from None  # fmt: skip


def queue_status(root: Path) -> list[QueueEntry]:
    """Every entry of the experiment queue, oldest first (as `dvc queue status` lists them)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        entries = repo.experiments.celery_queue.status()
    entries.sort(key=lambda entry: entry["timestamp"])
    return [QueueEntry(entry["name"], entry["rev"], entry["status"]) for entry in entries]


def start_workers(root: Path, jobs: int) -> None:
    # Workers share the machine's cores: more threads per worker than cores / jobs only makes them wait on each
    # other. They inherit this environment from `dvc queue start`.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    # Output to a file, not a pipe: the workers inherit it and outlive `dvc queue start`, so reading a pipe to its
    # end would wait for the last of them, and `wait_for` would only start once every point had run.
    with tempfile.TemporaryFile(mode="w+") as output:
        command = [sys.executable, "-m", "dvc", "queue", "start", "--jobs", str(jobs)]
        started = subprocess.run(command, cwd=root, env=env, stdout=output, stderr=output, check=False)
        if started.returncode != 0:
            output.seek(0)
            raise UserError(f"`dvc queue start --jobs {jobs}` failed ({started.returncode}):\n{output.read()}")


def wait_for(root: Path, names: set[str], poll_s: float = QUEUE_POLL_S) -> None:
    """Block until none of the named experiments is queued or running, with a bar of how many are done."""
    with tqdm(total=len(names), desc="study points", unit="point") as bar:
        while True:
            latest = {entry.name: entry.status for entry in queue_status(root) if entry.name in names}
            pending = sum(status in PENDING for status in latest.values())
            bar.update(len(names) - pending - bar.n)
            if not pending:
                return
            time.sleep(poll_s)


def queue_log(root: Path, rev: str) -> str:
    """What `dvc queue logs` kept of the experiment's run ('' when it kept nothing)."""
    result = subprocess.run([sys.executable, "-m", "dvc", "queue", "logs", rev], cwd=root, capture_output=True,
                            text=True, check=False)  # fmt: skip
    return result.stdout if result.returncode == 0 else ""


STAGE_FAILED = re.compile(r"^ERROR: failed to reproduce '([^']+)'(.*)$", re.MULTILINE)
# `configure_logging`'s format; a message that ends in a colon goes on with its first indented line.
LOGGED_ERROR = re.compile(r"^\S+ \S+ \S+ (?:ERROR|CRITICAL) (.+)$(?:\n\s+(?:- )?(.+)$)?", re.MULTILINE)
TRACEBACK = "Traceback (most recent call last):"


def first_line_of_why(log_text: str) -> str:
    """One line saying why a queued experiment failed: the failing stage and its first logged error (a stage's
    UserError), else the exception a traceback ended with, else DVC's own line (a stage killed, say)."""
    stage = STAGE_FAILED.search(log_text)
    where = f"{stage.group(1)}: " if stage else ""
    if logged := LOGGED_ERROR.search(log_text):
        first, more = logged.group(1).strip(), logged.group(2)
        return where + (f"{first} {more.strip()}" if first.endswith(":") and more else first)
    if TRACEBACK in log_text:  # the exception is the first unindented line after the frames
        after = log_text.rsplit(TRACEBACK, 1)[1].splitlines()
        if exception := next((line for line in after if line.strip() and not line[0].isspace()), None):
            return where + exception.strip()
    if stage:
        return where + stage.group(2).strip(" :,")
    return "no log kept (`dvc queue logs` printed nothing)"


LOCAL_INPUT_KEYS = (
    "data.train_file", "data.validation_file", "data.test_file", "data.single_file", "model.name_or_path",
)  # fmt: skip


def check_inputs_versioned(root: Path, points: Sequence[Point]) -> None:
    """Queued experiments run in a copy holding only what git and DVC track: local inputs must be among it."""
    paths = sorted({path for point in points for path in local_inputs(root, point.params.flat())})
    if missing := untracked_inputs(root, paths):
        raise UserError(
            f"{', '.join(missing)}: not versioned, so queued experiments (which see only what git and DVC track) "
            "would not find them; `dvc add` their folder and `git add` its .dvc file (`python -m pipeline.offline` "
            "does the first and prints the second)"
        )


def local_inputs(root: Path, flat_params: dict[str, object]) -> list[str]:
    """The params' input paths that exist under the repo root (a hub id such as `gpt2` is no path here)."""
    values = [flat_params.get(key) for key in LOCAL_INPUT_KEYS]
    return [str(value) for value in values if isinstance(value, str) and (root / value).exists()]


def untracked_inputs(root: Path, paths: list[str]) -> list[str]:
    """The local input paths (repo-relative) that a queued experiment would not see: neither in git nor under a
    folder whose .dvc file git knows (tracked or staged)."""
    missing = []
    for path in paths:
        candidates = [Path(path), *Path(path).parents][:-1]  # the path itself and each folder above it
        known = [path] + [f"{candidate}.dvc" for candidate in candidates]
        listed = subprocess.run(["git", "ls-files", "--", *known], cwd=root, capture_output=True, text=True)
        if not listed.stdout.strip():
            missing.append(path)
    return missing
