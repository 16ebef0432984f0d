"""A stage knows which DVC execution runs it (pipeline/tracking/dvc_process.py), so that the group run of an
execution ends FINISHED even when DVC skips its last stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from pipeline.tracking.dvc_process import RWLOCK, dvc_process

REPO = Path(__file__).resolve().parents[1]


def write_lock(workspace: Path, writer_pid: int) -> None:
    """DVC's rwlock file as `dvc repro` leaves it while a stage runs: the stage's outputs write-locked by DVC."""
    path = workspace / RWLOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": writer_pid, "cmd": "dvc repro"}
    path.write_text(json.dumps({"write": {str(workspace / "metrics/harness.json"): info}, "read": {}}))


def test_the_dvc_process_is_the_ancestor_holding_dvcs_write_lock_and_none_without_dvc(tmp_path, monkeypatch):
    parent = psutil.Process().parent()
    write_lock(tmp_path, parent.pid)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert dvc_process(tmp_path) is None  # run by hand
    monkeypatch.setenv("DVC_STAGE", "harness")
    assert dvc_process(tmp_path) == f"{parent.pid}@{parent.create_time():.3f}"
    write_lock(tmp_path, psutil.Process().pid + 10**6)  # a process that is not this one's ancestor
    assert dvc_process(tmp_path) is None
    (tmp_path / RWLOCK).write_text("{not json")
    assert dvc_process(tmp_path) is None


STEP = """\
import sys
from pathlib import Path

from pipeline.params import load_params
from pipeline.tracking.runs import stage_run

stage, out = sys.argv[1], Path(sys.argv[2])
with stage_run(stage, load_params("params.yaml"), (), closes_group=stage == "last"):
    out.write_text("the same output every time\\n")
"""
PIPELINE = {
    "stages": {
        "first": {"cmd": "python step.py first out1.txt", "deps": ["step.py", "first.dep"], "outs": ["out1.txt"]},
        "last": {"cmd": "python step.py last out2.txt", "deps": ["out1.txt"], "outs": ["out2.txt"]},
    }
}


@pytest.mark.slow
def test_a_rerun_whose_outputs_come_out_unchanged_leaves_no_group_running(tmp_path, make_params, git_repo, git):
    """The harness case: a stage reruns, writes what it wrote before, and DVC skips the last stage (the one that
    closes the group); the group must end all the same."""
    repo = git_repo(tmp_path / "repo")
    make_params()  # params.yaml in tmp_path, in an experiment named for this test
    (repo / "params.yaml").write_text((tmp_path / "params.yaml").read_text())
    (repo / "step.py").write_text(STEP)
    (repo / "first.dep").write_text("1\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DVC_", "MLFLOW_"))}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(REPO)}

    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, check=True, capture_output=True)

    dvc("init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    dvc("repro")  # both stages, one group, which the last stage closes
    (repo / "first.dep").write_text("2\n")  # first reruns, out1.txt comes out the same: DVC skips `last`
    dvc("repro")

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(
        yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["experiment"]
    )
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    stages = [(run.info.run_name, run.data.tags["mlflow.parentRunId"]) for run in runs
              if "mlflow.parentRunId" in run.data.tags]  # fmt: skip
    assert [name for name, _ in stages] == ["first", "last", "first"]
    assert stages[0][1] == stages[1][1] != stages[2][1]  # one group per execution
    assert {run.info.run_id: run.info.status for run in runs} == {run.info.run_id: "FINISHED" for run in runs}
