"""MLflow tracking for the pipeline's stages: one run per stage, nested under one run per pipeline execution.

`dvc repro` starts each stage as its own process, so the stages of one execution find each other through MLflow:
each computes a group key (params digest, git commit, dirty flag, DVC experiment name) and joins the newest RUNNING
parent ("group") run with that key, or creates it. The group run holds *all* params and, from the last stage
(`closes_group=True`, which also sets it FINISHED), the headline metrics, so the MLflow UI compares configurations
row by row without opening child runs. A stage's own run is a child with the params it reads, its metrics,
artifacts and the DVC hash of each input. A failing stage ends its run and the group FAILED (KILLED when
interrupted), so a retry starts a new group; a stage that succeeds without closing leaves the group RUNNING. A
stage killed too hard to do any of that (kill -9) leaves both RUNNING until the next stage marks them FAILED
(pipeline/tracking/stale_runs.py, which says how it recognises them).

The store is SQLite under `<repo root>/mlruns/` (MLflow 3.x refuses a plain `./mlruns` file store unless forced).
The root comes from `DVC_ROOT`, which DVC sets to the *original* repo even when `dvc exp run --temp/--queue` runs
the stage in a temporary copy, so experiments land in the same store as plain runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pipeline.errors import UserError
from pipeline.params import Params
from pipeline.tracking.lineage import git, group_key, input_tags, lineage_tags, redact
from pipeline.tracking.stale_runs import fail_stale_runs, process_tags

logger = logging.getLogger(__name__)

# Without this tag MLflow 3.x's UI opens the experiment in its GenAI view instead of the model-training one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
GROUP_KEY_TAG = "pipeline.group_key"
ERROR_TAG_CHARS = 500


def repo_root() -> Path:
    """The repo root: `DVC_ROOT` under DVC, else git's top level for the cwd, else the cwd."""
    if dvc_root := os.environ.get("DVC_ROOT"):
        return Path(dvc_root).resolve()
    toplevel = git(Path.cwd(), "rev-parse", "--show-toplevel")
    return Path(toplevel) if toplevel else Path.cwd().resolve()


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the SQLite store `<root>/mlruns/mlflow.db`."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = root if root is not None else repo_root()
    return f"sqlite:///{(root / 'mlruns' / 'mlflow.db').as_posix()}"


@dataclass(frozen=True)
class StageRun:
    """Handle on a stage's MLflow run and its group run, yielded by `stage_run`."""

    client: MlflowClient
    run_id: str
    group_run_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """On the stage's run."""
        _log_metrics(self.client, self.run_id, metrics, step)

    def log_group_metrics(self, metrics: Mapping[str, float]) -> None:
        """On the group run, where the UI shows them next to every param of the configuration."""
        _log_metrics(self.client, self.group_run_id, metrics, None)

    def log_artifact(self, path: Path) -> None:
        """A file, or a directory (kept under its own name), on the stage's run."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
        else:
            self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """On the stage's run."""
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


class UntrackedRun(StageRun):
    """A StageRun that logs nothing: what the ranks other than 0 of a multi-process train hold, so that one
    execution has one train run (rank 0's) whose curve is the whole batch's."""

    def __init__(self) -> None:
        super().__init__(client=None, run_id="", group_run_id="")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_group_metrics(self, metrics: Mapping[str, float]) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass


@contextmanager
def stage_run(
    stage: str,
    params: Params,
    reads: Sequence[str],
    inputs: Sequence[Path] = (),
    *,
    closes_group: bool = False,
) -> Iterator[StageRun]:
    """Track one stage as a child run of its pipeline execution's group run (see the module docstring).

    Logs the params `reads` names (sections or dotted keys, as in dvc.yaml), lineage tags, one `input.<path>` tag
    per input (its dvc.lock md5) and `duration_s`. Any exception ends the stage run and the group run FAILED
    (KILLED for Ctrl-C or a non-zero `sys.exit`), with an `error` tag, and propagates.
    """
    run = _open_runs(stage, params, reads, inputs)
    started = time.perf_counter()
    try:
        yield run
    except BaseException as error:
        status = _abnormal_status(error)
        if status is None:  # sys.exit(0) inside a stage is a success
            _finish(run, started, closes_group)
        else:
            _abort(run, started, status, error)
        raise
    _finish(run, started, closes_group)


def _open_runs(stage: str, params: Params, reads: Sequence[str], inputs: Sequence[Path]) -> StageRun:
    root = repo_root()
    lineage = lineage_tags(root, params, stage)
    inputs_hashed = input_tags(root, inputs)  # before any run exists, so a hashing error leaves nothing RUNNING
    client = _client(root)
    experiment_id = _experiment_id(client, params.mlflow.experiment, root)
    fail_stale_runs(client, experiment_id)  # first, so a group that a killed stage left RUNNING is not joined
    group_run_id = _group_run_id(client, experiment_id, params, lineage, group_key(root, params, lineage))
    tags = {**lineage, **inputs_hashed, **process_tags(), "mlflow.parentRunId": group_run_id}
    run_id = client.create_run(experiment_id, run_name=stage, tags=tags).info.run_id
    read = {key: value for key, value in params.flat().items() if any(_names(name, key) for name in reads)}
    _log_params(client, run_id, read)
    logger.info("MLflow run %s (stage %s) in group %s at %s", run_id, stage, group_run_id, tracking_uri(root))
    return StageRun(client, run_id, group_run_id)


def _names(name: str, key: str) -> bool:
    """Whether dvc.yaml's params entry `name` (a section, or a dotted key) covers the flat key `key`."""
    return key == name or key.startswith(name + ".")


def _client(root: Path) -> MlflowClient:
    if "MLFLOW_TRACKING_URI" not in os.environ:
        (root / "mlruns").mkdir(exist_ok=True)  # SQLite never creates a missing folder; MLflow 3.17 does, unasked
    # MLflow logs every schema migration of a new store at INFO; a stage's log should show the stage.
    for name in ("mlflow.store.db.utils", "alembic"):
        if logging.getLogger(name).getEffectiveLevel() == logging.INFO:  # a DEBUG asked for stays
            logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri(root))


def _experiment_id(client: MlflowClient, name: str, root: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # Explicit, because MLflow's default artifact root for a SQLite store is `./mlruns` under the cwd, which
        # is a temporary copy of the repo under `dvc exp run --temp`.
        artifacts = (root / "mlruns" / "artifacts").as_uri()
        return client.create_experiment(name, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"mlflow.experiment: experiment {name!r} is deleted in {client.tracking_uri}; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` or choose another name"
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def _group_run_id(client: MlflowClient, experiment_id: str, params: Params, lineage: dict[str, str], key: str) -> str:
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{GROUP_KEY_TAG}` = '{key}' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if running:
        return running[0].info.run_id
    tags = {**lineage, GROUP_KEY_TAG: key}
    run_id = client.create_run(experiment_id, run_name=f"pipeline-{params.digest()[:8]}", tags=tags).info.run_id
    _log_params(client, run_id, params.flat())
    logger.info("Started MLflow group run %s for params %s", run_id, params.digest())
    return run_id


def _log_params(client: MlflowClient, run_id: str, values: Mapping[str, object]) -> None:
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in values.items()])


def _log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int | None) -> None:
    timestamp = int(time.time() * 1000)
    entries = [Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()]
    client.log_batch(run_id, metrics=entries)


def _abnormal_status(error: BaseException) -> str | None:
    if isinstance(error, SystemExit) and not error.code:
        return None
    return "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"


def _finish(run: StageRun, started: float, closes_group: bool) -> None:
    try:
        run.log_metrics({"duration_s": time.perf_counter() - started})
        run.client.set_terminated(run.run_id, "FINISHED")
    except BaseException:
        _terminate(run, "FAILED")  # a stage run must never be left RUNNING, even when MLflow itself fails
        raise
    if closes_group:
        run.client.set_terminated(run.group_run_id, "FINISHED")


def _abort(run: StageRun, started: float, status: str, error: BaseException) -> None:
    message = redact(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    try:
        run.client.set_tag(run.run_id, "error", message[:ERROR_TAG_CHARS])
        run.log_metrics({"duration_s": time.perf_counter() - started})
    except Exception:
        logger.exception("Could not record the failure of MLflow run %s", run.run_id)
    _terminate(run, status)


def _terminate(run: StageRun, status: str) -> None:
    """End the stage run and its group; a tracking error here must not hide the stage's own error."""
    for run_id in (run.run_id, run.group_run_id):
        try:
            run.client.set_terminated(run_id, status)
        except Exception:
            logger.exception("Could not set MLflow run %s to %s", run_id, status)
