"""Validation during training: the stop rule, which weights early stopping keeps, and what travels in a checkpoint."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel, TrainerControl

from pipeline.params import FreezeParams, TrainParams
from pipeline.training import validation
from pipeline.training.freeze import apply_freeze_policy
from pipeline.training.resumable import StepLog
from pipeline.training.validation import BEST_WEIGHTS, ValidationCallback, load_best_weights, patience_exhausted


@pytest.mark.parametrize(
    ("losses", "patience", "exhausted"),
    [
        ([], 1, False),
        ([3.0, 2.0], 1, False),  # the last point is the best
        ([3.0, 2.0, 2.5], 1, True),
        ([3.0, 2.0, 2.5], 2, False),
        ([3.0, 2.0, 2.0, 2.0], 2, True),  # equal is no better
        ([3.0, 2.0, 2.5, 1.0, 1.5], 2, False),  # a new best resets the count
        ([3.0, 2.0, 2.5], None, False),  # no early stopping
    ],
)
def test_patience_counts_points_since_the_first_best(losses, patience, exhausted):
    step_log = StepLog(validation=[[5 * (i + 1), loss] for i, loss in enumerate(losses)])
    assert patience_exhausted(step_log, patience) == exhausted


class Run:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((metrics, step))


def test_early_stopping_stops_after_patience_and_restores_the_best_points_weights(tiny_config, monkeypatch, tmp_path):
    model = GPT2LMHeadModel(tiny_config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head="frozen"))
    scripted = iter([3.0, 2.0, 2.5, 2.6])
    monkeypatch.setattr(validation, "validation_loss", lambda *args: next(scripted))
    train = TrainParams(eval_steps=5, early_stopping_patience=2)
    step_log, run = StepLog(), Run()
    callback = ValidationCallback(model, torch.zeros(2, 8, dtype=torch.long), train, step_log, run, bf16=False)
    trainable = model.transformer.h[-1].mlp.c_fc.bias
    stops = []
    for step in range(1, 21):
        with torch.no_grad():
            trainable.fill_(step)  # the weights "after" this step
        control = TrainerControl()
        callback.on_step_end(None, SimpleNamespace(global_step=step), control)
        stops.append(control.should_training_stop)
    assert step_log.validation == [[5, 3.0], [10, 2.0], [15, 2.5], [20, 2.6]]
    assert [step for step, stop in enumerate(stops, 1) if stop] == [20]
    assert [step for _, step in run.logged] == [5, 10, 15, 20]
    (tmp_path / "checkpoint-20").mkdir()  # the Trainer's save made it
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=20), None)
    callback.restore_best()
    assert torch.all(trainable == 10)  # the best point's weights, not the last ones
    with torch.no_grad():
        trainable.fill_(0)
    assert load_best_weights(model, tmp_path / "checkpoint-20") and torch.all(trainable == 10)
    saved = load_file(tmp_path / "checkpoint-20" / BEST_WEIGHTS)
    assert saved.keys() == {name for name, p in model.named_parameters() if p.requires_grad}


def test_validation_loss_is_the_mean_next_token_loss_of_the_subset_as_one_stream(tiny_config):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config).eval()
    blocks = torch.randint(0, tiny_config.vocab_size, (3, 8), generator=torch.Generator().manual_seed(1))
    stream = blocks.reshape(-1)
    # Worked out by hand for 24 tokens in windows of 8: tokens 0-7 predict targets 1-8, tokens 8-15 targets 9-16,
    # and the last window keeps a full context, tokens 15-22, scoring its last 7 predictions (targets 17-23).
    with torch.no_grad():
        logits = [model(input_ids=stream[None, start : start + 8]).logits[0] for start in (0, 8, 15)]
        predictions = torch.cat([logits[0], logits[1], logits[2][1:]])
        expected = torch.nn.functional.cross_entropy(predictions, stream[1:]).item()
    assert validation.validation_loss(model, blocks, batch_size=2, bf16=False) == pytest.approx(expected, rel=1e-5)
