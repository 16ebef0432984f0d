"""Stage 3, train: fine-tune the pretrained model (freeze policy or LoRA) on packed blocks with the HF Trainer.

Writes the fine-tuned model (safetensors, config, tokenizer; a plain GPT-2 whatever the method: LoRA's adapters
are merged into it), the training curve for `dvc plots`, and the parameter accounting; logs all of it to MLflow.
Checkpoints go to `--checkpoints` (see pipeline/training/checkpoints.py): a rerun after a crash, a kill -9 or a
SIGINT/SIGTERM resumes from the newest complete one of the same configuration and ends with the outputs an unbroken
run would have written. With `train.processes` above 1 the stage runs as that many torch.distributed ranks
(pipeline/training/distributed.py), and rank 0 alone writes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed

from pipeline.data.corpus import read_splits, split_path
from pipeline.data.files import write_json, write_text_atomic
from pipeline.data.loading import load_config, load_model, load_tokenizer
from pipeline.errors import UserError
from pipeline.params import Params, load_params
from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.models import describe, log_finetuned_model, method_summary
from pipeline.tracking.runs import StageRun, UntrackedRun, stage_run
from pipeline.tracking.signals import deferred_signals
from pipeline.training.assembly import build_trainer, caches_prefix, prepare_model
from pipeline.training.checkpoints import STEP_LOG, CheckpointStore, base_model_identity, checkpoint_key
from pipeline.training.distributed import (
    broadcast_from_main,
    check_world,
    end_process_group,
    init_process_group,
    is_main_process,
    launch,
    launched_by_torchrun,
)
from pipeline.training.freeze import ParameterCounts, count_parameters, format_parameter_table
from pipeline.training.numerics import numerics_fingerprint
from pipeline.training.resumable import CheckpointCallback, StepLog, load_final_weights, training_finished
from pipeline.training.saving import save_finetuned
from pipeline.training.trainer_setup import bf16_supported, peak_memory_gib
from pipeline.training.validation import ValidationCallback, load_best_weights, patience_exhausted, validation_blocks

log = logging.getLogger(__name__)

PARAMS = {"train": ("model.name_or_path", "tokenize.block_size", "finetune", "freeze", "lora", "train")}
"""The params.yaml keys each DVC stage this module runs reads (dvc.yaml lists the same; a test holds them equal)."""


def train(
    params: Params,
    model,
    blocks: Dataset,
    run: StageRun,
    store: CheckpointStore,
    use_bf16: bool,
    prefix_cache_dir: Path,
    validation: torch.Tensor | None = None,
) -> tuple[StepLog, list[dict[str, float]]]:
    """Train `model` in place on `blocks`, from the newest usable checkpoint of `store` if there is one, scoring
    the `validation` blocks every `train.eval_steps` (pipeline/training/validation.py).

    Returns the step log of the whole run (resumed parts included) and this process's throughput points.
    SIGINT/SIGTERM stop it after the current step with a checkpoint, then raise `Interrupted`. With
    `train.cache_frozen_prefix` and a frozen prefix, the Trainer trains only the tail, on cached prefix outputs.
    With early stopping, the model ends with the best weights.
    """
    # Rank 0 picks (and prunes): every rank resumes from the same checkpoint.
    resume_from = broadcast_from_main(store.resume_point() if is_main_process() else None)
    step_log = StepLog.read(resume_from / STEP_LOG) if resume_from else StepLog()
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, len(step_log.losses))
    run.set_tags({"checkpoint.key": store.key, "checkpoint.resumed_from_step": len(step_log.losses)})
    patience = params.train.early_stopping_patience
    if resume_from and (training_finished(resume_from) or patience_exhausted(step_log, patience)):
        load_final_weights(model, resume_from)
        load_best_weights(model, resume_from)
        return step_log, []
    if params.train.checkpoint_steps and is_main_process():
        store.ensure_room(model)  # fail now, not after the first hour
    tokens_per_step = params.train.global_batch_size * len(blocks[0]["input_ids"])
    with deferred_signals() as stop:
        callback = CheckpointCallback(step_log, store, stop, run, params.train.logging_steps, tokens_per_step)
        callbacks = [callback]
        if validation is not None:
            scorer = ValidationCallback(model, validation, params.train, step_log, run, use_bf16)
            scorer.resume(resume_from)
            callbacks.insert(0, scorer)  # its point is in the step log before the step's checkpoint is sealed
        trainer = build_trainer(
            params,
            model,
            blocks,
            output_dir=store.staging,
            prefix_cache_dir=prefix_cache_dir,
            use_bf16=use_bf16,
            callbacks=callbacks,
            step_log=step_log,
        )
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if validation is not None:
        scorer.restore_best()
    return step_log, callback.throughput


def shared_path(path: Path) -> Path:
    """A relative path under the original repo when DVC runs this in a temporary copy (`dvc exp run --queue`):
    `DVC_ROOT` names that repo there, so queued experiments with the same frozen prefix share one cache."""
    root = os.environ.get("DVC_ROOT")
    return Path(root) / path if root and not path.is_absolute() else path


def check_vocabulary(model, tokenizer, blocks: Dataset) -> None:
    """A token id past the embedding table would index out of range deep inside torch; say which input is wrong."""
    largest_token = max(max(row) for row in blocks["input_ids"])
    if len(tokenizer) > model.config.vocab_size or largest_token >= model.config.vocab_size:
        raise UserError(
            f"the tokenizer ({len(tokenizer)} tokens, data up to id {largest_token}) does not fit the model's "
            f"vocabulary ({model.config.vocab_size}): model.name_or_path must hold a matching model and tokenizer, "
            "and data/tokenized must come from that tokenizer (`dvc repro tokenize`)"
        )


def write_curve(path: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        write_text_atomic(path, "")
        return
    lines = [",".join(rows[0])] + [",".join(str(value) for value in row.values()) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def check_converging(step_log: StepLog, params: Params) -> None:
    """A loss that went NaN or infinite leaves NaN weights: refuse to save or log them as a model."""
    step = step_log.first_non_finite_step()
    if step is not None:
        raise UserError(
            f"training diverged: the loss was {step_log.losses[step - 1]} at step {step} of {len(step_log.losses)}, "
            f"so the weights are not numbers and no model is saved or logged; lower train.learning_rate (now "
            f"{params.train.learning_rate}) or train.max_grad_norm ({params.train.max_grad_norm}) and rerun"
        )


def validation_summary(step_log: StepLog, patience: int | None) -> dict[str, float]:
    """The last validation loss, and with early stopping the best one and its step (the weights saved)."""
    if not step_log.validation:
        return {}
    summary = {"validation_loss": step_log.validation[-1][1]}
    if patience is not None:
        best_step, best_loss = min(step_log.validation, key=lambda point: point[1])
        summary |= {"best_validation_loss": best_loss, "best_step": best_step}
    return summary


def choose_precision(params: Params, run: StageRun) -> bool:
    """Whether to train with bf16 autocast: asked for and supported by the hardware."""
    use_bf16 = params.train.bf16 and bf16_supported()
    if params.train.bf16 and not use_bf16:
        log.warning("train.bf16 is true but this hardware has no bf16 arithmetic: training in fp32")
    run.set_tags({"train.precision": "bf16-autocast" if use_bf16 else "fp32"})
    return use_bf16


def method_tags(params: Params, prefix_cached: bool) -> dict[str, str]:
    """MLflow tags naming how the run fine-tunes; the head mode only where the freeze section is read."""
    tags = {"finetune.method": params.finetune.method, "train.frozen_prefix_cached": str(prefix_cached).lower()}
    if params.finetune.method == "freeze":
        tags["freeze.head_mode"] = params.freeze.head
    return tags


def fine_tune(
    args: argparse.Namespace, params: Params, run: StageRun
) -> tuple[dict[str, float], ParameterCounts, CheckpointStore]:
    """The stage's work in this process, given its MLflow run; rank 0 alone writes. Returns the summary, the
    parameter counts and the checkpoints, which the caller discards once the run is recorded too."""
    set_seed(params.train.seed)
    splits = read_splits(args.tokenized, ("train", "validation") if params.train.eval_steps else ("train",))
    blocks = splits["train"]
    validation = None
    if "validation" in splits:
        validation = validation_blocks(splits["validation"].with_format("torch")[:]["input_ids"],
                                       params.train.eval_blocks)  # fmt: skip
    tokenizer = load_tokenizer(params.model.name_or_path)
    model = load_model(params.model.name_or_path)
    pretrained_use_cache = model.config.use_cache  # the Trainer changes it (pipeline/training/saving.py)
    check_vocabulary(model, tokenizer, blocks)
    base_model = base_model_identity(params.model.name_or_path, model.config)
    prepared = prepare_model(model, params)
    counts = count_parameters(model)
    log.info("parameters:\n%s", format_parameter_table(counts, prepared.description))
    run.log_metrics(counts.as_metrics())
    run.log_group_metrics(counts.as_metrics())
    run.log_metrics({"global_batch_size": params.train.global_batch_size})  # batch_size x grad_accum x processes
    run.set_tags(method_tags(params, caches_prefix(params, prepared.layout)))
    use_bf16 = choose_precision(params, run)
    numerics = numerics_fingerprint(model, params.tokenize.block_size, use_bf16)
    log.info("numerics: %s", ", ".join(f"{name} {value}" for name, value in numerics.items()))
    run.set_tags({f"numerics.{name}": value for name, value in numerics.items()})
    validation_split = split_path(args.tokenized, "validation") if validation is not None else None
    key = checkpoint_key(
        params, split_path(args.tokenized, "train"), base_model, str(use_bf16), validation_split, numerics
    )
    store = CheckpointStore(args.checkpoints, key, params.train.keep_checkpoints, params.train.processes)
    with store.claimed() if is_main_process() else nullcontext():
        prefix_cache = shared_path(args.prefix_cache)
        step_log, throughput = train(params, model, blocks, run, store, use_bf16, prefix_cache, validation)
        check_converging(step_log, params)
        summary = {"train_loss": step_log.mean_loss(), "steps": len(step_log.losses)}
        summary |= validation_summary(step_log, params.train.early_stopping_patience)
        if not is_main_process():
            return summary, counts, store
        save_finetuned(prepared.model_to_save(), tokenizer, args.out, pretrained_use_cache)
        write_curve(args.curve, step_log.curve(params.train.logging_steps))
        write_curve(args.validation_curve, [{"step": s, "validation_loss": v} for s, v in step_log.validation])
        write_curve(args.throughput, throughput)  # a timing: beside the outputs, not one of them
        write_json(args.metrics, {**summary, "parameters": counts.as_json()})
        run.log_metrics(summary | {"peak_memory_gib": peak_memory_gib()})  # a measurement: MLflow only
        run.describe(describe(method_summary(params), counts.trainable, counts.total))
        log_finetuned_model(run, args.out, params)
    return summary, counts, store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--tokenized", type=Path, required=True, help="folder of packed <split>.parquet")
    parser.add_argument("--checkpoints", type=Path, required=True, help="folder for resumable state (not an output)")
    parser.add_argument("--prefix-cache", type=Path, required=True, help="folder of cached frozen-prefix outputs")
    parser.add_argument("--out", type=Path, required=True, help="folder for the fine-tuned model")
    parser.add_argument("--curve", type=Path, required=True, help="CSV of step, loss, learning_rate")
    parser.add_argument("--validation-curve", type=Path, required=True, help="CSV of step, validation loss")
    parser.add_argument("--throughput", type=Path, required=True, help="CSV of step, tokens_per_s (not an output)")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON of final loss and parameter counts")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        params = load_params(args.params, load_model_config=load_config)
        check_world(params.train.processes)
        if params.train.processes > 1 and not launched_by_torchrun():
            launch(params.train.processes, sys.argv[1:] if argv is None else argv)  # exits when the ranks end
        if not is_main_process():
            logging.getLogger().setLevel(logging.WARNING)  # one log per run, rank 0's
        init_process_group()
        try:
            # Ranks other than 0 open no MLflow run: one train run per pipeline execution.
            tracking = (
                stage_run("train", params, PARAMS["train"], inputs=[args.tokenized], system_metrics=True)
                if is_main_process()
                else nullcontext(UntrackedRun())
            )
            with tracking as run:
                summary, counts, store = fine_tune(args, params, run)
            if is_main_process():
                # Only now, with every output written, the model logged and the run ended: a kill or a failure
                # before this point leaves the last checkpoint, so the rerun saves and logs without training.
                store.discard()
        finally:
            end_process_group()
    if is_main_process():
        print(
            f"trainable {counts.trainable:,} of {counts.total:,} parameters ({method_summary(params)}); "
            f"train loss {summary['train_loss']:.4f} after {summary['steps']} steps; model saved to {args.out}"
        )


if __name__ == "__main__":
    main()
