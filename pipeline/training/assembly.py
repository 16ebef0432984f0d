"""The one assembly of the HF Trainer, shared by the train stage and the benchmarks, so what a benchmark measures is
what `dvc repro` runs: the fine-tuning method (freeze policy or LoRA adapters) and attention kernel on the model,
deterministic kernels, the trainee (the whole model, or its tail on cached frozen-prefix outputs), its dataset and
collator, and TrainingArguments. Checkpoints, MLflow and signals stay with the stage (pipeline/train.py), which
hands in its callbacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from peft import LoraModel
from torch import nn
from transformers import TrainerCallback

from pipeline.params import Params
from pipeline.training.freeze import FrozenLayout, apply_freeze_policy, head_mode_description
from pipeline.training.layout import ModelLayout
from pipeline.training.lora import add_adapters, describe_adapters
from pipeline.training.prefix_cache import tail_training
from pipeline.training.resumable import RecordingTrainer, StepLog
from pipeline.training.trainee import WholeModelTrainee
from pipeline.training.trainer_setup import (
    causal_lm_batch,
    reuse_freed_memory,
    training_arguments,
    use_attention,
    use_deterministic_algorithms,
)


@dataclass(frozen=True)
class PreparedModel:
    """What `prepare_model` made of a model, which then trains in place."""

    model: nn.Module
    layout: FrozenLayout
    adapters: LoraModel | None
    """PEFT's tuner around `model` with method lora; None with method freeze."""
    description: str
    """What trains and what stays frozen, in words, for the parameter table."""

    def model_to_save(self) -> nn.Module:
        """The fine-tuned model as users load it: with method lora, the adapters merged into the weights they adapt
        and removed (PEFT's `merge_and_unload`, which changes `model` in place): a plain model of its class."""
        return self.model if self.adapters is None else self.adapters.merge_and_unload()


def prepare_model(model: nn.Module, params: Params) -> PreparedModel:
    """Apply the fine-tuning method (`finetune.method`) and the training attention kernel to `model`, in place."""
    adapters = None
    if params.finetune.method == "lora":  # the freeze section is not read: every pretrained weight stays frozen
        adapters = add_adapters(model, params.lora)
        description = describe_adapters(params.lora, len(ModelLayout.of(model).blocks))
    elif params.finetune.method == "full":
        model.requires_grad_(True)
        description = "method full: every parameter trains, head, input embedding and any position table included"
    else:
        apply_freeze_policy(model, params.freeze)
        description = head_mode_description(params.freeze.head)
    use_attention(model, params)
    return PreparedModel(model, FrozenLayout.of(model), adapters, description)


def caches_prefix(params: Params, layout: FrozenLayout) -> bool:
    """`train.cache_frozen_prefix`, where the method leaves a prefix to cache (not with the `tied` head)."""
    return params.train.cache_frozen_prefix and layout.prefix_is_frozen


def build_trainer(
    params: Params,
    model: nn.Module,
    blocks: Dataset,
    *,
    output_dir: Path,
    prefix_cache_dir: Path,
    use_bf16: bool,
    callbacks: Sequence[TrainerCallback] = (),
    step_log: StepLog | None = None,
) -> RecordingTrainer:
    """A Trainer for `model` (already through `prepare_model`) on packed token `blocks`."""
    args = training_arguments(params, output_dir, use_bf16)
    use_deterministic_algorithms(params.train.deterministic)  # before the prefix's matmuls, the first on a GPU
    reuse_freed_memory()
    trainee, dataset, collator = WholeModelTrainee(model), blocks.with_format("torch"), causal_lm_batch
    if caches_prefix(params, FrozenLayout.of(model)):
        model.to(args.device)  # the prefix is computed where the Trainer will train (it would move the model anyway)
        input_ids = blocks.with_format("torch")[:]["input_ids"]
        # Each machine's first rank builds the cache while the others wait, then they read its file: one writer
        # per machine, and no rank computes what another just wrote (a no-op with one process).
        with args.main_process_first(local=True, desc="frozen prefix cache"):
            trainee, dataset = tail_training(model, input_ids, use_bf16, prefix_cache_dir, params.train.batch_size)
        collator = None  # the Trainer's default stacks the dataset's tensors
    return RecordingTrainer(
        model=trainee,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=list(callbacks),
        step_log=step_log if step_log is not None else StepLog(),
    )
