"""The MLflow run of a study: its grid, its report files, and its pipeline runs nested under it.

One study run per study name and commit: rebuilding the report (`python -m pipeline.study --report`) or resuming the
study logs to the same run again rather than adding one. Each point's pipeline (group) run becomes its child and
carries the study's name (tag `pipeline.study`), so the runs table folds a study into one row that opens onto its
points, each of which opens onto its stages, and a search finds a study's runs by name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pipeline.tracking.lineage import git
from pipeline.tracking.runs import newest_run

STUDY_TAG = "pipeline.study"
PARENT_TAG = "mlflow.parentRunId"


def log_study_run(
    client: MlflowClient,
    experiment_id: str,
    root: Path,
    study_name: str,
    settings: Mapping[str, str],
    summary: Mapping[str, float],
    files: Sequence[Path],
    group_run_ids: Sequence[str],
) -> str:
    """Create or reuse the study run, log `settings` as params, `summary` as metrics and `files` as artifacts,
    adopt the pipeline runs, and end it FINISHED; returns its id."""
    commit = git(root, "rev-parse", "HEAD") or ""
    # Its points' pipeline runs carry the same two tags: the run name tells the study's own run apart.
    same_study = (f"tags.`{STUDY_TAG}` = '{study_name}' and tags.`git.commit` = '{commit}' and "
                  f"attributes.run_name = 'study-{study_name}'")  # fmt: skip
    existing = newest_run(client, experiment_id, same_study)
    if existing:
        run_id = existing.info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        note = (f"Study {study_name!r}: one child run per point (a configuration at one learning rate and seed); "
                "the report (study.md, study.csv, summary.csv, study.png) is among the artifacts")  # fmt: skip
        tags = {STUDY_TAG: study_name, "git.commit": commit, "mlflow.note.content": note}
        run_id = client.create_run(experiment_id, run_name=f"study-{study_name}", tags=tags).info.run_id
        client.log_batch(run_id, params=[Param(key, str(value)) for key, value in settings.items()])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in summary.items()])
    for path in files:
        client.log_artifact(run_id, str(path))
    for group_run_id in group_run_ids:
        tags = [RunTag(PARENT_TAG, run_id), RunTag("pipeline.study_run_id", run_id), RunTag(STUDY_TAG, study_name)]
        client.log_batch(group_run_id, tags=tags)
    client.set_terminated(run_id, "FINISHED")
    return run_id
