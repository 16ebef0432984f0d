"""Train stage, crash-safe: the real stage in a subprocess on the tiny model, killed with SIGKILL after a checkpoint,
stopped with SIGTERM on the rerun, then finished from a fallback checkpoint; its outputs must be bitwise those of
a run that was never interrupted, and MLflow must show no run left RUNNING. Also the training attention choice."""

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient
from transformers import GPT2LMHeadModel

from pipeline.params import Params
from pipeline.training.trainer_setup import use_attention

pytestmark = pytest.mark.slow

# A 400-line train split: 13 optimizer steps of 16 blocks per epoch, 39 in three epochs, a checkpoint every 5, a
# validation point every 5 (on 8 blocks) and early stopping with a patience it never exhausts, so the best weights
# travel through every checkpoint. In the default precision (bf16 autocast where the CPU has it), which the offline
# profile turns off.
SMALL_RUN = {
    "data.max_train_lines": 400, "train.checkpoint_steps": 5, "train.logging_steps": 5, "train.eval_steps": 5,
    "train.eval_blocks": 8, "train.early_stopping_patience": 100, "train.bf16": True,
}  # fmt: skip
OUTPUTS = ("model.safetensors", "config.json", "tokenizer.json", "curve.csv", "validation.csv", "train.json")
# Every run of the chain goes through this driver: the real stage's main, with the validation score 10 nats worse
# after step 10. On this run the real score falls at every point, so the best point would always be the last one
# and a resumed run that lost its predecessors' best weights would still save the right model. With the best point
# at step 10, before every resume of the chain (at step 10 or later, then 20 or later), the saved model is the best
# point's only if its weights travel in the checkpoints. The last run also records every torch.load call's
# weights_only.
DRIVER = """
import json, sys, torch
from pipeline.training import validation
step, real_loss, real_step_end = [0], validation.validation_loss, validation.ValidationCallback.on_step_end
def on_step_end(self, args, state, control, **kwargs):
    step[0] = state.global_step
    return real_step_end(self, args, state, control, **kwargs)
validation.ValidationCallback.on_step_end = on_step_end
validation.validation_loss = lambda *args: real_loss(*args) + (10.0 if step[0] > 10 else 0.0)
calls, real_load = [], torch.load
def spy(*args, **kwargs):
    calls.append(kwargs.get("weights_only"))
    return real_load(*args, **kwargs)
torch.load = spy
from pipeline.train import main
try:
    main(sys.argv[1:])
finally:
    open("torch_load_calls.json", "w").write(json.dumps(calls))
"""


def train_argv(repo, name: str) -> list[str]:
    return repo.stage_argv(
        "train", checkpoints=f"ck-{name}", out=f"out-{name}/model", curve=f"out-{name}/curve.csv",
        validation_curve=f"out-{name}/validation.csv", metrics=f"out-{name}/train.json",
    )  # fmt: skip


def driven_argv(repo, name: str) -> list[str]:
    """The train stage's command for `name`, run through DRIVER."""
    return [sys.executable, "-c", DRIVER, *train_argv(repo, name)[3:]]


def run_until(repo, argv: list[str], checkpoint: str, signum: int) -> subprocess.CompletedProcess:
    """Start `argv`, send `signum` as soon as `checkpoint` is committed (its complete.json exists), wait for the end."""
    process = subprocess.Popen(argv, cwd=repo.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if list(repo.root.glob(f"ck-resumed/*/{checkpoint}/complete.json")):
            process.send_signal(signum)
            break
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def output_bytes(repo, name: str) -> dict[str, bytes]:
    folder = repo.root / f"out-{name}"
    files = {name: folder / name for name in ("curve.csv", "validation.csv", "train.json")}
    files |= {file: folder / "model" / file for file in OUTPUTS if file not in files}
    return {file: path.read_bytes() for file, path in files.items()}


@pytest.fixture(scope="module")
def repo(pipeline_repo_factory):
    repo = pipeline_repo_factory("resume")
    repo.set_params(SMALL_RUN)
    repo.commit("a small train split")
    repo.run(*repo.stage_argv("prepare"))
    repo.run(*repo.stage_argv("tokenize"))
    return repo


@pytest.fixture(scope="module")
def chain(repo):
    """Uninterrupted run; then SIGKILL after checkpoint-10, SIGTERM after checkpoint-20 of the rerun, a planted
    truncated 'newer' checkpoint and another key's folder, and a last run to the end. Returns what each did."""
    started = time.monotonic()
    uninterrupted = repo.run(*driven_argv(repo, "uninterrupted"))
    killed = run_until(repo, driven_argv(repo, "resumed"), "checkpoint-10", signal.SIGKILL)
    outputs_after_kill = sorted(path.name for path in (repo.root / "out-resumed").glob("*"))
    stopped = run_until(repo, driven_argv(repo, "resumed"), "checkpoint-20", signal.SIGTERM)
    # The kill lands a few steps after checkpoint-10 at most; a slow poll may let checkpoint-15 through first.
    resumed_at = int(re.search(r"resuming from \S+/checkpoint-(\d+) \(step \1\)", stopped.stderr).group(1))
    (key_folder,) = [path for path in (repo.root / "ck-resumed").iterdir()]
    survivors = sorted(path.name for path in key_folder.glob("checkpoint-*"))
    newest = max(key_folder.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    planted = key_folder / "checkpoint-35"
    subprocess.run(["cp", "-r", str(newest), str(planted)], check=True)
    weights = planted / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    other_key = repo.root / "ck-resumed" / "0123456789abcdef" / "checkpoint-5"
    other_key.mkdir(parents=True)
    finished = repo.run(*driven_argv(repo, "resumed"))
    return {
        "uninterrupted": uninterrupted, "killed": killed, "stopped": stopped, "finished": finished,
        "survivors": survivors, "newest": newest.name, "key_folder": key_folder, "other_key": other_key,
        "resumed_at": resumed_at, "outputs_after_kill": outputs_after_kill,
        "seconds": time.monotonic() - started,
    }  # fmt: skip


def test_sigkill_after_a_checkpoint_leaves_no_output_but_the_checkpoint(chain):
    assert chain["killed"].returncode == -signal.SIGKILL
    assert chain["outputs_after_kill"] == []
    # The checkpoint is what survives: the kill comes once complete.json exists, which may be before the stage has
    # logged it (seen under load), so the rerun resuming from it is the evidence, not the killed run's log.
    assert chain["resumed_at"] >= 10


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_exit_143(chain):
    stopped = chain["stopped"]
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert chain["resumed_at"] >= 10
    assert "SIGTERM received: stopping after the current step with a checkpoint" in stopped.stderr
    assert "stopped by SIGTERM" in stopped.stderr and "Traceback" not in stopped.stderr
    assert int(chain["newest"].split("-")[1]) >= 20
    assert len(chain["survivors"]) == 2  # train.keep_checkpoints


def test_resumed_outputs_are_bitwise_those_of_an_uninterrupted_run(repo, chain):
    assert chain["finished"].returncode == 0, chain["finished"].stderr[-3000:]
    resumed, uninterrupted = output_bytes(repo, "resumed"), output_bytes(repo, "uninterrupted")
    assert [file for file in OUTPUTS if resumed[file] != uninterrupted[file]] == []
    assert json.loads(resumed["train.json"])["steps"] == 39 > int(chain["newest"].removeprefix("checkpoint-"))
    validation = resumed["validation.csv"].decode().splitlines()
    assert validation[0] == "step,validation_loss" and [row.split(",")[0] for row in validation[1:]] == [
        str(step) for step in range(5, 40, 5)
    ]
    summary = json.loads(resumed["train.json"])
    losses = [float(row.split(",")[1]) for row in validation[1:]]
    assert summary["best_validation_loss"] == min(losses) and summary["validation_loss"] == losses[-1]
    # The saved model is the best point's, and that point came before the resumed runs began
    assert summary["best_step"] <= 10 <= chain["resumed_at"] and losses[-1] > summary["best_validation_loss"] + 5
    print(f"kill -9, SIGTERM and resume chain: {chain['seconds']:.0f} s")


def test_a_truncated_newest_checkpoint_is_skipped_and_other_keys_are_left_alone(chain):
    log = chain["finished"].stderr
    assert "checkpoint-35 is not usable (model.safetensors has" in log and "(truncated?)" in log
    assert f"resuming from {chain['key_folder'].relative_to(chain['key_folder'].parents[1])}/{chain['newest']}" in log
    assert "ignoring checkpoints of 1 other configuration(s)" in log and "0123456789abcdef" in log
    assert chain["other_key"].is_dir()


def test_a_successful_run_leaves_no_checkpoint_behind(repo, chain):
    assert not chain["key_folder"].exists()
    assert [path.name for path in (repo.root / "ck-uninterrupted").iterdir()] == []


def test_every_torch_load_while_resuming_is_weights_only(repo, chain):
    calls = json.loads((repo.root / "torch_load_calls.json").read_text())
    assert len(calls) >= 3  # rng state, optimizer, scheduler (the weights come from safetensors)
    assert set(calls) == {True}


def test_no_run_is_left_running_and_each_says_how_it_ended(repo, chain):
    client = MlflowClient(tracking_uri=f"sqlite:///{repo.root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(repo.params["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [run for run in runs if run.info.status == "RUNNING" and run.info.run_name == "train"] == []
    trains = [run for run in runs if run.info.run_name == "train"]
    assert [run.info.status for run in trains] == ["FINISHED", "FAILED", "KILLED", "FINISHED"]
    assert trains[1].data.tags["error"].startswith("stale: its process (pid ")
    assert trains[2].data.tags["error"] == "Interrupted: stopped by SIGTERM"
    resumed_from = [run.data.tags["checkpoint.resumed_from_step"] for run in trains]
    assert resumed_from == ["0", "0", str(chain["resumed_at"]), chain["newest"].removeprefix("checkpoint-")]
    groups = {run.info.run_id: run for run in runs if "mlflow.parentRunId" not in run.data.tags}
    assert groups[trains[1].data.tags["mlflow.parentRunId"]].info.status == "FAILED"
    assert groups[trains[2].data.tags["mlflow.parentRunId"]].info.status == "KILLED"


def test_cached_frozen_prefix_trains_the_tail_and_is_reused_by_the_next_run(repo):
    repo.set_params({"freeze.head": "untied", "train.cache_frozen_prefix": True})
    try:
        first = repo.run(*train_argv(repo, "cached-1"))
        [cache_file] = (repo.root / ".cache" / "frozen_prefix").glob("prefix-*.safetensors")
        assert "frozen prefix: cached" in first.stderr
        repo.set_params({"train.learning_rate": 1.0e-3})  # another tail run on the same prefix and data
        second = repo.run(*train_argv(repo, "cached-2"))
        assert f"frozen prefix: reusing {cache_file.relative_to(repo.root)}" in second.stderr
        first_model, second_model = output_bytes(repo, "cached-1"), output_bytes(repo, "cached-2")
        assert first_model["model.safetensors"] != second_model["model.safetensors"]
        assert json.loads(second_model["train.json"])["steps"] == 39
    finally:
        repo.set_params({"freeze.head": "tied", "train.cache_frozen_prefix": False, "train.learning_rate": 5.0e-3})


@pytest.mark.parametrize(
    ("attention", "block_size", "warns"), [("eager", 128, False), ("eager", 1024, True), ("sdpa", 1024, False)]
)
def test_training_attention_is_the_params_and_eager_on_long_blocks_is_flagged(
    tiny_config, caplog, attention, block_size, warns
):
    defaults = Params.defaults()
    params = dataclasses.replace(
        defaults,
        train=dataclasses.replace(defaults.train, attention=attention),
        tokenize=dataclasses.replace(defaults.tokenize, block_size=block_size),
    )
    model = GPT2LMHeadModel(tiny_config)
    with caplog.at_level("WARNING", logger="pipeline.training.trainer_setup"):
        use_attention(model, params)
    assert model.config._attn_implementation == attention
    assert ("sdpa was faster" in caplog.text) == warns
