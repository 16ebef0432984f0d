"""A busy MLflow store (pipeline/tracking/store_lock.py): a real second process holds SQLite's lock (BEGIN
EXCLUSIVE); a stage waits for it, saying so, and past its limit stops with one paragraph, exit 2, no traceback."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.models import ModelLoggingError, log_finetuned_model
from pipeline.tracking.runs import stage_run
from pipeline.tracking.store_lock import STORE_WAIT_ENV

pytestmark = pytest.mark.usefixtures("tracking_env")

HOLD_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("ROLLBACK")
"""


def hold_lock(store, seconds: float) -> subprocess.Popen:
    """Another process holding the store's exclusive lock for `seconds`; returns once it holds it."""
    database = store["uri"].removeprefix("sqlite:///")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, database, str(seconds)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.fixture(autouse=True)
def existing_store(client):
    client.search_experiments(max_results=1)  # the store's file exists, as after any earlier stage


def test_a_store_locked_for_a_moment_is_waited_for_and_the_log_says_so(store, make_params, monkeypatch, caplog):
    monkeypatch.setenv(STORE_WAIT_ENV, "30")
    holder = hold_lock(store, 2)
    with caplog.at_level(logging.WARNING), stage_run("prepare", make_params(), ("data",)) as run:
        pass
    holder.wait()
    assert run.client.get_run(run.run_id).info.status == "FINISHED"
    assert f"the MLflow store {store['uri'].removeprefix('sqlite:///')} is locked by another process: waiting" in (
        caplog.text
    )


def test_a_store_locked_past_the_wait_stops_the_stage_with_one_paragraph_and_exit_2(store, make_params, monkeypatch,
                                                                                   capsys):  # fmt: skip
    monkeypatch.setenv(STORE_WAIT_ENV, "1")
    holder = hold_lock(store, 10)
    try:
        with pytest.raises(SystemExit) as exited, exit_on_user_error(), stage_run("prepare", make_params(), ("data",)):
            pytest.fail("the stage body must not run")
    finally:
        holder.kill()
        holder.wait()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    database = store["uri"].removeprefix("sqlite:///")
    assert f"the MLflow store {database} is locked by another process (still after waiting 1 s)" in err
    assert f"fuser {database}" in err and f"set {STORE_WAIT_ENV}=<seconds>" in err
    assert "Traceback" not in err and "OperationalError" not in err


def test_a_store_locked_when_the_model_is_logged_fails_the_stage_saying_the_rerun_only_logs(
    store, make_params, monkeypatch, tmp_path, client
):
    monkeypatch.setenv(STORE_WAIT_ENV, "1")
    params = make_params()
    with pytest.raises(ModelLoggingError) as caught, stage_run("train", params, ("train",)) as run:
        holder = hold_lock(store, 3)  # taken as training ends; longer than the stage waits
        log_finetuned_model(run, tmp_path / "finetuned", params)
    holder.wait()
    message = str(caught.value)
    assert f"{tmp_path / 'finetuned'} is written, but logging it to MLflow failed: the MLflow store" in message
    assert "is locked by another process" in message and "saves and logs the model without training again" in message
    # Once the lock went, the failure was recorded (MLflow's own 20 s wait covered the rest of it).
    ended = client.get_run(run.run_id)
    assert ended.info.status == "FAILED" and "ModelLoggingError" in ended.data.tags["error"]


def test_any_model_logging_failure_fails_the_stage(make_params, monkeypatch, tmp_path):
    def broken(*args):
        raise RuntimeError("artifact store unreachable")

    monkeypatch.setattr("pipeline.tracking.models._log_or_link", broken)
    params = make_params()
    with pytest.raises(ModelLoggingError) as caught, stage_run("train", params, ("train",)) as run:
        log_finetuned_model(run, Path(tmp_path), params)
    assert "logging it to MLflow failed: RuntimeError: artifact store unreachable. The stage fails" in str(caught.value)


def test_an_evaluation_that_cannot_be_recorded_on_the_model_fails_the_stage(make_params, monkeypatch, tmp_path):
    from pipeline.tracking.models import record_evaluation

    def broken(*args):
        raise RuntimeError("store gone")

    monkeypatch.setattr("pipeline.tracking.models.find_logged_model", broken)
    scores = {"validation": {"perplexity": 10.0}}
    report = {"finetuned": scores, "base": scores}
    params = make_params()
    with pytest.raises(ModelLoggingError) as caught, stage_run("evaluate", params, ("evaluate",)) as run:
        record_evaluation(run, tmp_path / "finetuned", params, report, {"trainable": 1, "total": 2})
    assert "recording it on its MLflow model failed: RuntimeError: store gone" in str(caught.value)
    assert "the rerun evaluates again and records it" in str(caught.value)
