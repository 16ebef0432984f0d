"""How the train stage ends (pipeline/train.py), with the training itself replaced by a stand-in: its checkpoints
go only once every output is written, the model logged and its MLflow run ended, so a failure or a kill before that
leaves the finished checkpoint (the rerun saves and logs without training); a diverged run saves nothing."""

import math
from types import SimpleNamespace

import pytest

from pipeline import train
from pipeline.errors import UserError
from pipeline.tracking.models import ModelLoggingError
from pipeline.tracking.store_lock import STORE_WAIT_ENV
from pipeline.training.checkpoints import CheckpointStore
from pipeline.training.resumable import StepLog
from tests.test_store_lock import hold_lock

pytestmark = pytest.mark.usefixtures("tracking_env")


@pytest.fixture
def stage(tmp_path, monkeypatch, make_params):
    """`stage(ending)` runs train's main with a fine_tune that leaves a finished checkpoint, then calls
    `ending(run)` where the real one logs the model; returns the checkpoint folder."""
    params = make_params()
    monkeypatch.setattr(train, "load_params", lambda path, load_model_config=None: params)
    (tmp_path / "tokenized").mkdir()
    argv = ["--tokenized", str(tmp_path / "tokenized"), "--checkpoints", str(tmp_path / "checkpoints")]
    for option in ("prefix-cache", "out", "curve", "validation-curve", "throughput", "metrics"):
        argv += [f"--{option}", str(tmp_path / option)]

    def run(ending):
        def fine_tune(args, params, run):
            store = CheckpointStore(args.checkpoints, "key", keep=2)
            (store.folder / "checkpoint-39").mkdir(parents=True)
            ending(run)
            return {"train_loss": 1.0, "steps": 39}, SimpleNamespace(trainable=1, total=2), store

        monkeypatch.setattr(train, "fine_tune", fine_tune)
        train.main(argv)

    run.checkpoint = tmp_path / "checkpoints" / "key" / "checkpoint-39"
    return run


def test_a_recorded_run_discards_its_checkpoints(stage):
    stage(lambda run: None)
    assert not stage.checkpoint.parent.exists()


def test_a_model_that_could_not_be_logged_fails_the_stage_and_keeps_the_finished_checkpoint(stage):
    def logging_fails(run):
        raise ModelLoggingError("models/finetuned is written, but logging it to MLflow failed: ...")

    with pytest.raises(SystemExit) as exited:
        stage(logging_fails)
    assert exited.value.code == 2 and stage.checkpoint.is_dir()


def test_a_store_locked_as_the_run_ends_fails_the_stage_and_keeps_the_checkpoint(stage, store, monkeypatch, capsys):
    monkeypatch.setenv(STORE_WAIT_ENV, "1")
    holders = []
    with pytest.raises(SystemExit) as exited:
        stage(lambda run: holders.append(hold_lock(store, 3)))
    holders[0].wait()
    assert exited.value.code == 2 and stage.checkpoint.is_dir()
    assert "is locked by another process (still after waiting 1 s)" in capsys.readouterr().err


def test_a_diverged_run_is_refused_naming_the_step_and_the_params_to_change(make_params):
    params = make_params()
    assert StepLog(losses=[2.0, 1.5]).first_non_finite_step() is None
    train.check_converging(StepLog(losses=[2.0, 1.5]), params)
    diverged = StepLog(losses=[2.0, math.inf, math.nan])
    assert diverged.first_non_finite_step() == 2
    with pytest.raises(UserError) as caught:
        train.check_converging(diverged, params)
    assert "training diverged: the loss was inf at step 2 of 3" in str(caught.value)
    assert "no model is saved or logged; lower train.learning_rate (now 5e-05)" in str(caught.value)
