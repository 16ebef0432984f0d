"""The checks on param values that types cannot express: ranges, finiteness, combinations that train nothing, local
inputs DVC does not track, and (when asked) conflicts with the model's config."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pipeline.errors import UserError
from pipeline.input_paths import is_local_path, untracked_path_issue
from pipeline.params.families import context_length, depth, family_of, unsupported_model_issue
from pipeline.params.schema import Params
from pipeline.params.sections import SPLITS, DataParams, HarnessParams
from pipeline.params.training import LORA_TARGETS, LoraParams


def value_issues(params: Params) -> list[str]:
    """Every problem with the values of well-typed params, whatever the model."""
    return (
        _non_finite_issues(params)
        + _range_issues(params)
        + _untracked_input_issues(params)
        + _harness_issues(params.harness)
    )


def model_config_issues(params: Params, load_model_config: Callable[[str], Any]) -> list[str]:
    try:
        config = load_model_config(params.model.name_or_path)
    except UserError as error:
        return [str(error)]
    return model_issues(params, config)


def model_issues(params: Params, config: Any) -> list[str]:
    """Problems that only the model's config can reveal: a family without a known layout, then its context length
    and depth, each under the field name its family uses."""
    if family_of(config) is None:
        return [unsupported_model_issue(config)]
    issues = []
    context_field, context = context_length(config)
    # GPT-2's positions are a learned table; rotary models compute any position but never trained past this one.
    past_it = (
        "positions past it have no embedding"
        if context_field == "n_positions"
        else "it never trained on positions past it"
    )
    if params.tokenize.block_size > context:
        issues.append(
            f"tokenize.block_size: {params.tokenize.block_size} exceeds the model's {context_field} "
            f"({context}); {past_it}"
        )
    if params.evaluate.context > context:
        issues.append(
            f"evaluate.context: {params.evaluate.context} exceeds the model's {context_field} ({context}); {past_it}"
        )
    depth_field, blocks = depth(config)
    adapted = params.lora.adapted_blocks
    if params.finetune.method == "lora" and adapted is not None and adapted > blocks:
        issues.append(f"lora.adapted_blocks: {adapted} exceeds the model's {depth_field} ({blocks})")
    if params.finetune.method == "freeze" and params.freeze.trainable_blocks > blocks:
        issues.append(
            f"freeze.trainable_blocks: {params.freeze.trainable_blocks} exceeds the model's {depth_field} ({blocks})"
        )
    return issues


def _non_finite_issues(params: Params) -> list[str]:
    """Every float param, wherever it sits, must be a number: YAML reads `.inf` and `.nan` as floats, which pass
    every range check (`nan <= 0` is false) and then train to NaN weights, or fail deep inside the optimizer."""
    issues = []
    for key, value in params.flat().items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            issues.append(f"{key}: must be a finite number, got {value}")
    return issues


def _untracked_input_issues(params: Params) -> list[str]:
    """Local inputs must lie where dvc.yaml tracks them (pipeline/input_paths.py); Hub ids are not paths."""
    candidates = []
    if is_local_path(params.model.name_or_path):
        candidates.append(("model.name_or_path", params.model.name_or_path, "models"))
    if params.data.source == "local":
        files = {f"data.{split}_file": params.data.split_file(split) for split in SPLITS}
        candidates += [(key, path, "corpus") for key, path in files.items() if path is not None]
        if params.data.single_file is not None:
            candidates.append(("data.single_file", params.data.single_file, "corpus"))
    elif is_local_path(params.data.hub_dataset):
        candidates.append(("data.hub_dataset", params.data.hub_dataset, "corpus"))
    issues = [untracked_path_issue(key, path, kind) for key, path, kind in candidates]
    return [issue for issue in issues if issue is not None]


def _range_issues(params: Params) -> list[str]:
    issues = []
    positive = {
        "tokenize.block_size": params.tokenize.block_size,
        "train.batch_size": params.train.batch_size,
        "train.grad_accum_steps": params.train.grad_accum_steps,
        "train.processes": params.train.processes,
        "train.learning_rate": params.train.learning_rate,
        "train.epochs": params.train.epochs,
        "train.logging_steps": params.train.logging_steps,
        "train.max_grad_norm": params.train.max_grad_norm,
        "train.keep_checkpoints": params.train.keep_checkpoints,
        "evaluate.batch_size": params.evaluate.batch_size,
        "samples.max_new_tokens": params.samples.max_new_tokens,
        "evaluate.context": params.evaluate.context,
        "evaluate.stride": params.evaluate.stride,
    }
    optional_positive = {
        "train.max_steps": params.train.max_steps,
        "train.checkpoint_steps": params.train.checkpoint_steps,
        "train.eval_steps": params.train.eval_steps,
        "train.eval_blocks": params.train.eval_blocks,
        "train.early_stopping_patience": params.train.early_stopping_patience,
    }
    optional_positive |= {f"data.max_{split}_lines": params.data.max_lines(split) for split in SPLITS}
    issues += [f"{key}: must be > 0, got {value}" for key, value in positive.items() if value <= 0]
    issues += [
        f"{key}: must be > 0 or null, got {v}" for key, v in optional_positive.items() if v is not None and v <= 0
    ]
    non_negative = {
        "freeze.trainable_blocks": params.freeze.trainable_blocks,
        "train.warmup_steps": params.train.warmup_steps,
        "train.weight_decay": params.train.weight_decay,
    }
    issues += [f"{key}: must be >= 0, got {value}" for key, value in non_negative.items() if value < 0]
    # A window or block of one token holds no next token to predict: training on it is 0 loss for nothing.
    one_token = {"tokenize.block_size": params.tokenize.block_size, "evaluate.context": params.evaluate.context}
    for key, value in one_token.items():
        if value == 1:
            issues.append(f"{key}: must be >= 2 (a block of 1 token has no next token to predict), got 1")
    if not all(prompt.strip() for prompt in params.samples.prompts):
        issues.append("samples.prompts: every prompt must hold some text (an empty one has nothing to continue)")
    if params.mlflow.registered_model is not None and not params.mlflow.log_model:
        issues.append("mlflow.registered_model needs mlflow.log_model: true (a version is made from the logged model)")
    if params.evaluate.stride > params.evaluate.context:
        issues.append(
            f"evaluate.stride: {params.evaluate.stride} exceeds evaluate.context ({params.evaluate.context}); "
            "a window cannot score more tokens than it holds"
        )
    if params.train.early_stopping_patience is not None and params.train.eval_steps is None:
        issues.append("train.early_stopping_patience: needs train.eval_steps (validation points to stop on)")
    freeze = params.freeze  # what it trains matters under method freeze only; with lora it is not read
    trains_nothing = freeze.trainable_blocks == 0 and freeze.head == "frozen" and not freeze.train_ln_f
    if params.finetune.method == "freeze" and trains_nothing:
        issues.append(
            "freeze: trainable_blocks 0, head frozen and train_ln_f false train nothing; let at least one of them "
            "train (trainable_blocks >= 1, head tied or untied, or train_ln_f true)"
        )
    return issues + _lora_issues(params.lora) + _data_source_issues(params.data)


def _lora_issues(lora: LoraParams) -> list[str]:
    """Checked whatever the method, as the freeze section is: a section params.yaml holds is valid or refused."""
    issues = [f"lora.{key}: must be > 0, got {value}" for key, value in (("rank", lora.rank), ("alpha", lora.alpha))
              if value <= 0]  # fmt: skip
    if not 0 <= lora.dropout < 1:
        issues.append(f"lora.dropout: must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules or len(set(lora.target_modules)) != len(lora.target_modules):
        issues.append(f"lora.target_modules: one or more of {', '.join(LORA_TARGETS)}, each once; got "
                      f"{lora.target_modules}")  # fmt: skip
    if lora.adapted_blocks is not None and lora.adapted_blocks <= 0:
        issues.append(f"lora.adapted_blocks: must be > 0 or null (every block), got {lora.adapted_blocks}")
    return issues


def _data_source_issues(data: DataParams) -> list[str]:
    if data.source == "hub":
        return []
    per_split = {split: data.split_file(split) for split in SPLITS}
    if data.single_file is None and None in per_split.values():
        missing = [f"data.{split}_file" for split, path in per_split.items() if path is None]
        return [f"data.source is local: set data.single_file, or every split's file ({', '.join(missing)} unset)"]
    if data.single_file is not None and any(per_split.values()):
        return ["data.single_file and data.<split>_file are both set: choose one way to give local text"]
    if data.single_file is not None:
        fractions = data.split_fractions
        if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
            return [f"data.split_fractions: three positive train/validation/test shares summing to 1, got {fractions}"]
    return []


def _harness_issues(harness: HarnessParams) -> list[str]:
    issues = [f"harness.{key}: must be > 0, got {value}" for key, value in (("batch_size", harness.batch_size),
              ("limit", harness.limit)) if value is not None and value <= 0]  # fmt: skip
    tasks = harness.target_tasks + harness.retention_tasks
    if not tasks:
        issues.append("harness: name at least one task in target_tasks or retention_tasks")
    repeated = sorted({task for task in tasks if tasks.count(task) > 1})
    if repeated:
        issues.append(f"harness: each task once across target_tasks and retention_tasks; repeated: {repeated}")
    if harness.task_dir is not None:
        issues.append(untracked_path_issue("harness.task_dir", harness.task_dir, "tasks"))
    return [issue for issue in issues if issue is not None]
