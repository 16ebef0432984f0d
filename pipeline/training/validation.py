"""Validation during training: the validation loss every `train.eval_steps` optimizer steps, and optional early
stopping that keeps the best weights.

The loss is the evaluate stage's streaming scorer (pipeline.evaluation.lm_metrics) on the first
`train.eval_blocks` blocks of the tokenized validation split: a fixed subset, so every point of the curve scores
the same tokens. Scoring runs in eval mode without gradients and draws no random numbers, so training computes
the same steps with or without it. Each point goes into the `StepLog`, which travels inside every checkpoint, so a
run resumed after a kill has the curve, the best step and the patience count of an unbroken one. With early
stopping, the best weights so far (the trainable tensors only: the rest never change) are held in memory and
written into each checkpoint as BEST_WEIGHTS.

The Trainer's own `load_best_model_at_end` / `EarlyStoppingCallback` are not used: they need its eval loop
(`eval_strategy`) and re-load the best checkpoint folder, which this project's checkpoint store prunes and
deletes after a success; here the best weights live in the checkpoint that resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from pipeline.evaluation.lm_metrics import score_stream
from pipeline.params import TrainParams
from pipeline.tracking.runs import StageRun
from pipeline.training.distributed import broadcast_from_main, is_main_process
from pipeline.training.resumable import StepLog

log = logging.getLogger(__name__)

BEST_WEIGHTS = "best_weights.safetensors"


def validation_blocks(blocks: torch.Tensor, eval_blocks: int | None) -> torch.Tensor:
    """The fixed subset scored at every point: the split's first `eval_blocks` blocks (all of them when null)."""
    return blocks if eval_blocks is None else blocks[:eval_blocks]


def validation_loss(model, blocks: torch.Tensor, batch_size: int, bf16: bool) -> float:
    """Mean loss over the subset's tokens: the evaluate stage's scorer on the blocks as one stream, in disjoint
    windows of the training block size (stride = context)."""
    block_size = blocks.shape[1]
    return score_stream(model, blocks.reshape(-1), block_size, block_size, batch_size, bf16).loss


def patience_exhausted(step_log: StepLog, patience: int | None) -> bool:
    """Whether the last `patience` validation points all came after the best one (the stop rule)."""
    if patience is None or not step_log.validation:
        return False
    losses = [loss for _, loss in step_log.validation]
    return len(losses) - 1 - losses.index(min(losses)) >= patience


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the tensors that train (a tied head once, as `wte`)."""
    return {name: p.detach().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_best_weights(model: torch.nn.Module, checkpoint: Path) -> bool:
    """Load a checkpoint's best weights into `model`; False when it holds none (no early stopping)."""
    path = checkpoint / BEST_WEIGHTS
    if not path.is_file():
        return False
    model.load_state_dict(load_file(path), strict=False)
    return True


class ValidationCallback(TrainerCallback):
    """Scores the validation subset every `eval_steps`, records it, streams it to MLflow, and stops early.

    Listed before the CheckpointCallback: a step's point is in the step log before that step's checkpoint is sealed.
    """

    def __init__(
        self, model, blocks: torch.Tensor, train: TrainParams, step_log: StepLog, run: StageRun, bf16: bool
    ) -> None:
        self.model, self.blocks, self.step_log, self.run, self.bf16 = model, blocks, step_log, run, bf16
        self.every, self.batch_size, self.patience = train.eval_steps, train.batch_size, train.early_stopping_patience
        self.best: dict[str, torch.Tensor] | None = None

    def resume(self, checkpoint: Path | None) -> None:
        """Take the best weights saved in `checkpoint` (a resumed run keeps the best of its killed predecessors)."""
        if self.patience is not None and checkpoint is not None and (checkpoint / BEST_WEIGHTS).is_file():
            self.best = load_file(checkpoint / BEST_WEIGHTS)

    def on_train_begin(self, args, state, control, **kwargs):
        for step, loss in self.step_log.validation:  # a resumed run's MLflow chart starts with the earlier points
            self.run.log_metrics({"validation_loss": loss}, step=step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        # Rank 0 scores and the others take its number: the weights are the same on every rank, so this is the
        # loss one process would compute, bit for bit, and every rank makes the same early-stopping decision.
        loss = validation_loss(self.model, self.blocks, self.batch_size, self.bf16) if is_main_process() else None
        loss = broadcast_from_main(loss)
        self.step_log.validation.append([state.global_step, loss])
        self.run.log_metrics({"validation_loss": loss}, step=state.global_step)
        log.info("step %d: validation loss %.4f", state.global_step, loss)
        if self.patience is None:
            return
        earlier = [point[1] for point in self.step_log.validation[:-1]]
        if not earlier or loss < min(earlier):  # strictly better, as `patience_exhausted` counts
            self.best = trainable_state(self.model)
        if patience_exhausted(self.step_log, self.patience):
            log.info("early stop at step %d: no better validation loss in %d evaluations", state.global_step,
                     self.patience)  # fmt: skip
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.best is not None and is_main_process():
            save_file(self.best, Path(args.output_dir) / f"checkpoint-{state.global_step}" / BEST_WEIGHTS)

    def restore_best(self) -> None:
        """Put the best weights back into the model (with early stopping; a no-op before the first point)."""
        if self.best is not None:
            self.model.load_state_dict(self.best, strict=False)
