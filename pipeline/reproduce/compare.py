"""`reproduce compare`: one profile run on a base revision and on HEAD, each in its own fresh clone, for a pull
request's summary. A base that predates the profile, or whose pipeline fails, is reported, not raised."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.data.files import flatten_metrics
from pipeline.offline.profile import profile_path
from pipeline.reproduce.checks import fresh_clone, git_output, read_metrics, run_pipeline

log = logging.getLogger(__name__)


@dataclass
class RevisionRun:
    label: str
    """`base` or `head`."""
    rev: str
    commit: str
    workdir: Path
    problem: str | None = None
    """Why there are no results (no such profile there, or the pipeline failed); None when it ran."""
    metrics: dict[str, object] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)


def flatten_params(params: dict) -> dict[str, object]:
    """params.yaml as dotted keys; lists stay values (`samples.prompts`), as `dvc params diff` shows them."""
    return flatten_metrics(params)  # the same nesting rule as metrics files'


def run_revision(repo: Path, scratch: Path, rev: str, label: str, profile: str) -> RevisionRun:
    workdir = fresh_clone(repo, scratch / label, rev)
    run = RevisionRun(label, rev, git_output(workdir, "rev-parse", "--short", "HEAD"), workdir)
    if not (workdir / profile_path(profile)).is_file():
        run.problem = f"`{rev}` has no `{profile_path(profile)}`: it predates the `{profile}` profile"
        return run
    try:
        run_pipeline(workdir, [], profile)
    except subprocess.CalledProcessError as error:
        run.problem = f"the pipeline failed on `{rev}`: `{' '.join(map(str, error.cmd))}` exited {error.returncode}"
        log.error("%s", run.problem)
    run.metrics = read_metrics(workdir)
    run.params = flatten_params(yaml.safe_load((workdir / "params.yaml").read_text(encoding="utf-8")))
    return run


def compare_revisions(repo: Path, scratch: Path, base: str, profile: str) -> tuple[RevisionRun, RevisionRun]:
    return run_revision(repo, scratch, base, "base", profile), run_revision(repo, scratch, "HEAD", "head", profile)
