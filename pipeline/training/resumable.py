"""The HF Trainer made resumable the way train needs: atomic checkpoints, a full record across restarts, and a
clean stop on SIGINT/SIGTERM.

The Trainer already saves and restores what makes a resumed run compute the same numbers (weights, optimizer,
scheduler, RNG states, and the global step from which it skips the already-seen batches of the seeded sampler).
What it does not keep across a restart is its record: its logged losses restart at the resume step and its
`training_loss` averages only the steps since. `StepLog` keeps the loss and learning rate of every optimizer step
and travels inside each checkpoint, so the curve and mean loss of a resumed run are those of an unbroken one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from pipeline.tracking.runs import StageRun
from pipeline.tracking.signals import StopRequest
from pipeline.training.checkpoints import STEP_LOG, CheckpointStore
from pipeline.training.distributed import any_rank, barrier, is_main_process, mean_over_ranks
from pipeline.training.layout import ModelLayout

log = logging.getLogger(__name__)


@dataclass
class StepLog:
    """Loss and learning rate of every optimizer step so far (index 0 is step 1), and the validation points
    ([step, loss], pipeline/training/validation.py)."""

    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    validation: list[list[float]] = field(default_factory=list)
    _pending: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def add_micro_batch(self, loss: torch.Tensor) -> None:
        """The Trainer's micro-batch losses, already scaled for accumulation, sum to the step's loss."""
        self._pending = loss if self._pending is None else self._pending + loss

    def close_step(self, learning_rate: float) -> None:
        # Each rank saw its shard of the batch; the step's loss is their mean (the Trainer scales each rank's loss
        # by the ranks over the batch's tokens, `average_tokens_across_devices`). One device sync per optimizer
        # step, as the Trainer's logging has.
        self.losses.append(mean_over_ranks(self._pending).item())
        self.learning_rates.append(learning_rate)
        self._pending = None

    def first_non_finite_step(self) -> int | None:
        """The first step (1-based) whose loss is NaN or infinite: training diverged there; None if none did."""
        return next((step for step, loss in enumerate(self.losses, 1) if not math.isfinite(loss)), None)

    def point(self, end: int, every: int) -> dict[str, float]:
        """Mean loss of the (up to) `every` steps ending at step `end`, and the learning rate of that step."""
        start = (end - 1) // every * every
        return {"step": end, "loss": _mean(self.losses[start:end]), "learning_rate": self.learning_rates[end - 1]}

    def curve(self, every: int) -> list[dict[str, float]]:
        """A point every `every` steps, and one at the last step, whose window may be shorter."""
        ends = list(range(every, len(self.losses) + 1, every))
        if self.losses and len(self.losses) % every:
            ends.append(len(self.losses))
        return [self.point(end, every) for end in ends]

    def mean_loss(self) -> float:
        return _mean(self.losses)

    def write(self, path: Path) -> None:
        payload = {"losses": self.losses, "learning_rates": self.learning_rates, "validation": self.validation}
        path.write_text(json.dumps(payload), encoding="utf-8")  # json writes floats exactly (shortest repr)

    @classmethod
    def read(cls, path: Path) -> StepLog:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return cls(list(payload["losses"]), list(payload["learning_rates"]), list(payload["validation"]))


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def training_finished(checkpoint: Path) -> bool:
    """Whether `checkpoint` was saved at the run's last step (the Trainer saves one there)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return state["global_step"] >= state["max_steps"]


def load_final_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a last-step checkpoint's weights instead of resuming from it: the Trainer checks for the end only after
    a step, so resuming at the last step would train one step too many."""
    weights = load_file(checkpoint / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # safetensors stores a tied tensor once: a tied head is missing from the file but loaded as the input embedding.
    layout = ModelLayout.of(model)
    tied = {layout.head_weight_key} if layout.head_tied else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{checkpoint}: weights do not fit the model (missing {missing}, unexpected {unexpected})")


class RecordingTrainer(Trainer):
    """A Trainer that hands every micro-batch loss to a `StepLog` (overriding the documented `training_step` hook)."""

    def __init__(self, *args, step_log: StepLog, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.step_log = step_log

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_log.add_micro_batch(loss)
        return loss


class CheckpointCallback(TrainerCallback):
    """Closes each step in the step log, streams the curve to MLflow, seals checkpoints, and stops on request.

    Runs after the Trainer's DefaultFlowCallback, so at `on_step_end` it sees whether this step will be saved.
    """

    def __init__(
        self, step_log: StepLog, store: CheckpointStore, stop: StopRequest, run: StageRun, every: int, tokens: int
    ) -> None:
        self.step_log, self.store, self.stop, self.run = step_log, store, stop, run
        self.every, self.tokens_per_step = every, tokens
        self.throughput: list[dict[str, float]] = []
        self._last_time, self._last_step = time.perf_counter(), 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_step = time.perf_counter(), state.global_step
        # A resumed run's MLflow chart starts with the points its killed predecessors recorded.
        for point in self.step_log.curve(self.every):
            if point["step"] % self.every == 0:
                self._log_point(point)

    def on_optimizer_step(self, args, state, control, lr_scheduler=None, **kwargs):
        # Before the scheduler steps: the rate this step used, as the Trainer's own logs report it.
        self.step_log.close_step(lr_scheduler.get_last_lr()[0])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._log_point(self.step_log.point(state.global_step, self.every), with_throughput=True)
        if any_rank(self.stop.requested):  # every rank stops after the same step, into one checkpoint
            control.should_save = control.should_training_stop = True
        if control.should_save and is_main_process():
            self.store.ensure_room(model)

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every rank has written its RNG state into the staged checkpoint
        if is_main_process():
            staged = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.step_log.write(staged / STEP_LOG)
            committed = self.store.commit(staged)
            log.info("checkpoint at step %d of %d: %s", state.global_step, state.max_steps, committed)
        if any_rank(self.stop.requested):  # a signal that came during the save stops here, not one step later
            control.should_training_stop = True

    def _log_point(self, point: dict[str, float], with_throughput: bool = False) -> None:
        metrics = {"loss": point["loss"], "learning_rate": point["learning_rate"]}
        if with_throughput:
            now = time.perf_counter()
            steps = point["step"] - self._last_step
            tokens_per_s = steps * self.tokens_per_step / max(now - self._last_time, 1e-9)
            self._last_time, self._last_step = now, point["step"]
            self.throughput.append({"step": point["step"], "tokens_per_s": round(tokens_per_s, 1)})
            metrics["tokens_per_s"] = tokens_per_s
        self.run.log_metrics(metrics, step=point["step"])
