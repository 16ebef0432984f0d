"""MLflow runs left RUNNING by a process that died without closing them (kill -9, the out-of-memory killer, a
power loss): no handler runs then, so without this the UI would show them RUNNING for ever.

Every stage run records the host and pid of its process (`process.host`, `process.pid`; never its environment).
When a stage starts, it looks in its experiment for RUNNING stage runs recorded on this host whose process is gone,
or whose pid now belongs to a process started after the run (pids are reused), and ends each FAILED with an
`error` tag saying why, together with its group run, which the dead stage can no longer close either. Runs of live
processes (a stage running in parallel) and runs recorded on another host, whose process cannot be checked from
here, are left alone. A LoggedModel left PENDING by a run that is no longer RUNNING (killed while logging the
weights) ends FAILED too.
"""

from __future__ import annotations

import logging
import os
import socket

import psutil
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelStatus, Run

logger = logging.getLogger(__name__)

HOST_TAG = "process.host"
PID_TAG = "process.pid"
PARENT_TAG = "mlflow.parentRunId"


def process_tags() -> dict[str, str]:
    """The tags by which a later stage can tell whether this process still owns its run."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def owner_is_gone(pid: int, run_started_ms: int) -> bool:
    """True when no process has `pid`, or it is a zombie, or it started after the run (so cannot have made it)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return process.create_time() * 1000 > run_started_ms
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # another user's live process: it exists, and cannot be looked into further
        return False


def fail_stale_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """End FAILED every stale stage run of this host in the experiment, and its group run; return their ids."""
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    stale = [run for run in running if _is_stale(run)]
    for run in stale:
        tags = run.data.tags
        reason = (
            f"stale: its process (pid {tags[PID_TAG]} on {host}) ended without closing the run, as kill -9, the "
            "out-of-memory killer or a power loss do; marked FAILED when the next stage started"
        )
        _fail(client, run.info.run_id, reason)
        group_id = tags[PARENT_TAG]
        if client.get_run(group_id).info.status == "RUNNING":
            _fail(client, group_id, f"stage {tags.get('dvc.stage', '?')} (run {run.info.run_id}) {reason}")
        logger.warning(
            "MLflow run %s (stage %s, pid %s) was left RUNNING by a process that no longer exists: marked FAILED",
            run.info.run_id, tags.get("dvc.stage", "?"), tags[PID_TAG],
        )  # fmt: skip
    return [run.info.run_id for run in stale]


def _is_stale(run: Run) -> bool:
    pid = run.data.tags.get(PID_TAG, "")
    return PARENT_TAG in run.data.tags and pid.isdigit() and owner_is_gone(int(pid), run.info.start_time)


def _fail(client: MlflowClient, run_id: str, reason: str) -> None:
    client.set_tag(run_id, "error", reason)
    client.set_terminated(run_id, "FAILED")


def fail_stale_models(client: MlflowClient, experiment_id: str) -> list[str]:
    """End FAILED every LoggedModel of the experiment left PENDING by a run that is no longer RUNNING (its process
    died while logging the weights: a live one finalizes it, READY or FAILED, before its run ends); return ids."""
    stale = [
        model for model in _logged_models(client, experiment_id)
        if model.status == LoggedModelStatus.PENDING and model.source_run_id
        and client.get_run(model.source_run_id).info.status != "RUNNING"
    ]  # fmt: skip
    for model in stale:
        reason = (
            f"stale: run {model.source_run_id} ended while logging this model (its process was killed); marked "
            "FAILED when the next stage started"
        )
        client.set_logged_model_tags(model.model_id, {"error": reason})
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        logger.warning("MLflow model %s was left PENDING by run %s, which ended: marked FAILED",
                       model.model_id, model.source_run_id)  # fmt: skip
    return [model.model_id for model in stale]


def _logged_models(client: MlflowClient, experiment_id: str) -> list[LoggedModel]:
    """Every LoggedModel of the experiment, page by page (MLflow 3.17's filter on `status` matches none)."""
    models, token = [], None
    while True:
        page = client.search_logged_models([experiment_id], max_results=1000, page_token=token)
        models += list(page)
        token = page.token
        if not token:
            return models
