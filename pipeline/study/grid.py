"""A study's grid (studies/*.yaml) and running it as queued DVC experiments.

A grid is a list of sweeps in DVC's own `-S` sweep syntax (`freeze.trainable_blocks=range(1,4)`,
`freeze.head=choice(tied,untied)`): one `dvc exp run --queue` per sweep queues the cross product of its lines. Several
sweeps make a grid that is not one cross product (no point trains nothing; LoRA ranks pair with their own method).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.errors import UserError

log = logging.getLogger(__name__)

# `dvc queue status` rows of experiments that are still to finish (see `wait_for_queue`).
PENDING_STATES = re.compile(r"\b(Queued|Running)\b")
QUEUE_POLL_S = 5.0


@dataclass(frozen=True)
class Grid:
    name: str
    sweeps: tuple[tuple[str, ...], ...]
    """Each sweep: `key=value` overrides for one `dvc exp run --queue`, values in DVC's sweep syntax."""


def load_grid(path: Path) -> Grid:
    """Read a grid file: `sweeps:` a list of lists of `key=value` strings. Problems are refused all at once."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such grid file (see studies/ for examples)") from None
    sweeps = raw.get("sweeps") if isinstance(raw, dict) else None
    if not isinstance(sweeps, list) or not sweeps:
        raise UserError(f"{path}: expected `sweeps:`, a list of sweeps, each a list of key=value strings")
    issues = [
        f"sweeps[{index}]: {sweep!r} is not a list of key=value strings"
        for index, sweep in enumerate(sweeps)
        if not isinstance(sweep, list) or not all(isinstance(line, str) and "=" in line for line in sweep)
    ]
    if issues:
        raise UserError(f"{path} has {len(issues)} problem(s):\n" + "\n".join(f"  - {i}" for i in issues))
    return Grid(path.stem, tuple(tuple(sweep) for sweep in sweeps))


def queue_commands(grid: Grid, profile_overrides: list[str]) -> list[list[str]]:
    """One `dvc exp run --queue` per sweep; a profile's fixed overrides come first, so the sweep's values win."""
    fixed = [arg for override in profile_overrides for arg in ("-S", override)]
    return [
        ["dvc", "exp", "run", "--queue", *fixed, *(arg for line in sweep for arg in ("-S", line))]
        for sweep in grid.sweeps
    ]


def run_queue(root: Path, commands: list[list[str]], jobs: int) -> None:
    """Queue every sweep, start `jobs` workers and wait until the queue is empty."""
    for command in commands:
        _dvc(root, command[1:])
    # Workers share the machine's cores: more threads per worker than cores / jobs only makes them wait on each
    # other. They inherit this environment from `dvc queue start`.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    _dvc(root, ["queue", "start", "--jobs", str(jobs)], env)
    wait_for_queue(root)


def wait_for_queue(root: Path, poll_s: float = QUEUE_POLL_S) -> None:
    """Block until `dvc queue status` lists no queued or running experiment."""
    while True:
        status = _dvc(root, ["queue", "status"])
        pending = [line for line in status.splitlines() if PENDING_STATES.search(line)]
        if not pending:
            return
        log.info("%d experiment(s) queued or running", len(pending))
        time.sleep(poll_s)


def _dvc(root: Path, args: list[str], env: dict[str, str] | None = None) -> str:
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(
        command, cwd=root, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise UserError(f"`dvc {' '.join(args)}` failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


LOCAL_INPUT_KEYS = (
    "data.train_file", "data.validation_file", "data.test_file", "data.single_file", "model.name_or_path",
)  # fmt: skip


def local_inputs(root: Path, flat_params: dict[str, object]) -> list[str]:
    """The params' input paths that exist under the repo root (a hub id such as `gpt2` is no path here)."""
    values = [flat_params.get(key) for key in LOCAL_INPUT_KEYS]
    return [str(value) for value in values if isinstance(value, str) and (root / value).exists()]


def untracked_inputs(root: Path, paths: list[str]) -> list[str]:
    """The local input paths (repo-relative) that a queued experiment would not see: neither in git nor under a
    folder whose .dvc file git knows (tracked or staged). Queued experiments run in a copy holding only those."""
    missing = []
    for path in paths:
        candidates = [Path(path), *Path(path).parents][:-1]  # the path itself and each folder above it
        known = [path] + [f"{candidate}.dvc" for candidate in candidates]
        listed = subprocess.run(["git", "ls-files", "--", *known], cwd=root, capture_output=True, text=True)
        if not listed.stdout.strip():
            missing.append(path)
    return missing
