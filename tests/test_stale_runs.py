"""Stale runs (pipeline/tracking/stale_runs.py): a stage killed too hard to close its run (kill -9) leaves it
RUNNING; the next stage that starts ends it, and its group, FAILED."""

import os
import socket
import subprocess
import time

import psutil
import pytest

from pipeline.tracking.runs import stage_run

pytestmark = pytest.mark.usefixtures("tracking_env")


def _left_running(client, experiment_id, pid: int, host: str, started_ms: int) -> tuple[str, str]:
    """A stage run and its group as a stage killed with SIGKILL leaves them: RUNNING, with its process tags."""
    group = client.create_run(experiment_id, run_name="pipeline-x").info.run_id
    tags = {"mlflow.parentRunId": group, "dvc.stage": "train", "process.host": host, "process.pid": str(pid)}
    stage = client.create_run(experiment_id, start_time=started_ms, tags=tags, run_name="train").info.run_id
    return stage, group


def _dead_pid() -> int:
    """The pid of a process that has ended and been reaped: what a stage killed with SIGKILL leaves in its tags."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def test_the_next_stage_fails_runs_whose_process_is_gone_and_their_groups(client, make_params):
    params = make_params()
    experiment_id = client.create_experiment(params.mlflow.experiment)
    dead_pid = _dead_pid()
    now_ms = int(time.time() * 1000)
    this_process_started_ms = int(psutil.Process().create_time() * 1000)
    host = socket.gethostname()
    dead = _left_running(client, experiment_id, dead_pid, host, now_ms)
    reused = _left_running(client, experiment_id, os.getpid(), host, this_process_started_ms - 60_000)
    alive = _left_running(client, experiment_id, os.getpid(), host, now_ms)
    elsewhere = _left_running(client, experiment_id, dead_pid, "another-host", now_ms)

    with stage_run("train", params, ("train",)) as run:
        pass

    for stage_id, group_id in (dead, reused):
        stage, group = client.get_run(stage_id), client.get_run(group_id)
        assert (stage.info.status, group.info.status) == ("FAILED", "FAILED")
        assert stage.data.tags["error"].startswith("stale: its process (pid ")
        assert stage_id in group.data.tags["error"]
    for stage_id, group_id in (alive, elsewhere):
        assert {client.get_run(run_id).info.status for run_id in (stage_id, group_id)} == {"RUNNING"}
    tags = client.get_run(run.run_id).data.tags
    assert (tags["process.host"], tags["process.pid"]) == (host, str(os.getpid()))
    assert run.group_run_id not in {group for _, group in (dead, reused, alive, elsewhere)}


def test_a_model_left_pending_by_a_killed_run_ends_failed_and_one_being_logged_stays(client, make_params):
    from mlflow.entities import LoggedModelStatus

    params = make_params()
    experiment_id = client.create_experiment(params.mlflow.experiment)
    dead_pid = _dead_pid()
    now_ms = int(time.time() * 1000)
    host = socket.gethostname()
    killed_stage, _ = _left_running(client, experiment_id, dead_pid, host, now_ms)  # kill -9 while logging
    live_stage, _ = _left_running(client, experiment_id, os.getpid(), host, now_ms)  # a parallel stage logging
    orphan = client.create_logged_model(experiment_id, name="finetuned", source_run_id=killed_stage).model_id
    logging_now = client.create_logged_model(experiment_id, name="finetuned", source_run_id=live_stage).model_id

    with stage_run("train", params, ("train",)):
        pass

    failed = client.get_logged_model(orphan)
    assert failed.status == LoggedModelStatus.FAILED
    assert failed.tags["error"].startswith(f"stale: run {killed_stage} ended while logging this model")
    assert client.get_logged_model(logging_now).status == LoggedModelStatus.PENDING
