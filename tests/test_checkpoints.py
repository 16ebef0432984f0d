"""Checkpoint store: the key, atomic commits, validation with fallback, pruning, the lock, the free-space check;
the step log that carries the curve across restarts, and a last-step checkpoint. The real kill-and-resume runs
are in test_train.py."""

import dataclasses
import json
import logging
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from pipeline.errors import UserError
from pipeline.params import FreezeParams, load_params
from pipeline.training import checkpoints
from pipeline.training.checkpoints import (
    MARKER,
    REQUIRED_FILES,
    CheckpointStore,
    checkpoint_key,
    checkpoint_problem,
    estimated_checkpoint_bytes,
    required_files,
)
from pipeline.training.freeze import apply_freeze_policy
from pipeline.training.resumable import StepLog, load_final_weights, training_finished

REPO_PARAMS = Path(__file__).parents[1] / "params.yaml"
DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.fixture
def params():
    return load_params(REPO_PARAMS)


@pytest.fixture
def train_split(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"blocks")
    return path


def stage_checkpoint(store: CheckpointStore, step: int, payload: bytes = b"x" * 100) -> Path:
    """What the Trainer leaves in staging: every required file, here with made-up bytes."""
    staged = store.staging / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    for name in REQUIRED_FILES:
        (staged / name).write_bytes(payload + name.encode())
    return staged


def test_key_follows_what_training_computes_and_nothing_else(params, train_split, tmp_path):
    key = checkpoint_key(params, train_split, "model-md5", "False")
    assert key == checkpoint_key(params, train_split, "model-md5", "False")
    for knob in ({"checkpoint_steps": 7}, {"keep_checkpoints": 5}, {"logging_steps": 3}):
        same = dataclasses.replace(params, train=dataclasses.replace(params.train, **knob))
        assert checkpoint_key(same, train_split, "model-md5", "False") == key, knob
    changed_lr = dataclasses.replace(params, train=dataclasses.replace(params.train, learning_rate=1e-3))
    changed_head = dataclasses.replace(params, freeze=dataclasses.replace(params.freeze, head="untied"))
    other_data = tmp_path / "other.parquet"
    other_data.write_bytes(b"other blocks")
    keys = [
        key,
        checkpoint_key(changed_lr, train_split, "model-md5", "False"),
        checkpoint_key(changed_head, train_split, "model-md5", "False"),
        checkpoint_key(params, other_data, "model-md5", "False"),
        checkpoint_key(params, train_split, "other-model", "False"),
        checkpoint_key(params, train_split, "model-md5", "True"),
    ]
    assert len(set(keys)) == len(keys)


def test_lora_params_key_lora_runs_only(params, train_split):
    """Method freeze's key ignores the lora section (keys from before LoRA existed still resume); lora's follows it."""
    key = checkpoint_key(params, train_split, "model-md5", "False")
    other_rank = dataclasses.replace(params, lora=dataclasses.replace(params.lora, rank=16))
    assert checkpoint_key(other_rank, train_split, "model-md5", "False") == key
    lora = dataclasses.replace(params, finetune=dataclasses.replace(params.finetune, method="lora"))
    lora_keys = {checkpoint_key(p, train_split, "model-md5", "False") for p in (lora, dataclasses.replace(
        lora, lora=dataclasses.replace(lora.lora, rank=16)))}  # fmt: skip
    assert len(lora_keys) == 2 and key not in lora_keys


def test_commit_moves_a_sealed_checkpoint_into_place_and_prunes(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", "k1", keep=2)
    with store.claimed():
        for step in (10, 20, 30):
            store.commit(stage_checkpoint(store, step))
        assert [path.name for path in store.checkpoints()] == ["checkpoint-30", "checkpoint-20"]
        assert not list(store.staging.iterdir())
        assert checkpoint_problem(store.folder / "checkpoint-30", "k1") is None
        assert store.resume_point() == store.folder / "checkpoint-30"


def test_a_checkpoint_of_two_ranks_needs_each_ranks_rng_state(tmp_path):
    """The Trainer saves `rng_state_<rank>.pth` per rank when there are several; a rank resuming without its own
    would refuse to start, so such a checkpoint is not usable."""
    store = CheckpointStore(tmp_path / "checkpoints", "k1", keep=2, processes=2)
    with store.claimed():
        staged = stage_checkpoint(store, 10)
        (staged / "rng_state.pth").rename(staged / "rng_state_0.pth")
        (staged / "rng_state_1.pth").write_bytes(b"rank 1")
        store.commit(staged)
        assert store.resume_point() == store.folder / "checkpoint-10"
        (store.folder / "checkpoint-10" / "rng_state_1.pth").unlink()
        assert checkpoint_problem(store.folder / "checkpoint-10", "k1", processes=2) == "rng_state_1.pth is missing"
    assert "rng_state.pth" in required_files(1) and "rng_state.pth" not in required_files(2)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda folder: (folder / "optimizer.pt").write_bytes(b"x"), "optimizer.pt has 1 bytes"),
        (lambda folder: (folder / "model.safetensors").write_bytes(b"y" * 117), "model.safetensors differs"),
        (lambda folder: (folder / "rng_state.pth").unlink(), "rng_state.pth is missing"),
        (lambda folder: (folder / MARKER).unlink(), "its save never finished"),
        (lambda folder: (folder / MARKER).write_text("{"), "unreadable"),
    ],
    ids=["truncated", "corrupt", "missing-file", "no-marker", "bad-marker"],
)
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(tmp_path, caplog, damage, problem):
    store = CheckpointStore(tmp_path / "checkpoints", "k1", keep=2)
    with store.claimed():
        store.commit(stage_checkpoint(store, 10))
        newest = store.commit(stage_checkpoint(store, 20))
        damage(newest)
        with caplog.at_level(logging.WARNING, logger="pipeline.training.checkpoints"):
            assert store.resume_point() == store.folder / "checkpoint-10"
    assert problem in caplog.text and "checkpoint-20" in caplog.text
    assert not newest.exists()


def test_a_checkpoint_of_another_key_is_never_resumed_from(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "checkpoints", "k1", keep=2)
    other = CheckpointStore(tmp_path / "checkpoints", "k2", keep=2)
    with other.claimed():
        other.commit(stage_checkpoint(other, 40))
    shutil.copytree(other.folder / "checkpoint-40", store.folder / "checkpoint-40")  # copied by hand, say
    with caplog.at_level(logging.INFO, logger="pipeline.training.checkpoints"), store.claimed():
        assert store.resume_point() is None
    assert "ignoring checkpoints of 1 other configuration(s)" in caplog.text and "k2" in caplog.text
    assert "saved for configuration k2, not k1" in caplog.text


def test_claim_clears_what_a_killed_save_left_and_excludes_a_second_run(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", "k1", keep=2)
    store.staging.mkdir(parents=True)
    (store.staging / "checkpoint-50").mkdir()
    with store.claimed():
        assert not store.staging.exists()
        second = CheckpointStore(tmp_path / "checkpoints", "k1", keep=2)
        with (
            pytest.raises(UserError, match=r"another train run \(pid \d+\) is using these checkpoints"),
            second.claimed(),
        ):
            pass
    with store.claimed():  # released when the first run ends
        pass


def test_a_short_disk_fails_before_the_save_naming_the_folder_and_the_way_out(tmp_path, monkeypatch, tiny_config):
    model = GPT2LMHeadModel(tiny_config)
    store = CheckpointStore(tmp_path / "checkpoints", "k1", keep=2)
    store.folder.mkdir(parents=True)
    needed = estimated_checkpoint_bytes(model)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: DiskUsage(10**12, 0, needed))
    with pytest.raises(UserError) as caught:
        store.ensure_room(model)
    message = str(caught.value)
    assert str(store.root) in message and "train.checkpoint_steps: null" in message and "MiB free" in message
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: DiskUsage(10**12, 0, 2 * needed))
    store.ensure_room(model)


def test_checkpoint_size_estimate_counts_tied_weights_once_and_adam_moments_of_trainable_ones(tiny_config):
    model = GPT2LMHeadModel(tiny_config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head="tied"))
    # By hand: wte 100*32 = 3,200; wpe 64*32 = 2,048; a block 12,704 (ln 64+64, attn 3,168+1,056, mlp 4,224+4,128);
    # ln_f 64: 30,720 parameters, of which the last block and the tied wte train: 15,904. fp32 weights + 2 moments.
    assert estimated_checkpoint_bytes(model) == 30_720 * 4 + 2 * 4 * 15_904


def test_step_log_curve_and_mean_survive_a_round_trip_exactly(tmp_path):
    log = StepLog()
    for step in range(1, 26):
        log.add_micro_batch(torch.tensor(step / 3, dtype=torch.float32))
        log.add_micro_batch(torch.tensor(0.1, dtype=torch.float32))
        log.close_step(learning_rate=1.0 / step)
        if step % 10 == 0:
            log.validation.append([step, 1.0 / 3 + step])
    log.write(tmp_path / "step_log.json")
    again = StepLog.read(tmp_path / "step_log.json")

    assert again.losses == log.losses and again.learning_rates == log.learning_rates
    assert again.validation == [[10, 1.0 / 3 + 10], [20, 1.0 / 3 + 20]]
    curve = again.curve(every=10)
    assert [point["step"] for point in curve] == [10, 20, 25]
    assert curve[0]["loss"] == pytest.approx(sum(step / 3 + 0.1 for step in range(1, 11)) / 10, rel=1e-6)
    assert curve[2]["loss"] == pytest.approx(sum(step / 3 + 0.1 for step in range(21, 26)) / 5, rel=1e-6)
    assert curve[1]["learning_rate"] == 1.0 / 20
    assert again.mean_loss() == log.mean_loss()


def test_a_last_step_checkpoint_is_loaded_not_resumed(tmp_path, tiny_config):
    # Resuming the Trainer at its last step would run one step more: train loads such a checkpoint's weights instead.
    trained = GPT2LMHeadModel(tiny_config)
    trained.save_pretrained(tmp_path)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 39, "max_steps": 39}))
    fresh = GPT2LMHeadModel(tiny_config)
    assert training_finished(tmp_path)
    load_final_weights(fresh, tmp_path)
    expected = trained.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in fresh.state_dict().items())
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 20, "max_steps": 39}))
    assert not training_finished(tmp_path)
