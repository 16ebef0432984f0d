"""Train on two processes (torchrun, gloo, CPU) on the tiny model: `dvc repro` runs the stage as two ranks with one
MLflow train run; two ranks at half the per-process batch end where one process at the full batch does; a rank
killed with SIGKILL after a checkpoint takes the run down, and the rerun resumes from that checkpoint and ends with
the outputs of the uninterrupted two-process run, bit for bit; SIGTERM stops both ranks with one checkpoint."""

import json
import re
import signal
import subprocess
import time

import psutil
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

# A 400-line train split: 13 optimizer steps of 16 blocks per epoch, 39 in three epochs; a checkpoint every 5 steps,
# the whole validation split scored every 13; the default precision (bf16 autocast where the CPU has it).
SMALL_RUN = {
    "data.max_train_lines": 400, "train.checkpoint_steps": 5, "train.logging_steps": 5, "train.eval_steps": 13,
    "train.eval_blocks": None, "train.bf16": True,
}  # fmt: skip
TWO_RANKS = {"train.processes": 2, "train.batch_size": 8}  # the offline profile's global batch of 16
# Dropout draws other masks on two ranks than on one (each rank seeds its own generator alike), and the gradient sums
# are split differently, so the two runs are two samples of the same training, not one computation: the issue's
# bound on the offline profile, 2% of the fine-tuned validation loss, holds them with a tenfold margin: this short
# run's validation losses were 0.2% apart, the full profile's 0.17% (2026-11-28, docs/distributed.md).
RELATIVE_TOLERANCE = 0.02


def train_argv(repo, name: str) -> list[str]:
    return repo.stage_argv(
        "train", checkpoints=f"ck-{name}", out=f"out-{name}/model", curve=f"out-{name}/curve.csv",
        validation_curve=f"out-{name}/validation.csv", metrics=f"out-{name}/train.json",
    )  # fmt: skip


def rank_pid(launcher: psutil.Process, rank: int) -> int | None:
    """The pid of the worker of `rank` under the launcher (torchrun's agent runs in the launcher's own process)."""
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "LOCAL_RANK" in child.environ():
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def run_until(repo, argv: list[str], name: str, checkpoint: str, signum: int, rank: int | None):
    """Start `argv`; once `checkpoint` is committed, send `signum` to the worker of `rank` (None: the launcher)."""
    process = subprocess.Popen(argv, cwd=repo.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    launcher, deadline = psutil.Process(process.pid), time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if list(repo.root.glob(f"ck-{name}/*/{checkpoint}/complete.json")):
            target = process.pid if rank is None else rank_pid(launcher, rank)
            psutil.Process(target).send_signal(signum)
            break
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def resumed_step(log: str) -> int:
    return int(re.search(r"resuming from \S+/checkpoint-(\d+) \(step \1\)", log).group(1))


@pytest.fixture(scope="module")
def repo(pipeline_repo_factory):
    repo = pipeline_repo_factory("distributed")
    repo.set_params(SMALL_RUN)
    repo.commit("a small train split")
    return repo


@pytest.fixture(scope="module")
def two_ranks(repo):
    """`dvc repro train` with two processes (prepare and tokenize run first), then the one-process run beside."""
    started = time.monotonic()
    repo.set_params(TWO_RANKS)
    repo.commit("two processes")
    output = repo.dvc("repro", "train")
    seconds = time.monotonic() - started
    repo.set_params({"train.processes": 1, "train.batch_size": 16})
    one = repo.run(*train_argv(repo, "one"))
    repo.set_params(TWO_RANKS)
    return {"output": output, "one": one, "seconds": seconds}


def test_dvc_repro_runs_the_train_stage_as_two_ranks_with_one_mlflow_run(repo, two_ranks):
    assert "torchrun --standalone --nproc-per-node 2" in two_ranks["output"]
    assert (repo.root / "models/finetuned/model.safetensors").is_file()
    assert repo.metrics("train")["steps"] == 39  # 400 lines' blocks in global batches of 16, three epochs
    client = MlflowClient(tracking_uri=f"sqlite:///{repo.root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(repo.params["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    group = next(run for run in runs if run.info.run_name.startswith("pipeline-"))
    in_group = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == group.info.run_id]
    assert sorted(run.info.run_name for run in in_group) == ["prepare", "tokenize", "train"]
    (train,) = [run for run in in_group if run.info.run_name == "train"]
    assert train.info.status == "FINISHED" and train.data.params["train.processes"] == "2"
    assert train.data.metrics["global_batch_size"] == 16
    print(f"dvc repro train on two processes: {two_ranks['seconds']:.0f} s")


def test_two_ranks_at_half_the_batch_end_where_one_process_at_the_full_batch_does(repo, two_ranks):
    assert two_ranks["one"].returncode == 0, two_ranks["one"].stderr[-3000:]
    one, two = json.loads((repo.root / "out-one/train.json").read_text()), repo.metrics("train")
    assert one["steps"] == two["steps"] == 39
    for metric in ("validation_loss", "train_loss"):
        assert two[metric] == pytest.approx(one[metric], rel=RELATIVE_TOLERANCE), metric
    print(f"validation loss: one process {one['validation_loss']:.4f}, two {two['validation_loss']:.4f}")


@pytest.fixture(scope="module")
def chain(repo, two_ranks):
    """SIGKILL to rank 1 after checkpoint-10; SIGTERM to the launcher after checkpoint-20 of the rerun; the end."""
    killed = run_until(repo, train_argv(repo, "resumed"), "resumed", "checkpoint-10", signal.SIGKILL, rank=1)
    stopped = run_until(repo, train_argv(repo, "resumed"), "resumed", "checkpoint-20", signal.SIGTERM, rank=None)
    (key_folder,) = list((repo.root / "ck-resumed").iterdir())
    checkpoints = sorted(int(path.name.split("-")[1]) for path in key_folder.glob("checkpoint-*"))
    finished = repo.run(*train_argv(repo, "resumed"))
    return {"killed": killed, "stopped": stopped, "finished": finished, "checkpoints": checkpoints}


def test_killing_one_rank_ends_the_run_and_the_rerun_resumes_from_its_checkpoint(chain):
    assert chain["killed"].returncode != 0
    assert "checkpoint at step 10" in chain["killed"].stderr
    assert resumed_step(chain["stopped"].stderr) >= 10


def test_sigterm_stops_every_rank_after_one_checkpoint_and_exits_143(chain):
    stopped = chain["stopped"]
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "stopped by SIGTERM" in stopped.stderr
    newest = chain["checkpoints"][-1]
    assert newest >= 20 and resumed_step(chain["finished"].stderr) == newest


def test_the_resumed_two_process_run_ends_bitwise_where_the_uninterrupted_one_did(repo, chain):
    assert chain["finished"].returncode == 0, chain["finished"].stderr[-3000:]
    resumed, uninterrupted = repo.root / "out-resumed", repo.root
    assert (resumed / "model/model.safetensors").read_bytes() == (
        uninterrupted / "models/finetuned/model.safetensors"
    ).read_bytes()
    assert (resumed / "curve.csv").read_bytes() == (uninterrupted / "plots/train_curve.csv").read_bytes()
    assert (resumed / "train.json").read_bytes() == (uninterrupted / "metrics/train.json").read_bytes()


def test_no_train_run_is_left_running(repo, chain):
    client = MlflowClient(tracking_uri=f"sqlite:///{repo.root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(repo.params["mlflow"]["experiment"])
    trains = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'train'",
                                order_by=["attributes.start_time ASC"])  # fmt: skip
    # dvc repro, the one-process run, then the killed, stopped and finished runs: one run each, none RUNNING.
    assert [run.info.status for run in trains] == ["FINISHED", "FINISHED", "FAILED", "KILLED", "FINISHED"]


# Imported at start-up by every Python process given its folder on PYTHONPATH, torchrun's ranks included (they
# inherit the environment): it appends the process's rank to $PREFIX_BUILDS each time it computes a frozen prefix.
# Counting the log line instead cannot tell, since ranks other than 0 log nothing below WARNING.
COUNT_PREFIX_BUILDS = """
import os
from pipeline.training import prefix_cache
real_compute_prefix = prefix_cache.compute_prefix
def compute_prefix(*args, **kwargs):
    with open(os.environ["PREFIX_BUILDS"], "a") as builds:
        builds.write(os.environ.get("RANK", "none") + "\\n")
    return real_compute_prefix(*args, **kwargs)
prefix_cache.compute_prefix = compute_prefix
"""


def test_the_frozen_prefix_cache_is_built_once_for_both_ranks(repo, tmp_path, monkeypatch):
    """Rank 0 builds the cache while rank 1 waits at a barrier, then rank 1 reads its file: one build, by rank 0,
    one cache file, no staging file left, and a run that ends (a rank waiting for one that never arrives would hang
    until the test's timeout)."""
    if not (repo.root / "data/tokenized").is_dir():  # when run alone, without the dvc repro above
        repo.run(*repo.stage_argv("prepare"))
        repo.run(*repo.stage_argv("tokenize"))
    (tmp_path / "sitecustomize.py").write_text(COUNT_PREFIX_BUILDS)
    builds = tmp_path / "builds.txt"
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{repo.root}")  # at start-up `-m` has not put the root on the path
    monkeypatch.setenv("PREFIX_BUILDS", str(builds))
    cached = {**TWO_RANKS, "freeze.head": "untied", "train.cache_frozen_prefix": True, "train.max_steps": 10}
    before = repo.params
    repo.set_params(cached)
    try:
        result = repo.run(*train_argv(repo, "cached"))
    finally:
        repo.set_params({key: before[key.split(".")[0]][key.split(".")[1]] for key in cached})
    assert builds.read_text().split() == ["0"], result.stderr[-2000:]
    assert [path.suffix for path in (repo.root / ".cache/frozen_prefix").iterdir()] == [".safetensors"]
    assert json.loads((repo.root / "out-cached/train.json").read_text())["steps"] == 10
