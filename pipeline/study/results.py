"""A study's points: each finished DVC experiment of the baseline commit, its params and metrics as DVC recorded
them, and the train stage's timings from MLflow (timings differ on every run, so they are no DVC output)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from pipeline.errors import UserError
from pipeline.tracking.runs import newest_run

EVAL_METRICS = "metrics/eval.json"
TRAIN_METRICS = "metrics/train.json"


@dataclass(frozen=True)
class StudyPoint:
    experiment: str
    rev: str
    params: dict[str, Any]
    """params.yaml of the experiment, by section."""
    train: dict[str, Any]
    evaluation: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)
    """From the experiment's MLflow train run: train_s, tokens_per_s, peak_memory_gib (absent when unknown)."""
    group_run_id: str | None = None


def finished_experiments(root: Path) -> list[dict[str, Any]]:
    """`dvc exp show --json`'s experiments of HEAD that finished with both metrics files: each a dict of
    name, rev, params (params.yaml's sections) and metrics (path -> data)."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", "--force"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise UserError(f"`dvc exp show --json` failed in {root}:\n{result.stderr}")
    found = []
    for baseline in json.loads(result.stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                metrics = {path: value.get("data") for path, value in (data.get("metrics") or {}).items()}
                if rev.get("error") or not metrics.get(EVAL_METRICS) or not metrics.get(TRAIN_METRICS):
                    continue  # failed, queued, or still running
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                found.append({"name": rev.get("name") or experiment.get("name"), "rev": rev["rev"],
                              "params": params, "metrics": metrics})  # fmt: skip
    return found


def study_points(root: Path, client: MlflowClient | None, experiment_name: str | None) -> list[StudyPoint]:
    """Every finished experiment as a StudyPoint, with timings where the MLflow store has its train run."""
    points = []
    mlflow_experiment = client.get_experiment_by_name(experiment_name) if client and experiment_name else None
    for found in finished_experiments(root):
        group_run, timing = None, {}
        if mlflow_experiment is not None:
            group_run, timing = train_timing(client, mlflow_experiment.experiment_id, found["name"])
        points.append(StudyPoint(
            experiment=found["name"], rev=found["rev"], params=found["params"],
            train=found["metrics"][TRAIN_METRICS], evaluation=found["metrics"][EVAL_METRICS],
            timing=timing, group_run_id=group_run,
        ))  # fmt: skip
    return points


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
