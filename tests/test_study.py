"""`python -m pipeline.study`: grid files, the queue commands they make, and a whole 2x2 study on the offline
profile with two `dvc queue` workers sharing the SQLite store."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.study.grid import Grid, load_grid, queue_commands

# --- grid files -------------------------------------------------------------------------------------------------


def test_grid_file_becomes_one_queue_command_per_sweep_with_the_profile_first(tmp_path):
    path = tmp_path / "g.yaml"
    sweeps = [["freeze.trainable_blocks=range(1,3)", "freeze.head=choice(tied,untied)"], ["freeze.train_ln_f=true"]]
    path.write_text(yaml.safe_dump({"sweeps": sweeps}))
    grid = load_grid(path)
    assert grid == Grid("g", (("freeze.trainable_blocks=range(1,3)", "freeze.head=choice(tied,untied)"),
                              ("freeze.train_ln_f=true",)))  # fmt: skip
    first, second = queue_commands(grid, ["train.max_steps=5"])
    assert first == ["dvc", "exp", "run", "--queue", "-S", "train.max_steps=5", "-S",
                     "freeze.trainable_blocks=range(1,3)", "-S", "freeze.head=choice(tied,untied)"]  # fmt: skip
    assert second[-2:] == ["-S", "freeze.train_ln_f=true"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sweeps: []", "expected `sweeps:`"),
        ("points: [[a=1]]", "expected `sweeps:`"),
        ("sweeps: [[a=1], [b], c=2]", "2 problem(s)"),
    ],
)
def test_bad_grid_files_are_refused_naming_every_problem(tmp_path, content, message):
    path = tmp_path / "g.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_grid(path)


def test_missing_grid_file_is_named(tmp_path):
    with pytest.raises(UserError, match="no such grid file"):
        load_grid(tmp_path / "none.yaml")


@pytest.mark.parametrize("path", ["studies/freezing.yaml", "studies/offline.yaml"])
def test_shipped_grids_load(path):
    assert load_grid(Path(__file__).parents[1] / path).sweeps


@pytest.mark.parametrize(
    ("path", "config", "blocks"),
    [("studies/offline.yaml", "tiny", (1, 2)), ("studies/freezing.yaml", "gpt2", (1, 2))],
)
def test_shipped_lora_ranks_match_the_budgets_of_their_freezing_points(path, config, blocks):
    import re

    from transformers import GPT2Config

    from pipeline.offline.tiny_model import TINY_GPT2
    from pipeline.params import LORA_TARGETS
    from pipeline.training.lora import lora_params_per_rank, rank_for_budget

    config = GPT2Config(**TINY_GPT2) if config == "tiny" else GPT2Config()
    width = config.n_embd
    block = 12 * width**2 + 13 * width  # attention 4 d^2 + 4d, MLP 8 d^2 + 5d, two layer norms 4d
    per_rank = lora_params_per_rank(config, list(LORA_TARGETS), None)
    (lora_sweep,) = [sweep for sweep in load_grid(Path(__file__).parents[1] / path).sweeps
                     if "finetune.method=lora" in sweep]  # fmt: skip
    (ranks,) = [line for line in lora_sweep if line.startswith("lora.rank=")]
    shipped = [int(rank) for rank in re.findall(r"\d+", ranks)]
    assert [rank_for_budget(count * block, per_rank) for count in blocks] == [r for r in shipped if r > 8]


# --- a whole study ------------------------------------------------------------------------------------------------

# Short runs: the study's machinery is under test here, not the offline profile's quality.
QUICK = ["train.max_steps=12", "train.eval_steps=null", "train.logging_steps=4", "train.checkpoint_steps=null",
         "mlflow.log_model=false", "mlflow.registered_model=null"]  # fmt: skip


@pytest.mark.slow
def test_a_2x2_study_with_two_workers_reports_every_point_and_leaves_no_run_running(pipeline_repo_factory):
    from mlflow import MlflowClient

    repo = pipeline_repo_factory("study")
    grid = repo.root / "studies" / "two-by-two.yaml"
    sweep = ["freeze.trainable_blocks=choice(1,2)", "freeze.head=choice(untied,frozen)", *QUICK]
    grid.write_text(yaml.safe_dump({"sweeps": [sweep]}))
    repo.commit("a 2x2 grid")

    result = repo.run(sys.executable, "-m", "pipeline.study", "--grid", "studies/two-by-two.yaml", "--jobs", "2")

    with open(repo.root / "reports" / "study" / "study.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert sorted(row["method"] for row in table) == [
        "freeze: last 1 block, head frozen", "freeze: last 1 block, head untied",
        "freeze: last 2 blocks, head frozen", "freeze: last 2 blocks, head untied",
    ]  # fmt: skip
    assert all(float(row["validation_perplexity"]) > 1 and float(row["train_s"]) > 0 for row in table)
    assert (repo.root / "reports" / "study" / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert "Study two-by-two" in result.stdout

    client = MlflowClient(f"sqlite:///{repo.root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(repo.params["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [run.info.run_name for run in runs if run.info.status != "FINISHED"]  # none RUNNING or FAILED
    (study,) = [run for run in runs if run.info.run_name == "study-two-by-two"]
    pipelines = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    assert len(pipelines) == 4 and len({run.data.tags["dvc.exp_name"] for run in pipelines}) == 4
    assert {"study.csv", "study.md", "study.png"} <= {a.path for a in client.list_artifacts(study.info.run_id)}

    # --report rebuilds the same table without training, and logs to the same study run
    repo.run(sys.executable, "-m", "pipeline.study", "--grid", "studies/two-by-two.yaml", "--report")
    with open(repo.root / "reports" / "study" / "study.csv", newline="") as file:
        assert list(csv.DictReader(file)) == table
    studies = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'study-two-by-two'")
    assert len(studies) == 1


def test_dvc_plots_draw_the_report_where_the_study_writes_it():
    from pipeline.study.__main__ import DEFAULT_OUT

    plots = yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())["plots"]
    named = {plot for plot in plots if isinstance(plot, str)}
    for plot in (plot for plot in plots if isinstance(plot, dict)):
        (spec,) = plot.values()
        named |= set(spec["y"]) if isinstance(spec, dict) and isinstance(spec.get("y"), dict) else set(plot)
    assert {f"{DEFAULT_OUT}/study.csv", f"{DEFAULT_OUT}/study.png"} <= named
