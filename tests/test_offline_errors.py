"""The real defaults (gpt2, wikitext from the hub) with no network and no cache: a short message, not a traceback."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).parents[1]


def run_stage(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=workdir, env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.parametrize(
    ("stage_args", "names", "advice"),
    [
        (
            ("pipeline.prepare", "--out", "data/prepared", "--metrics", "metrics/prepare.json"),
            "data.hub_dataset='wikitext'",
            "Set data.source: local",
        ),
        (
            ("pipeline.tokenization", "--prepared", "p", "--out", "t", "--streams", "s", "--metrics", "m.json"),
            "model.name_or_path='gpt2'",
            "python -m pipeline.offline",
        ),
    ],
)
def test_unreachable_hub_gives_one_paragraph_and_exit_2(workdir, stage_args, names, advice):
    result = run_stage(workdir, *stage_args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert names in result.stderr and advice in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 6, result.stderr
    assert not (workdir / "data").exists() and not (workdir / "metrics").exists()


def test_unreachable_hub_ends_the_stage_run_failed(workdir):
    result = run_stage(workdir, "pipeline.prepare", "--out", "data/prepared", "--metrics", "metrics/prepare.json")
    assert result.returncode == 2
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("gpt2-wikitext2-freeze").experiment_id])
    assert {run.info.status for run in runs} == {"FAILED"}
    assert (
        "could not be loaded" in next(r for r in runs if r.data.tags["mlflow.runName"] == "prepare").data.tags["error"]
    )


def test_invalid_params_stop_before_any_work(workdir):
    params = workdir / "params.yaml"
    params.write_text(
        params.read_text().replace("logging_steps: 10", "logging_steps: ten").replace("epochs:", "epoch:")
    )
    result = run_stage(workdir, "pipeline.prepare", "--out", "data/prepared", "--metrics", "metrics/prepare.json")
    assert result.returncode == 2
    assert "3 problem(s)" in result.stderr
    assert "train.epoch: unknown key" in result.stderr and "train.epochs: missing" in result.stderr
    assert "train.logging_steps: expected int, got 'ten'" in result.stderr
    assert sorted(path.name for path in workdir.iterdir()) == ["params.yaml"]  # no outputs, no MLflow store
