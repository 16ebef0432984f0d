"""MLflow tracking for the pipeline's stages: one run per stage, nested under one run per pipeline execution.

`dvc repro` starts each stage as its own process, so the stages of one execution find each other through MLflow:
each computes a group key (params digest, git commit, dirty flag, DVC experiment name) and joins the newest RUNNING
parent ("group") run with that key, or creates it. The group run holds *all* params and, from the last stage
(`closes_group=True`, which also sets it FINISHED), the headline metrics, so the MLflow UI compares configurations
row by row without opening child runs. A stage's own run is a child with the params it reads, its metrics,
artifacts and the DVC hash of each input. A failing stage ends its run and the group FAILED (KILLED when
interrupted), so a retry starts a new group. A stage run by hand that succeeds without closing leaves the group
RUNNING for the next. A stage run by DVC ends the group FINISHED whatever it is, because DVC skips the stages after
one whose outputs came out unchanged, the last included; the next stage of the same DVC process (tag
`pipeline.dvc_process`, pipeline/tracking/dvc_process.py) joins that group and sets it RUNNING again. A stage
killed too hard to do any of that (kill -9) leaves both RUNNING until the next stage marks them FAILED
(pipeline/tracking/stale_runs.py, which says how it recognises them).

The store is SQLite under `<repo root>/mlruns/` (MLflow 3.x refuses a plain `./mlruns` file store unless forced).
The root comes from `DVC_ROOT`, which DVC sets to the *original* repo even when `dvc exp run --temp/--queue` runs
the stage in a temporary copy, so experiments land in the same store as plain runs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from pipeline.errors import UserError
from pipeline.params import Params
from pipeline.tracking.dvc_process import dvc_process
from pipeline.tracking.lineage import INPUT_TAG_PREFIX, git, group_key, input_tags, lineage_tags, redact
from pipeline.tracking.stale_runs import fail_stale_models, fail_stale_runs, process_tags
from pipeline.tracking.store_lock import (
    StoreLockedError,
    is_locked,
    locked_error,
    locked_store_as_user_error,
    store_wait_s,
    wait_for_store,
)

logger = logging.getLogger(__name__)

# Without this tag MLflow 3.x's UI opens the experiment in its GenAI view instead of the model-training one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
GROUP_KEY_TAG = "pipeline.group_key"
DVC_PROCESS_TAG = "pipeline.dvc_process"
NOTE_TAG = "mlflow.note.content"
# One sample every 5 s: the offline profile trains for tens of seconds, GPT-2 small for minutes to hours.
SYSTEM_METRICS_INTERVAL_S = 5
ERROR_TAG_CHARS = 500
# How long a stage waits for another process creating the store (its migrations take seconds).
STORE_LOCK_TIMEOUT_S = 120


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
    ends_group: bool = False
    """Whether the stage ends its group FINISHED however it is marked: a stage run by DVC, which may skip the rest."""

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

    def describe(self, text: str, *, group: bool = False) -> None:
        """The run's description (the UI's Description box and runs-table tooltip); `group`: the group run's too."""
        for run_id in (self.run_id, self.group_run_id) if group else (self.run_id,):
            self.client.set_tag(run_id, NOTE_TAG, text)


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
    system_metrics: bool = False,
) -> Iterator[StageRun]:
    """Track one stage as a child run of its pipeline execution's group run (see the module docstring).

    Logs the params `reads` names (sections or dotted keys, as in dvc.yaml), lineage tags, one `input.<path>` tag
    per input (its dvc.lock md5), the same inputs as MLflow datasets (md5 as digest) and `duration_s`; with
    `system_metrics`, MLflow's CPU, memory (and GPU) samples while the stage runs. Any exception ends the stage run
    and the group run FAILED (KILLED for Ctrl-C or a non-zero `sys.exit`), with an `error` tag, and propagates.
    """
    with locked_store_as_user_error(tracking_uri()):
        run = _open_runs(stage, params, reads, inputs)
    started = time.perf_counter()
    monitor = _start_system_metrics(run) if system_metrics else None
    try:
        yield run
    except BaseException as error:
        _stop_system_metrics(monitor)
        status = _abnormal_status(error)
        if status is None:  # sys.exit(0) inside a stage is a success
            _finish(run, started, closes_group)
        else:
            _abort(run, started, status, error)
        raise
    _stop_system_metrics(monitor)
    _finish(run, started, closes_group)


def _start_system_metrics(run: StageRun):
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=run.client.tracking_uri
    )
    monitor.start()  # a thread that only reads psutil/NVML counters: the stage's computation is untouched
    return monitor


def _stop_system_metrics(monitor) -> None:
    if monitor is not None:
        try:
            monitor.finish()
        except Exception:
            logger.exception("Could not stop MLflow's system metrics monitor")


def _open_runs(stage: str, params: Params, reads: Sequence[str], inputs: Sequence[Path]) -> StageRun:
    root = repo_root()
    lineage = lineage_tags(root, params, stage)
    inputs_hashed = input_tags(root, inputs)  # before any run exists, so a hashing error leaves nothing RUNNING
    client = tracking_client(root)
    experiment_id = get_or_create_experiment(client, params.mlflow.experiment, root)
    fail_stale_runs(client, experiment_id)  # first, so a group that a killed stage left RUNNING is not joined
    fail_stale_models(client, experiment_id)  # after: a model whose run was just failed is left PENDING no more
    process = dvc_process()
    group_run_id = _group_run_id(client, experiment_id, params, lineage, group_key(root, params, lineage), process)
    tags = {**lineage, **inputs_hashed, **process_tags(), "mlflow.parentRunId": group_run_id}
    run_id = client.create_run(experiment_id, run_name=stage, tags=tags).info.run_id
    read = {key: value for key, value in params.flat().items() if any(_names(name, key) for name in reads)}
    _log_params(client, run_id, read)
    _log_datasets(client, run_id, stage, inputs_hashed)
    logger.info("MLflow run %s (stage %s) in group %s at %s", run_id, stage, group_run_id, tracking_uri(root))
    return StageRun(client, run_id, group_run_id, ends_group=process is not None)


def _log_datasets(client: MlflowClient, run_id: str, stage: str, inputs_hashed: Mapping[str, str]) -> None:
    """Each input as an MLflow dataset input (the runs table's Dataset column): its path, and its DVC md5 as the
    digest, so two runs read the same data exactly when their digests agree."""
    datasets = [
        DatasetInput(
            Dataset(
                name=key.removeprefix(INPUT_TAG_PREFIX),
                digest=md5,
                source_type="local",
                source=key.removeprefix(INPUT_TAG_PREFIX),
            ),
            tags=[InputTag("mlflow.data.context", stage)],
        )
        for key, md5 in inputs_hashed.items()
    ]
    if datasets:
        client.log_inputs(run_id, datasets=datasets)


def _names(name: str, key: str) -> bool:
    """Whether dvc.yaml's params entry `name` (a section, or a dotted key) covers the flat key `key`."""
    return key == name or key.startswith(name + ".")


def tracking_client(root: Path) -> MlflowClient:
    """A client of the project's store (`tracking_uri`), creating the SQLite folder where that is the store."""
    if "MLFLOW_TRACKING_URI" not in os.environ:
        (root / "mlruns").mkdir(exist_ok=True)  # SQLite never creates a missing folder; MLflow 3.17 does, unasked
    # MLflow logs every schema migration of a new store at INFO; a stage's log should show the stage.
    for name in ("mlflow.store.db.utils", "alembic"):
        if logging.getLogger(name).getEffectiveLevel() == logging.INFO:  # a DEBUG asked for stays
            logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri(root)
    wait_for_store(uri)  # before MLflow's own 20 s wait, which ends in a traceback (pipeline/tracking/store_lock.py)
    if uri.startswith("sqlite:///"):
        return _open_sqlite_store(uri, Path(uri.removeprefix("sqlite:///")))
    return MlflowClient(tracking_uri=uri)


def _open_sqlite_store(uri: str, database: Path) -> MlflowClient:
    """Open (and on first use create) the store one process at a time, in WAL mode, so that parallel `dvc queue`
    workers share it.

    The client opens its store when constructed, and two processes creating a new store at once both run its
    migrations, so one fails (alembic: "expected to match one row"). In SQLite's default journal mode a writer also
    blocks every reader; WAL lets readers go on while one process writes, which leaves MLflow's own 20 s busy
    timeout to cover writers queueing behind each other (https://sqlite.org/wal.html).
    """
    with FileLock(database.with_name(database.name + ".lock"), timeout=STORE_LOCK_TIMEOUT_S):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # a lazily opened store would be created here
        with closing(sqlite3.connect(database, timeout=STORE_LOCK_TIMEOUT_S)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")  # persistent: a property of the database file
    return client


def get_or_create_experiment(client: MlflowClient, name: str, root: Path) -> str:
    """The id of experiment `name`, created when missing (artifact location: `_artifact_location`)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=_artifact_location(client, root), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:
            # A parallel worker may have created it since the lookup; anything else is still an error.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"mlflow.experiment: experiment {name!r} is deleted in {client.tracking_uri}; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` or choose another name"
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def _artifact_location(client: MlflowClient, root: Path) -> str | None:
    """Where a new experiment keeps its artifacts: the repo's `mlruns/artifacts` for a store the client opens
    itself, because MLflow's default there is `./mlruns` under the cwd, a temporary copy of the repo under
    `dvc exp run --temp`; None for a tracking server, which then chooses (with `--serve-artifacts`, its own
    `--artifacts-destination`, so every client's artifacts land in one place rather than on its own disk)."""
    if urlparse(client.tracking_uri).scheme in ("http", "https"):
        return None
    return (root / "mlruns" / "artifacts").as_uri()


def newest_run(client: MlflowClient, experiment_id: str, filter_string: str) -> Run | None:
    """The most recently started run of the experiment that matches the MLflow search filter, if any."""
    found = client.search_runs(
        [experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    return found[0] if found else None


def _group_run_id(
    client: MlflowClient, experiment_id: str, params: Params, lineage: dict[str, str], key: str, process: str | None
) -> str:
    """The group to join: under DVC, the one this DVC process opened, RUNNING again if its last stage ended it;
    by hand, the newest RUNNING one with the key. Else a new one."""
    query = f"tags.`{GROUP_KEY_TAG}` = '{key}' and "
    query += f"tags.`{DVC_PROCESS_TAG}` = '{process}'" if process else "attributes.status = 'RUNNING'"
    found = newest_run(client, experiment_id, query)
    if found and found.info.status in ("RUNNING", "FINISHED"):  # not a group that a failed stage ended
        if found.info.status == "FINISHED":
            client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    tags = {**lineage, GROUP_KEY_TAG: key} | ({DVC_PROCESS_TAG: process} if process else {})
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
        wait_for_store(run.client.tracking_uri)
        run.log_metrics({"duration_s": time.perf_counter() - started})
        run.client.set_terminated(run.run_id, "FINISHED")
    except StoreLockedError as error:
        _abort(run, started, "FAILED", error)
        raise
    except BaseException as error:
        if is_locked(error):
            locked = locked_error(run.client.tracking_uri, store_wait_s())
            _abort(run, started, "FAILED", locked)
            raise locked from None
        _terminate(run, "FAILED")  # a stage run must never be left RUNNING, even when MLflow itself fails
        raise
    if closes_group or run.ends_group:
        run.client.set_terminated(run.group_run_id, "FINISHED")


def _abort(run: StageRun, started: float, status: str, error: BaseException) -> None:
    if isinstance(error, StoreLockedError):  # each write would wait 20 s more and fail the same way
        logger.warning("MLflow runs %s and %s stay RUNNING (their store is locked); the next stage that starts "
                       "marks them FAILED", run.run_id, run.group_run_id)  # fmt: skip
        return
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
