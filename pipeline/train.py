"""Stage 3, train: fine-tune the pretrained model with the freeze policy, on packed blocks, with the HF Trainer.

Writes the fine-tuned model (safetensors, config, tokenizer), the training curve for `dvc plots`, and the
parameter accounting; logs all of it to MLflow.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import TrainOutput

from pipeline.cli import exit_on_user_error
from pipeline.corpus import read_splits
from pipeline.errors import UserError
from pipeline.files import atomic_dir, write_json, write_text_atomic
from pipeline.freeze import apply_freeze_policy, count_parameters, format_parameter_table
from pipeline.loading import load_config, load_model, load_tokenizer
from pipeline.params import Params, load_params
from pipeline.tracking import StageRun, stage_run

log = logging.getLogger(__name__)


def bf16_supported() -> bool:
    """bf16 autocast pays only where the hardware has bf16 arithmetic; elsewhere it is emulated and slower."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def causal_lm_batch(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Labels are the inputs: the model shifts them itself. Blocks are packed, so there is nothing to mask."""
    input_ids = torch.stack([example["input_ids"] for example in examples])
    return {"input_ids": input_ids, "labels": input_ids}


class CurveRecorder(TrainerCallback):
    """Collects (step, loss, learning rate) and throughput at every logging step, and streams them to MLflow."""

    def __init__(self, tokens_per_step: int, run: StageRun) -> None:
        self.tokens_per_step = tokens_per_step
        self.run = run
        self.curve: list[dict[str, float]] = []
        self.throughput: list[dict[str, float]] = []
        self._last_time = time.perf_counter()
        self._last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        now = time.perf_counter()
        tokens_per_s = (state.global_step - self._last_step) * self.tokens_per_step / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, state.global_step
        point = {"step": state.global_step, "loss": logs["loss"], "learning_rate": logs["learning_rate"]}
        self.curve.append(point)
        self.throughput.append({"step": state.global_step, "tokens_per_s": round(tokens_per_s, 1)})
        self.run.log_metrics(
            {"loss": point["loss"], "learning_rate": point["learning_rate"], "tokens_per_s": tokens_per_s},
            step=state.global_step,
        )


def training_arguments(params: Params, scratch_dir: Path, use_bf16: bool) -> TrainingArguments:
    train = params.train
    return TrainingArguments(
        output_dir=str(scratch_dir),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=train.seed,
        data_seed=train.seed,
        full_determinism=train.deterministic,
        logging_steps=train.logging_steps,
        save_strategy="no",  # the stage saves the final model itself; Trainer checkpoints would hold temp paths
        eval_strategy="no",  # evaluation is its own stage, with the base model on the same blocks
        report_to="none",  # MLflow logging is the stage's, grouped per pipeline execution
        dataloader_num_workers=0,  # blocks are in memory already; worker processes only add start-up time
    )


def train(
    params: Params, model, blocks: Dataset, run: StageRun, scratch_dir: Path
) -> tuple[CurveRecorder, TrainOutput]:
    """Train `model` in place on `blocks`; return the recorded curve and the Trainer's summary."""
    use_bf16 = params.train.bf16 and bf16_supported()
    if params.train.bf16 and not use_bf16:
        log.warning("train.bf16 is true but this hardware has no bf16 arithmetic: training in fp32")
    run.set_tags({"train.precision": "bf16-autocast" if use_bf16 else "fp32"})
    block_size = len(blocks[0]["input_ids"])
    recorder = CurveRecorder(params.train.batch_size * params.train.grad_accum_steps * block_size, run)
    trainer = Trainer(
        model=model,
        args=training_arguments(params, scratch_dir, use_bf16),
        train_dataset=blocks.with_format("torch"),
        data_collator=causal_lm_batch,
        callbacks=[recorder],
    )
    return recorder, trainer.train()


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--tokenized", type=Path, required=True, help="folder of packed <split>.parquet")
    parser.add_argument("--out", type=Path, required=True, help="folder for the fine-tuned model")
    parser.add_argument("--curve", type=Path, required=True, help="CSV of step, loss, learning_rate")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON of final loss and parameter counts")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        params = load_params(args.params, load_model_config=load_config)
        sections = ("mlflow", "model", "tokenize", "freeze", "train")
        with stage_run("train", params, sections, inputs=[args.tokenized]) as run:
            set_seed(params.train.seed)
            blocks = read_splits(args.tokenized, ("train",))["train"]
            tokenizer = load_tokenizer(params.model.name_or_path)
            model = load_model(params.model.name_or_path)
            check_vocabulary(model, tokenizer, blocks)
            apply_freeze_policy(model, params.freeze)
            counts = count_parameters(model)
            table = format_parameter_table(counts, params.freeze.head)
            log.info("parameters:\n%s", table)
            run.log_metrics(counts.as_metrics())
            run.log_group_metrics(counts.as_metrics())
            run.set_tags({"freeze.head_mode": params.freeze.head})
            with tempfile.TemporaryDirectory() as scratch:
                recorder, result = train(params, model, blocks, run, Path(scratch))
            with atomic_dir(args.out) as staging:
                model.save_pretrained(staging)
                tokenizer.save_pretrained(staging)
            write_curve(args.curve, recorder.curve)
            # Throughput is a timing: it lives beside the outputs, not in them (see dvc.yaml's top-level plots).
            write_curve(args.curve.with_name("train_throughput.csv"), recorder.throughput)
            summary = {"train_loss": result.training_loss, "steps": result.global_step}
            write_json(args.metrics, {**summary, "parameters": counts.as_json()})
            run.log_metrics(summary)
        print(
            f"trainable {counts.trainable:,} of {counts.total:,} parameters ({params.freeze.head} head); "
            f"train loss {result.training_loss:.4f} after {result.global_step} steps; model saved to {args.out}"
        )


if __name__ == "__main__":
    main()
