import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from pipeline.cli import exit_on_user_error
from pipeline.errors import UserError
from pipeline.hashing import dvc_md5
from pipeline.params import load_params
from pipeline.tracking import repo_root, stage_run, tracking_uri

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
DVC_ENV = ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI")


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run([*command, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _init_repo(repo: Path) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / ".gitignore").write_text("/data/\n/mlruns/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".gitignore")
    _git(repo, "commit", "-qm", "init")
    return repo


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store and one clean git repo for the module: a new store costs seconds of migrations.

    Tests stay independent because each logs to its own experiment (see `make_params`)."""
    base = tmp_path_factory.mktemp("tracking")
    return {"uri": f"sqlite:///{base}/mlflow.db", "repo": _init_repo(base / "repo")}


@pytest.fixture(autouse=True)
def tracking_env(store, monkeypatch):
    for name in DVC_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setenv("DVC_ROOT", str(store["repo"]))
    monkeypatch.chdir(store["repo"])


@pytest.fixture
def client(store):
    return MlflowClient(tracking_uri=store["uri"])


@pytest.fixture
def make_params(request, tmp_path):
    """Params from the project's params.yaml, in an experiment of this test's own, with dotted-key overrides."""

    def make(overrides=None, name="params.yaml"):
        raw = yaml.safe_load(PROJECT_PARAMS.read_text())
        raw["mlflow"]["experiment"] = request.node.name
        for dotted, value in (overrides or {}).items():
            section, key = dotted.split(".")
            raw[section][key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return load_params(path)

    return make


def test_stage_run_logs_its_sections_lineage_and_duration(client, store, make_params):
    params = make_params()
    with stage_run("prepare", params, ("data", "mlflow")) as run:
        pass

    logged = client.get_run(run.run_id)
    expected = {key: str(value) for key, value in params.flat().items() if key.startswith(("data.", "mlflow."))}
    assert logged.data.params == expected
    commit = _git(store["repo"], "rev-parse", "HEAD")
    expected_tags = {
        "git.commit": commit,
        "mlflow.source.git.commit": commit,
        "git.dirty": "false",
        "params.hash": params.digest(),
        "dvc.stage": "prepare",
        "mlflow.runName": "prepare",
        "mlflow.parentRunId": run.group_run_id,
    }
    assert expected_tags.items() <= logged.data.tags.items()
    assert "dvc.exp_name" not in logged.data.tags
    assert logged.data.metrics["duration_s"] >= 0
    assert logged.info.status == "FINISHED"
    assert client.get_run(run.group_run_id).info.status == "RUNNING"  # left for the next stage to join


def test_no_absolute_path_in_params_or_tags(client, store, make_params):
    with stage_run("prepare", make_params(), ("data", "mlflow"), [store["repo"] / ".gitignore"]) as run:
        pass
    for run_id in (run.run_id, run.group_run_id):
        data = client.get_run(run_id).data
        values = [*data.params.values(), *data.tags.values(), *data.tags.keys()]
        assert not [value for value in values if str(store["repo"]) in value or str(Path.home()) in value]


def test_stages_with_the_same_params_join_one_group_holding_all_params(client, make_params):
    params = make_params()
    with stage_run("prepare", params, ("data",)) as first:
        pass
    with stage_run("tokenize", params, ("tokenize",)) as second:
        pass

    assert first.group_run_id == second.group_run_id != first.run_id
    group = client.get_run(first.group_run_id)
    assert group.data.params == {key: str(value) for key, value in params.flat().items()}
    assert group.info.run_name == f"pipeline-{params.digest()[:8]}"
    assert group.data.tags["params.hash"] == params.digest()
    assert "mlflow.parentRunId" not in group.data.tags
    children = client.search_runs(
        [group.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{group.info.run_id}'"
    )
    assert {child.info.run_name for child in children} == {"prepare", "tokenize"}


def test_closing_stage_finishes_the_group_with_its_metrics(client, make_params):
    params = make_params()
    with stage_run("train", params, ("train",)) as train:
        train.log_metrics({"train_loss": 3.5}, step=10)
    with stage_run("evaluate", params, ("evaluate",), closes_group=True) as evaluate:
        evaluate.log_group_metrics({"eval_loss": 3.25, "eval_perplexity": 25.8})

    group = client.get_run(evaluate.group_run_id)
    assert evaluate.group_run_id == train.group_run_id
    assert group.info.status == "FINISHED"
    assert group.data.metrics == {"eval_loss": 3.25, "eval_perplexity": 25.8}
    assert [(m.step, m.value) for m in client.get_metric_history(train.run_id, "train_loss")] == [(10, 3.5)]
    with stage_run("prepare", params, ("data",)) as rerun:
        pass
    assert rerun.group_run_id != evaluate.group_run_id  # a finished group is never reopened


def test_different_params_get_different_groups(client, make_params):
    base = make_params(name="base.yaml")
    changed = make_params({"train.learning_rate": 1.0e-4}, name="changed.yaml")
    with stage_run("train", base, ("train",)) as first:
        pass
    with stage_run("train", changed, ("train",)) as second:
        pass

    assert first.group_run_id != second.group_run_id
    assert client.get_run(second.group_run_id).data.params["train.learning_rate"] == "0.0001"
    assert client.get_run(second.run_id).data.params["train.learning_rate"] == "0.0001"


def test_exception_fails_stage_and_group_and_propagates(client, make_params):
    message = "tokenizer not found " * 40
    with (
        pytest.raises(FileNotFoundError, match="tokenizer not found"),
        stage_run("tokenize", make_params(), ("tokenize",)) as run,
    ):
        raise FileNotFoundError(message)

    stage, group = client.get_run(run.run_id), client.get_run(run.group_run_id)
    assert (stage.info.status, group.info.status) == ("FAILED", "FAILED")
    assert stage.data.tags["error"] == f"FileNotFoundError: {message}"[:500]
    assert len(stage.data.tags["error"]) == 500
    assert "duration_s" in stage.data.metrics


@pytest.mark.parametrize(
    ("error", "status"),
    [(KeyboardInterrupt(), "KILLED"), (SystemExit(2), "KILLED"), (SystemExit(0), "FINISHED")],
    ids=["ctrl-c", "exit-2", "exit-0"],
)
def test_interrupts_kill_stage_and_group(client, make_params, error, status):
    with pytest.raises(type(error)), stage_run("train", make_params(), ("train",), closes_group=True) as run:
        raise error

    assert client.get_run(run.run_id).info.status == status
    assert client.get_run(run.group_run_id).info.status == status


def test_dvc_environment_becomes_tags_and_separates_experiments(client, make_params, monkeypatch):
    params = make_params()
    with stage_run("train", params, ("train",)) as plain:
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "fuzzy-lamb")
    monkeypatch.setenv("DVC_STAGE", "train@untied")
    with stage_run("train", params, ("train",)) as experiment:
        pass

    assert experiment.group_run_id != plain.group_run_id
    for run_id in (experiment.run_id, experiment.group_run_id):
        tags = client.get_run(run_id).data.tags
        assert (tags["dvc.exp_name"], tags["dvc.stage"]) == ("fuzzy-lamb", "train@untied")


def test_dvc_lock_written_between_stages_keeps_the_group(client, make_params, tmp_path, monkeypatch):
    repo = _init_repo(tmp_path / "fresh")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    params = make_params()
    with stage_run("prepare", params, ("data",)) as prepare:
        pass
    (repo / "dvc.lock").write_text("schema: '2.0'\n")  # what `dvc repro` does after each stage
    with stage_run("tokenize", params, ("tokenize",)) as tokenize:
        pass

    assert tokenize.group_run_id == prepare.group_run_id
    assert client.get_run(prepare.run_id).data.tags["git.dirty"] == "false"
    assert client.get_run(tokenize.run_id).data.tags["git.dirty"] == "true"  # the tag still tells the truth


def test_stage_outputs_keep_the_group_but_other_changes_start_a_new_one(client, make_params, tmp_path, monkeypatch):
    repo = _init_repo(tmp_path / "fresh")
    (repo / "dvc.yaml").write_text(
        "stages:\n  prepare:\n    cmd: prepare\n    outs: [data/prepared]\n"
        "    metrics:\n      - metrics/prepare.json:\n          cache: false\n"
    )
    _git(repo, "add", "dvc.yaml")
    _git(repo, "commit", "-qm", "pipeline")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    params = make_params()
    with stage_run("prepare", params, ("data",)) as prepare:
        pass
    (repo / "metrics").mkdir()
    (repo / "metrics" / "prepare.json").write_text("{}\n")  # not git-ignored: metrics are committed
    with stage_run("tokenize", params, ("tokenize",)) as tokenize:
        pass
    (repo / "notes.txt").write_text("an uncommitted change\n")
    with stage_run("train", params, ("train",)) as train:
        pass

    assert tokenize.group_run_id == prepare.group_run_id != train.group_run_id


def test_experiment_is_a_model_training_one_with_artifacts_in_the_repo(client, store, make_params):
    params = make_params()
    with stage_run("prepare", params, ("data",)):
        pass
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (store["repo"] / "mlruns" / "artifacts").as_uri()


def test_existing_experiment_gets_the_kind_tag(client, make_params):
    params = make_params()
    experiment_id = client.create_experiment(params.mlflow.experiment)
    with stage_run("prepare", params, ("data",)):
        pass
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_inputs_are_tagged_with_their_dvc_hash_by_repo_relative_path(client, store, make_params, caplog):
    repo = store["repo"]
    (repo / "data" / "tokenized" / "train").mkdir(parents=True, exist_ok=True)
    (repo / "data" / "tokenized" / "train" / "blocks.bin").write_bytes(b"\x00\x01" * 64)
    (repo / "data" / "prepared.txt").write_text("a line\n")
    inputs = [repo / "data" / "prepared.txt", Path("data/tokenized"), Path("data/missing")]
    with (
        caplog.at_level(logging.WARNING, logger="pipeline.tracking"),
        stage_run("train", make_params(), ("train",), inputs) as run,
    ):
        pass

    tags = client.get_run(run.run_id).data.tags
    assert {key: value for key, value in tags.items() if key.startswith("input.")} == {
        "input.data/prepared.txt": dvc_md5(repo / "data" / "prepared.txt"),
        "input.data/tokenized": dvc_md5(repo / "data" / "tokenized"),
    }
    assert "data/missing" in caplog.text


def test_inputs_in_a_temporary_experiment_copy_are_relative_to_it(client, make_params, tmp_path, monkeypatch):
    # `dvc exp run --temp`: the stage runs in a git copy inside the original repo, DVC_ROOT names the original.
    original = _init_repo(tmp_path / "original")
    copy = _init_repo(original / ".dvc" / "tmp" / "exps" / "standalone" / "tmp1234")
    (copy / "data").mkdir()
    (copy / "data" / "corpus.txt").write_text("text\n")
    monkeypatch.setenv("DVC_ROOT", str(original))
    monkeypatch.chdir(copy)
    with stage_run("prepare", make_params(), ("data",), [Path("data/corpus.txt"), tmp_path / "params.yaml"]) as run:
        pass
    tags = client.get_run(run.run_id).data.tags
    assert {key for key in tags if key.startswith("input.")} == {"input.data/corpus.txt", "input.params.yaml"}


def test_artifacts_and_tags_go_to_the_stage_run(client, make_params, tmp_path):
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "loss.csv").write_text("step,loss\n")
    with stage_run("train", make_params(), ("train",)) as run:
        run.log_artifact(tmp_path / "report.json")
        run.log_artifact(tmp_path / "curves")
        run.set_tags({"freeze.head": "untied"})

    assert {artifact.path for artifact in client.list_artifacts(run.run_id)} == {"report.json", "curves"}
    assert [a.path for a in client.list_artifacts(run.run_id, "curves")] == ["curves/loss.csv"]
    assert client.get_run(run.run_id).data.tags["freeze.head"] == "untied"
    assert "freeze.head" not in client.get_run(run.group_run_id).data.tags


def test_tracking_uri_prefers_the_env_then_dvc_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "original"))
    assert repo_root() == tmp_path / "original"
    assert tracking_uri() == f"sqlite:///{tmp_path}/original/mlruns/mlflow.db"
    assert tracking_uri(tmp_path / "other") == f"sqlite:///{tmp_path}/other/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking_uri() == tracking_uri(tmp_path) == "http://mlflow.internal:5000"


def test_repo_root_without_dvc_is_the_git_top_level_else_the_cwd(store, tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT")
    (store["repo"] / "data" / "deep").mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(store["repo"] / "data" / "deep")
    assert repo_root() == store["repo"]
    monkeypatch.chdir(tmp_path)
    assert repo_root() == tmp_path


# ---------------------------------------------------------------------------------------------------------------
# Runs that must not stay RUNNING: killed with SIGKILL (found stale by the next stage), stopped by a signal, or
# failed on a user error; and what an error tag may show.
# ---------------------------------------------------------------------------------------------------------------


def _left_running(client, experiment_id, pid: int, host: str, started_ms: int) -> tuple[str, str]:
    """A stage run and its group as a stage killed with SIGKILL leaves them: RUNNING, with its process tags."""
    group = client.create_run(experiment_id, run_name="pipeline-x").info.run_id
    tags = {"mlflow.parentRunId": group, "dvc.stage": "train", "process.host": host, "process.pid": str(pid)}
    stage = client.create_run(experiment_id, start_time=started_ms, tags=tags, run_name="train").info.run_id
    return stage, group


def test_the_next_stage_fails_runs_whose_process_is_gone_and_their_groups(client, make_params):
    params = make_params()
    experiment_id = client.create_experiment(params.mlflow.experiment)
    finished = subprocess.Popen(["true"])
    finished.wait()
    now_ms = int(time.time() * 1000)
    this_process_started_ms = int(psutil.Process().create_time() * 1000)
    host = socket.gethostname()
    dead = _left_running(client, experiment_id, finished.pid, host, now_ms)
    reused = _left_running(client, experiment_id, os.getpid(), host, this_process_started_ms - 60_000)
    alive = _left_running(client, experiment_id, os.getpid(), host, now_ms)
    elsewhere = _left_running(client, experiment_id, finished.pid, "another-host", now_ms)

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


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_ends_the_stage_run_killed_and_exits_128_plus_the_signal(client, make_params, signum, exit_code):
    with (
        pytest.raises(SystemExit) as exited,
        exit_on_user_error(),
        stage_run("evaluate", make_params(), ("evaluate",), closes_group=True) as run,
    ):
        os.kill(os.getpid(), signum)
    assert exited.value.code == exit_code
    assert client.get_run(run.run_id).info.status == client.get_run(run.group_run_id).info.status == "KILLED"
    assert client.get_run(run.run_id).data.tags["error"] == f"Interrupted: stopped by {signal.Signals(signum).name}"


def test_a_user_error_ends_the_run_failed_with_its_message_and_exits_2(client, make_params, capsys):
    with (
        pytest.raises(SystemExit) as exited,
        exit_on_user_error(),
        stage_run("prepare", make_params(), ("data",)) as run,
    ):
        raise UserError("local/corpus/train.txt: no text in it")
    assert exited.value.code == 2
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert client.get_run(run.run_id).data.tags["error"] == "UserError: local/corpus/train.txt: no text in it"
    assert "Traceback" not in capsys.readouterr().err


def test_error_tags_show_neither_secrets_nor_the_home_folder(client, make_params, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_NotARealTokenButLongEnough")
    message = f"401 Unauthorized with token hf_NotARealTokenButLongEnough for {Path.home()}/.cache/huggingface"
    with pytest.raises(OSError), stage_run("train", make_params(), ("train",)) as run:
        raise OSError(message)
    tags = client.get_run(run.run_id).data.tags
    assert tags["error"] == "OSError: 401 Unauthorized with token *** for ~/.cache/huggingface"
    assert not [value for value in tags.values() if "hf_NotARealToken" in value]
