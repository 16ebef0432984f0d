"""`python -m pipeline.study`: grid files, their points as DVC expands them, every point checked before any is
queued, the study's identity (its points' names), what became of each point as `dvc exp show` and `dvc queue`
report it (fakes of their output here), and one whole study on the offline profile with two `dvc queue` workers."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.study.grid import Grid, expand, load_grid, point_name, with_seeds
from pipeline.study.plan import plan_study
from pipeline.study.queue import QueueEntry, first_line_of_why
from pipeline.study.results import TO_QUEUE, outcomes, parse_exp_show

REPO = Path(__file__).parents[1]

# --- grid files -------------------------------------------------------------------------------------------------


def write_grid(folder: Path, sweeps, name: str = "g") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"sweeps": sweeps}))
    return path


def test_a_grid_expands_as_dvc_expands_sweeps_with_the_profile_first(tmp_path):
    sweeps = [["freeze.trainable_blocks=range(1,3)", "freeze.head=choice(tied,untied)"], ["freeze.train_ln_f=true"]]
    grid = load_grid(write_grid(tmp_path, sweeps))
    assert grid == Grid("g", (("freeze.trainable_blocks=range(1,3)", "freeze.head=choice(tied,untied)"),
                              ("freeze.train_ln_f=true",)))  # fmt: skip
    points = expand(grid, ["train.max_steps=5"])
    assert points[0] == ("train.max_steps=5", "freeze.trainable_blocks=1", "freeze.head=tied")
    assert {point[1:] for point in points[:4]} == {(f"freeze.trainable_blocks={b}", f"freeze.head={h}")
                                                   for b in (1, 2) for h in ("tied", "untied")}  # fmt: skip
    assert points[4] == ("train.max_steps=5", "freeze.train_ln_f=True") and len(points) == 5  # Hydra's spelling


def test_seeds_add_an_axis_to_every_sweep_and_refuse_a_sweep_that_sets_its_own(tmp_path):
    grid = Grid("g", (("freeze.head=choice(tied,untied)",), ("finetune.method=full",)))
    points = expand(with_seeds(grid, [42, 43, 44]), [])
    assert len(points) == 9 and {p[-1] for p in points} == {"train.seed=42", "train.seed=43", "train.seed=44"}
    assert with_seeds(grid, [42]) == grid
    with pytest.raises(UserError, match=r"sweeps\[1\] of grid g already set train.seed"):
        with_seeds(Grid("g", (("a=1",), ("train.seed=range(1,3)",))), [1, 2])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sweeps: []", "expected `sweeps:`"),
        ("points: [[a=1]]", "expected `sweeps:`"),
        ("sweeps: [[a=1], [b], c=2]", "2 problem(s)"),
        ("sweeps: [[a=1]]\nseeds: 3", "seeds: unknown key(s)"),
        ("sweeps: [[a=1]\n  - b", "not a YAML grid file"),
    ],
)
def test_bad_grid_files_are_refused_naming_every_problem(tmp_path, content, message):
    path = tmp_path / "g.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_grid(path)


def test_a_missing_grid_file_and_a_folder_are_named(tmp_path):
    with pytest.raises(UserError, match="no such grid file"):
        load_grid(tmp_path / "none.yaml")
    with pytest.raises(UserError, match="is a folder; --grid takes one grid file"):
        load_grid(tmp_path)


def test_a_sweep_dvc_cannot_parse_is_refused_with_its_reason():
    grid = Grid("g", (("freeze.head=choice(tied",), ("lora.rank=glob(*)",), ("finetune.method=full",)))
    with pytest.raises(UserError, match=r"2 sweep\(s\) are not DVC's") as refused:
        expand(grid, [])
    assert "sweeps[0]" in str(refused.value) and "Glob override 'lora.rank=glob(*)' is not supported" in str(
        refused.value)  # fmt: skip


@pytest.mark.parametrize("path", ["studies/freezing.yaml", "studies/offline.yaml", "studies/offline-llama.yaml"])
def test_shipped_grids_give_each_method_its_own_learning_rates(path):
    grid = load_grid(REPO / path)
    rates_by_method = {}
    for sweep in grid.sweeps:
        method = next((line.split("=")[1] for line in sweep if line.startswith("finetune.method=")), "freeze")
        (rates,) = [line for line in sweep if line.startswith("train.learning_rate=choice(")]
        rates_by_method.setdefault(method, set()).add(rates)
    assert {"freeze", "lora"} <= rates_by_method.keys()
    assert rates_by_method["freeze"].isdisjoint(rates_by_method["lora"])  # LoRA's own candidates, not freezing's


def gpt2_block(config) -> int:
    width = config.n_embd
    return 12 * width**2 + 13 * width  # attention 4 d^2 + 4d, MLP 8 d^2 + 5d, two layer norms 4d


def llama_block(config) -> int:
    width, mlp = config.hidden_size, config.intermediate_size
    key_value = width * config.num_key_value_heads // config.num_attention_heads  # grouped-query k and v: 32 wide
    return 2 * width**2 + 2 * width * key_value + 3 * width * mlp + 2 * width  # q, o; k, v; gate, up, down; 2 norms


@pytest.mark.parametrize(
    ("path", "config", "blocks"),
    [("studies/offline.yaml", "tiny", (1, 2)), ("studies/freezing.yaml", "gpt2", (1, 2)),
     ("studies/offline-llama.yaml", "tiny-llama", (1, 2))],
)  # fmt: skip
def test_shipped_lora_ranks_match_the_budgets_of_their_freezing_points(path, config, blocks):
    import re

    from transformers import GPT2Config, LlamaConfig

    from pipeline.offline.tiny_model import TINY_GPT2, TINY_LLAMA
    from pipeline.params import LORA_TARGETS
    from pipeline.training.lora import lora_params_per_rank, rank_for_budget

    configs = {"tiny": GPT2Config(**TINY_GPT2), "gpt2": GPT2Config(), "tiny-llama": LlamaConfig(**TINY_LLAMA)}
    config = configs[config]
    block = llama_block(config) if config.model_type == "llama" else gpt2_block(config)
    per_rank = lora_params_per_rank(config, list(LORA_TARGETS), None)
    (lora_sweep,) = [sweep for sweep in load_grid(REPO / path).sweeps if "finetune.method=lora" in sweep]
    (ranks,) = [line for line in lora_sweep if line.startswith("lora.rank=")]
    shipped = [int(rank) for rank in re.findall(r"\d+", ranks)]
    assert [rank_for_budget(count * block, per_rank) for count in blocks] == [r for r in shipped if r > 8]


def test_the_llama_grid_states_its_budgets_as_the_tiny_llama_counts_them():
    """The grid's comments give the frozen-head budgets; the train stage's own counting must agree."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.offline.tiny_model import TINY_LLAMA
    from pipeline.params import FreezeParams
    from pipeline.training.freeze import apply_freeze_policy, count_parameters

    text = (REPO / "studies/offline-llama.yaml").read_text()
    for blocks in (1, 2):
        model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, vocab_size=1024))
        apply_freeze_policy(model, FreezeParams(trainable_blocks=blocks, train_ln_f=False, head="frozen"))
        assert f"{count_parameters(model).trainable:,}" in text


# --- every point checked before any is queued ---------------------------------------------------------------------


@pytest.fixture
def project(git_repo, git, tmp_path):
    """A git repo holding the project's params.yaml, committed: what the study plans against."""
    root = git_repo(tmp_path / "project")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    git(root, "add", "params.yaml")
    git(root, "commit", "-qm", "params")
    return root


@pytest.mark.parametrize(
    ("path", "profile", "points"),
    [
        ("studies/freezing.yaml", None, 44),
        ("studies/offline.yaml", "profiles/offline.yaml", 8),
        ("studies/offline-llama.yaml", "profiles/offline-llama.yaml", 8),
    ],
)
def test_every_point_of_the_shipped_grids_passes_the_params_loader(project, git, path, profile, points):
    from pipeline.params import hydra_overrides, read_overrides

    fixed = hydra_overrides(read_overrides(REPO / profile)) if profile else []
    planned = plan_study(project, "s", git(project, "rev-parse", "HEAD"), load_grid(REPO / path), fixed)
    assert len(planned) == points and len({point.name for point in planned}) == points


def test_a_grid_with_bad_points_queues_nothing_and_names_every_bad_point_in_one_paragraph(project, monkeypatch,
                                                                                         capsys):  # fmt: skip
    from pipeline.study import __main__ as study_main

    queued = []
    monkeypatch.setattr(study_main, "queue_points", lambda root, points: queued.extend(points))
    monkeypatch.setattr(study_main, "start_workers", lambda root, jobs: queued.append("workers"))
    sweeps = [["freeze.trainable_blocks=choice(1,2)"],
              ["finetune.method=lora", "lora.rank=choice(0,8)"],  # DVC queues rank 0; every stage refuses it
              ["freeze.no_such_key=1"]]  # fmt: skip
    grid = write_grid(project, sweeps, "bad")
    with pytest.raises(SystemExit) as exited:
        study_main.main(["--grid", str(grid), "--root", str(project), "--out", str(project / "out")])
    assert exited.value.code == 2 and queued == []
    message = capsys.readouterr().err
    assert "grid bad: 2 of its 5 points would fail, so nothing was queued" in message
    assert "point 3 (finetune.method=lora lora.rank=0): lora.rank: must be > 0, got 0" in message
    assert "point 5 (freeze.no_such_key=1): Could not override 'freeze.no_such_key'" in message
    assert "Traceback" not in message


def test_a_folder_as_grid_exits_2_with_one_paragraph(project, capsys):
    from pipeline.study.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--grid", str(project), "--root", str(project)])
    assert exited.value.code == 2
    assert "is a folder; --grid takes one grid file" in capsys.readouterr().err


def test_points_with_the_same_params_are_refused(project, git):
    grid = Grid("g", (("freeze.head=tied",), ("freeze.trainable_blocks=1",)))  # both the default configuration
    with pytest.raises(UserError, match=r"\(freeze.trainable_blocks=1\) has the same params as \(freeze.head=tied\)"):
        plan_study(project, "g", git(project, "rev-parse", "HEAD"), grid, [])


def test_a_point_is_named_for_its_study_commit_and_overrides():
    name = point_name("offline", "abc", ("a=1", "b=2"))
    assert name.startswith("offline-") and name == point_name("offline", "abc", ("a=1", "b=2"))
    others = {point_name("again", "abc", ("a=1", "b=2")), point_name("offline", "def", ("a=1", "b=2")),
              point_name("offline", "abc", ("a=1", "b=3"))}  # fmt: skip
    assert name not in others and len(others) == 3


# --- what became of each point --------------------------------------------------------------------------------------

# What `dvc queue logs` kept of failed experiments (shortened): a stage's UserError, a crash, and a divergence.
PARAMS_LOG = """Running stage 'prepare':
> python -m pipeline.prepare --params params.yaml --out data/prepared --metrics metrics/prepare.json
2026-12-01 06:57:22,604 pipeline ERROR params.yaml has 1 problem(s):
  - lora.rank: must be > 0, got 0
ERROR: failed to reproduce 'prepare': failed to run: python -m pipeline.prepare --params params.yaml, exited with 2
"""
CRASH_LOG = """Running stage 'train':
2026-12-01 07:03:23,081 pipeline.tracking.runs INFO MLflow run 6fa6 (stage train) in group b9e2
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
    raise RuntimeError("boom")
RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory
ERROR: failed to reproduce 'train': failed to run: python -m pipeline.train --params params.yaml, exited with 1
"""
DIVERGED_LOG = """Running stage 'train':
2026-12-01 07:03:23,081 pipeline ERROR training diverged: the loss was nan at step 40 of 291, so the weights are not
numbers and no model is saved or logged; lower train.learning_rate (now 1.0) or train.max_grad_norm (1.0) and rerun
ERROR: failed to reproduce 'train': failed to run: python -m pipeline.train --params params.yaml, exited with 2
"""
KILLED_LOG = """Running stage 'train':
ERROR: failed to reproduce 'train': failed to run: python -m pipeline.train, exited with -9
"""


@pytest.mark.parametrize(
    ("log", "why"),
    [
        (PARAMS_LOG, "prepare: params.yaml has 1 problem(s): lora.rank: must be > 0, got 0"),
        (CRASH_LOG, "train: RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
                    "memory"),
        (DIVERGED_LOG, "train: training diverged: the loss was nan at step 40 of 291, so the weights are not"),
        (KILLED_LOG, "train: failed to run: python -m pipeline.train, exited with -9"),
        ("", "no log kept (`dvc queue logs` printed nothing)"),
    ],
)  # fmt: skip
def test_the_first_line_of_why_a_point_failed(log, why):
    assert first_line_of_why(log) == why


def scores(validation_loss: float) -> dict:
    finetuned = {split: {"loss": validation_loss, "perplexity": math.exp(validation_loss), "accuracy": 0.4}
                 for split in ("validation", "test")}  # fmt: skip
    return {"finetuned": finetuned, "base": finetuned}


def shown(name: str, validation_loss: float | None = None, error: bool = False) -> dict:
    """One experiment as `dvc exp show --json` lists it (the fields read)."""
    missing = {"error": {"type": "FileNotFoundError", "msg": "No such file"}}
    metrics = ({path: missing for path in ("metrics/eval.json", "metrics/train.json")} if validation_loss is None else
               {"metrics/eval.json": {"data": scores(validation_loss)},
                "metrics/train.json": {"data": {"parameters": {"trainable": 10, "total": 100}}}})  # fmt: skip
    revision = {"rev": f"{name}-rev", "name": name, "data": {"metrics": metrics, "params": {}},
                "error": {"msg": "Experiment run failed", "type": ""} if error else None}  # fmt: skip
    return {"revs": [revision], "name": name, "executor": None}


def test_only_the_studys_own_points_are_its_results_each_accounted_for(project, git):
    grid = Grid("offline", (("freeze.trainable_blocks=choice(1,2)", "train.learning_rate=choice(0.005,0.01)"),))
    points = plan_study(project, "offline", git(project, "rev-parse", "HEAD"), grid, [])
    fine, nan, failed, diverged = (point.name for point in points)
    again = plan_study(project, "offline-again", git(project, "rev-parse", "HEAD"), grid, [])  # the grid repeated
    experiments = [shown(fine, 2.0), shown(nan, float("nan")), shown(failed, error=True),
                   shown("valid-gnat", 1.0),  # a stray: run by hand on the same commit, same params as a point
                   shown(again[0].name, 1.5)]  # fmt: skip
    baselines = [{"rev": "workspace", "name": None, "experiments": None, "error": None, "data": {}},
                 {"rev": "abc", "name": "main", "experiments": experiments, "error": None, "data": {}}]  # fmt: skip
    text = json.dumps(baselines)
    queue = [QueueEntry(failed, "r1", "Failed"), QueueEntry(diverged, "r2", "Failed"),
             QueueEntry(fine, "r3", "Success"), QueueEntry("valid-gnat", "r4", "Success"),
             QueueEntry(again[0].name, "r5", "Success")]  # fmt: skip
    logs = {"r1": CRASH_LOG, "r2": DIVERGED_LOG}
    results = outcomes(points, parse_exp_show(text), queue, logs.__getitem__)
    assert [(r.point.name, r.status) for r in results] == [(fine, "finished"), (nan, "diverged"), (failed, "failed"),
                                                           (diverged, "diverged")]  # fmt: skip
    assert results[0].evaluation["finetuned"]["validation"]["loss"] == 2.0
    assert results[1].reason.startswith("not a number: validation loss nan")
    assert results[2].reason.startswith("train: RuntimeError: ") and results[3].reason.startswith("train: training di")
    # Run again, the study queues anew only what failed for a reason other than diverging
    assert [r.point.name for r in results if r.status in TO_QUEUE] == [failed]


def test_a_point_queued_again_shows_its_last_try_and_one_never_queued_is_queued(project, git):
    grid = Grid("s", (("freeze.trainable_blocks=choice(1,2,3)",),))
    first, second, third = plan_study(project, "s", git(project, "rev-parse", "HEAD"), grid, [])
    queue = [QueueEntry(first.name, "old", "Failed"), QueueEntry(first.name, "new", "Running"),
             QueueEntry(second.name, "q", "Queued")]  # fmt: skip
    results = outcomes([first, second, third], {}, queue, lambda rev: pytest.fail("no log is read"))
    assert [r.status for r in results] == ["running", "queued", "not queued"]
    assert [r.point for r in results if r.status in TO_QUEUE] == [third]


# --- a whole study ------------------------------------------------------------------------------------------------

# Short runs: the study's machinery is under test here, not the offline profile's quality.
QUICK = ["train.max_steps=12", "train.eval_steps=null", "train.logging_steps=4", "train.checkpoint_steps=null",
         "mlflow.log_model=false", "mlflow.registered_model=null"]  # fmt: skip


@pytest.mark.slow
def test_a_study_with_two_workers_reports_every_point_picks_each_methods_rate_and_resumes(pipeline_repo_factory):
    from mlflow import MlflowClient

    repo = pipeline_repo_factory("study")
    grid = repo.root / "studies" / "two-by-two.yaml"
    sweeps = [["freeze.trainable_blocks=1", "freeze.head=frozen", "train.learning_rate=choice(0.005,0.01)", *QUICK],
              ["finetune.method=lora", "lora.rank=4", "train.learning_rate=choice(0.01,0.02)", *QUICK]]  # fmt: skip
    grid.write_text(yaml.safe_dump({"sweeps": sweeps}))
    repo.commit("a 2x2 grid")
    command = (sys.executable, "-m", "pipeline.study", "--grid", "studies/two-by-two.yaml")

    result = repo.run(*command, "--jobs", "2")

    with open(repo.root / "reports" / "study" / "study.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert sorted((row["configuration"], row["learning_rate"], row["status"]) for row in table) == [
        ("1 block, head frozen", "0.005", "finished"), ("1 block, head frozen", "0.01", "finished"),
        ("LoRA r4", "0.01", "finished"), ("LoRA r4", "0.02", "finished"),
    ]  # fmt: skip
    assert all(row["experiment"].startswith("two-by-two-") for row in table)
    assert all(float(row["validation_perplexity"]) > 1 and float(row["train_s"]) > 0 for row in table)
    for configuration in ("1 block, head frozen", "LoRA r4"):  # each at its own rate with the lower validation loss
        rows = [row for row in table if row["configuration"] == configuration]
        best = min(rows, key=lambda row: float(row["validation_loss"]))
        assert [row["picked"] for row in rows] == [str(row is best) for row in rows]
    assert (repo.root / "reports" / "study" / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert "Study two-by-two: 4 of 4 points finished" in result.stdout

    client = MlflowClient(f"sqlite:///{repo.root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(repo.params["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [run.info.run_name for run in runs if run.info.status != "FINISHED"]  # none RUNNING or FAILED
    (study,) = [run for run in runs if run.info.run_name == "study-two-by-two"]
    pipelines = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    assert {run.data.tags["dvc.exp_name"] for run in pipelines} == {row["experiment"] for row in table}
    assert {run.data.tags["pipeline.study"] for run in pipelines} == {"two-by-two"}
    assert {"study.csv", "summary.csv", "study.md", "study.png"} <= {a.path for a in client.list_artifacts(
        study.info.run_id)}  # fmt: skip

    # Run again, the study resumes: every point finished, so nothing is queued and the report is the same
    again = repo.run(*command, "--jobs", "2")
    assert "0 of 4 points to queue" in again.stderr
    assert "No experiment tasks" not in repo.dvc("queue", "status") and repo.dvc("queue", "status").count(
        "Success") == 4  # fmt: skip
    # --report rebuilds the same table without training, and logs to the same study run
    repo.run(*command, "--report")
    with open(repo.root / "reports" / "study" / "study.csv", newline="") as file:
        assert list(csv.DictReader(file)) == table
    studies = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'study-two-by-two'")
    assert len(studies) == 1


def test_dvc_plots_draw_the_report_where_the_study_writes_it():
    from pipeline.study.__main__ import DEFAULT_OUT

    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    named = {plot for plot in plots if isinstance(plot, str)}
    for plot in (plot for plot in plots if isinstance(plot, dict)):
        (spec,) = plot.values()
        named |= set(spec["y"]) if isinstance(spec, dict) and isinstance(spec.get("y"), dict) else set(plot)
    assert {f"{DEFAULT_OUT}/study.csv", f"{DEFAULT_OUT}/study.png"} <= named
