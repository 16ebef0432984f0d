"""What became of each point of a study: finished (its metrics as DVC recorded them, and the train stage's timings
from MLflow, since timings differ on every run and so are no DVC output), diverged, failed (with the first line of
why), queued, running, or not queued yet.

Only the study's own experiments count, found by name (grid.point_name): an experiment queued by hand on the same
commit, or by another study, or by the same grid under another study name, is none of this study's points.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from pipeline.errors import UserError
from pipeline.study.plan import Point
from pipeline.study.queue import QueueEntry, first_line_of_why
from pipeline.tracking.runs import newest_run

EVAL_METRICS = "metrics/eval.json"
TRAIN_METRICS = "metrics/train.json"
HARNESS_METRICS = "metrics/harness.json"
SCORES = ("loss", "perplexity", "accuracy")
TO_QUEUE = ("not queued", "failed")
"""Statuses a study run again queues anew. Not `diverged`: the same params diverge again."""


@dataclass(frozen=True)
class Outcome:
    point: Point
    status: str
    """finished, diverged, failed, queued, running or `not queued`."""
    reason: str | None = None
    """Why a point failed or diverged, in one line."""
    train: dict[str, Any] | None = None
    """metrics/train.json of a finished (or diverged) point."""
    evaluation: dict[str, Any] | None = None
    """metrics/eval.json: fine-tuned and base scores per split."""
    harness: dict[str, Any] | None = None
    """metrics/harness.json (lm-eval's scores and retention), where the point's pipeline had the harness stages."""
    timing: dict[str, float] = field(default_factory=dict)
    """From the point's MLflow train run: train_s, tokens_per_s, peak_memory_gib (absent when unknown)."""
    group_run_id: str | None = None


def exp_show(root: Path) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json`'s experiments of HEAD by name (see `parse_exp_show`)."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", "--force"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise UserError(f"`dvc exp show --json` failed in {root}:\n{result.stderr}")
    return parse_exp_show(result.stdout)


def parse_exp_show(text: str) -> dict[str, dict[str, Any]]:
    """Name -> rev, error and metrics (path -> data) of each experiment `dvc exp show --json` lists. A name queued
    again after a failure is listed twice; the run that wrote both metrics files wins."""
    found: dict[str, dict[str, Any]] = {}
    for baseline in json.loads(text):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                metrics = {path: value.get("data") for path, value in (data.get("metrics") or {}).items()}
                entry = {"rev": rev["rev"], "error": rev.get("error"), "metrics": metrics}
                name = rev.get("name") or experiment.get("name")
                if name not in found or _complete(entry):
                    found[name] = entry
    return found


def outcomes(
    points: Sequence[Point],
    shown: dict[str, dict[str, Any]],
    queue: Sequence[QueueEntry],
    read_log: Callable[[str], str],
) -> list[Outcome]:
    """Each point's outcome from what `dvc exp show` and `dvc queue status` say of its name; `read_log(rev)` is
    `dvc queue logs`, read only for failed points."""
    latest = {entry.name: entry for entry in queue}  # oldest first, so a point queued again shows its last try
    results = []
    for point in points:
        experiment, entry = shown.get(point.name), latest.get(point.name)
        if experiment is not None and _complete(experiment):
            metrics = experiment["metrics"]
            evaluation = metrics[EVAL_METRICS]
            bad = [f"{split} {score} {value}" for split, scores in evaluation["finetuned"].items()
                   for score, value in scores.items() if score in SCORES and not _finite(value)]  # fmt: skip
            status, reason = ("diverged", f"not a number: {', '.join(bad)}") if bad else ("finished", None)
            results.append(
                Outcome(point, status, reason, metrics[TRAIN_METRICS], evaluation, harness=metrics.get(HARNESS_METRICS))
            )
        elif entry is not None and entry.status in ("Queued", "Running"):
            results.append(Outcome(point, entry.status.lower()))
        elif entry is not None and entry.status == "Failed":
            reason = first_line_of_why(read_log(entry.rev))
            results.append(Outcome(point, "diverged" if "training diverged" in reason else "failed", reason))
        else:  # never queued, or its experiment was removed since (`dvc exp remove`)
            results.append(Outcome(point, "not queued"))
    return results


def with_timings(results: list[Outcome], client: MlflowClient | None, experiment_name: str | None) -> list[Outcome]:
    """Finished outcomes with the timings and pipeline run of their MLflow train run, where the store has one."""
    experiment = client.get_experiment_by_name(experiment_name) if client and experiment_name else None
    if experiment is None:
        return results
    timed = []
    for result in results:
        if result.train is not None:
            group_run_id, timing = train_timing(client, experiment.experiment_id, result.point.name)
            result = replace(result, timing=timing, group_run_id=group_run_id)
        timed.append(result)
    return timed


def train_timing(client: MlflowClient, experiment_id: str, exp_name: str) -> tuple[str | None, dict[str, float]]:
    """The pipeline (group) run of a DVC experiment's newest finished train run (tag `dvc.exp_name`), and that train
    run's timings."""
    # Stage runs are named after their stage; a group run is named pipeline-<params digest>.
    train_run = newest_run(client, experiment_id, f"tags.`dvc.exp_name` = '{exp_name}' and attributes.run_name = "
                           "'train' and attributes.status = 'FINISHED'")  # fmt: skip
    if train_run is None:
        return None, {}
    metrics = train_run.data.metrics
    timing = {"train_s": metrics.get("duration_s"), "peak_memory_gib": metrics.get("peak_memory_gib")}
    history = client.get_metric_history(train_run.info.run_id, "tokens_per_s")
    if history:
        timing["tokens_per_s"] = sum(point.value for point in history) / len(history)
    group_run_id = train_run.data.tags.get("mlflow.parentRunId")
    return group_run_id, {key: value for key, value in timing.items() if value is not None}


def _complete(experiment: dict[str, Any]) -> bool:
    metrics = experiment["metrics"]
    return not experiment["error"] and bool(metrics.get(EVAL_METRICS)) and bool(metrics.get(TRAIN_METRICS))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
