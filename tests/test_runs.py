"""MLflow runs of the stages (pipeline/tracking/runs.py): one child run per stage, grouped per pipeline execution,
with the params it reads, lineage tags, metrics and artifacts, and a status that says how it ended."""

from pathlib import Path

import pytest

from pipeline.tracking.runs import repo_root, stage_run, tracking_uri

pytestmark = pytest.mark.usefixtures("tracking_env")


def test_stage_run_logs_the_params_it_reads_lineage_and_duration(client, store, make_params, git):
    params = make_params()
    with stage_run("prepare", params, ("data", "tokenize.block_size")) as run:  # dvc.yaml's forms: section, key
        pass

    logged = client.get_run(run.run_id)
    expected = {key: str(value) for key, value in params.flat().items() if key.startswith("data.")}
    assert logged.data.params == {**expected, "tokenize.block_size": "128"}
    commit = git(store["repo"], "rev-parse", "HEAD")
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


def test_two_processes_opening_a_new_store_at_once_both_succeed_and_it_is_in_wal_mode(tmp_path, monkeypatch):
    import os
    import sqlite3
    import subprocess
    import sys

    from tests.conftest import REPO

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    code = "import sys, pathlib, pipeline.tracking.runs as runs; runs.tracking_client(pathlib.Path(sys.argv[1]))"
    workers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ)) for _ in range(2)]  # fmt: skip
    errors = [worker.communicate()[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], errors
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as database:
        assert database.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_under_dvc_each_stage_ends_the_group_and_the_next_stage_of_the_same_dvc_process_reopens_it(
    client, make_params, monkeypatch
):
    from pipeline.tracking import runs

    params = make_params()
    monkeypatch.setattr(runs, "dvc_process", lambda: "4242@1.000")
    with stage_run("harness_base", params, ("harness",)) as first:
        pass
    assert client.get_run(first.group_run_id).info.status == "FINISHED"  # DVC may skip every stage after this one
    with stage_run("harness", params, ("harness",)) as second:
        assert client.get_run(second.group_run_id).info.status == "RUNNING"
    assert (second.group_run_id, client.get_run(second.group_run_id).info.status) == (first.group_run_id, "FINISHED")
    monkeypatch.setattr(runs, "dvc_process", lambda: "4343@2.000")  # the next `dvc repro`, same params and commit
    with stage_run("harness", params, ("harness",)) as later:
        pass
    assert later.group_run_id != first.group_run_id
