"""The pipeline against a shared MLflow tracking server (docs/team.md): `mlflow server` on loopback, SQLite behind
it and a local folder as its artifact store, reached only through MLFLOW_TRACKING_URI, as a team's clients reach
theirs."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.params import load_params
from pipeline.tracking.runs import stage_run

pytestmark = pytest.mark.slow

STAGES = {"prepare", "tokenize", "train", "evaluate_base", "harness_base", "harness", "evaluate"}
# What reaches the server does not depend on how well the model trains: a short run keeps the test quick.
QUICK = {"train.max_steps": 20, "train.eval_steps": None, "evaluate.stride": 64}
STARTUP_S = 180  # database migrations and worker start-up, on two busy cores: a cap, not a wait


@dataclass(frozen=True)
class Server:
    uri: str
    artifacts: Path
    """The server's --artifacts-destination: where every client's artifacts must land."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server not healthy after {STARTUP_S} s:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """The server and its workers: they share the process group the server was started in."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
        "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}", "--serve-artifacts",
        "--artifacts-destination", str(base / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    # Without this, MLflow 3.17 also starts a job runner and a handful of Huey consumers (for GenAI jobs, which
    # the pipeline never submits): processes and seconds of start-up for nothing.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = base / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )  # its own process group, so that stop() ends its workers with it
    try:
        wait_for_health(url, process, log)
        yield Server(url, base / "artifacts")
    finally:
        stop(process)


@pytest.fixture(scope="module")
def served_repo(pipeline_repo_factory, server):
    """The offline pipeline, run once with `dvc repro` against the server."""
    repo = pipeline_repo_factory("mlflow-server")
    repo.tracking_uri = server.uri
    repo.set_params(QUICK)
    repo.dvc("repro")
    return repo


@pytest.fixture
def client(server):
    return MlflowClient(tracking_uri=server.uri)


def experiment_runs(client, repo):
    experiment = client.get_experiment_by_name(repo.params["mlflow"]["experiment"])
    return experiment, client.search_runs([experiment.experiment_id])


def test_runs_and_metrics_of_every_stage_reach_the_server_and_nothing_stays_local(served_repo, client):
    experiment, runs = experiment_runs(client, served_repo)
    groups = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(groups) == 1 and groups[0].info.status == "FINISHED"
    children = {run.data.tags["mlflow.runName"]: run for run in runs if run is not groups[0]}
    assert set(children) == STAGES
    assert {run.info.status for run in children.values()} == {"FINISHED"}
    report = served_repo.metrics("eval")
    loss = report["finetuned"]["validation"]["loss"]
    assert groups[0].data.metrics["finetuned.validation.loss"] == pytest.approx(loss)
    assert len(client.get_metric_history(children["train"].info.run_id, "loss")) >= 2
    # The server chose where artifacts go (its own store), not the client's repo folder.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert not (served_repo.root / "mlruns" / "mlflow.db").exists()


def test_artifacts_go_through_the_server_to_its_store(served_repo, server, client, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("DVC_ROOT", str(served_repo.root))
    params = load_params(served_repo.root / "params.yaml")
    with stage_run("evaluate", params, ("evaluate",)) as run:
        run.log_artifact(served_repo.root / "metrics" / "eval.json")
        run.log_artifact(served_repo.root / "plots")

    assert {artifact.path for artifact in client.list_artifacts(run.run_id)} == {"eval.json", "plots"}
    assert "plots/train_curve.csv" in {artifact.path for artifact in client.list_artifacts(run.run_id, "plots")}
    stored = [path for path in server.artifacts.rglob("eval.json") if run.run_id in path.parts]
    assert [path.read_bytes() for path in stored] == [(served_repo.root / "metrics" / "eval.json").read_bytes()]
    assert not (served_repo.root / "mlruns" / "artifacts").exists()


def test_a_stage_killed_mid_run_is_failed_on_the_server_by_the_next_stage(served_repo, client, tmp_path):
    # Enough epochs that the stage is still training when it is killed, whatever the machine's speed.
    raw = served_repo.params
    raw["train"]["max_steps"] = 100_000
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    argv = served_repo.stage_argv(
        "train", params=tmp_path / "params.yaml", out=tmp_path / "model", checkpoints=tmp_path / "checkpoints"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": served_repo.tracking_uri}
    train = subprocess.Popen(argv, cwd=served_repo.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        killed = wait_for_running_run(client, served_repo, train)
    finally:
        train.kill()  # SIGKILL: no handler runs, so the run stays RUNNING on the server
        train.wait()
    assert client.get_run(killed.info.run_id).info.status == "RUNNING"

    served_repo.run(*served_repo.stage_argv("evaluate_base", metrics=tmp_path / "base.json"))

    stage, group = client.get_run(killed.info.run_id), client.get_run(killed.data.tags["mlflow.parentRunId"])
    assert (stage.info.status, group.info.status) == ("FAILED", "FAILED")
    assert stage.data.tags["error"].startswith(f"stale: its process (pid {train.pid} ")


def wait_for_running_run(client, repo, process: subprocess.Popen, timeout_s: float = 120):
    """The RUNNING stage run that `process` opened on the server, once it exists."""
    experiment = client.get_experiment_by_name(repo.params["mlflow"]["experiment"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        running = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`process.pid` = '{process.pid}'",
        )
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"no RUNNING run of pid {process.pid} (exit code {process.poll()})")
