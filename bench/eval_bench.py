"""Eval benchmark: the evaluate stage's streaming scores against the original `Trainer.evaluate`, at two set sizes.

    python -m bench.eval_bench [--blocks N]

The original script evaluated with `Trainer.evaluate` and a `compute_metrics` over the full logits, which the
Trainer keeps for the whole set (rows x 64 x 50,257 floats), so its memory grows with the eval set; the evaluate
stage (`pipeline.evaluation.lm_metrics.score_stream`) reduces each batch to three numbers. Both score the same text, the
first rows of a generated validation split that fill N (then 4N) packed blocks of 128: the stage as those blocks,
the original style as the same rows padded to 64. Each run is its own process, so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import EvalPrediction, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from bench import measure, workload
from pipeline.evaluation.lm_metrics import score_stream
from pipeline.params import EvaluateParams, TokenizeParams
from pipeline.tracking.cli import configure_logging

log = logging.getLogger(__name__)

DEFAULT_BLOCKS = 12
"""Packed blocks in the smaller eval set (one full batch and a half); the larger has 4x: 48 blocks, about 210
padded rows, for which the original style keeps 2.7 GB of logits."""
SIZE_FACTOR = 4
ORIGINAL_EVAL_BATCH_SIZE = 8
"""The Trainer's default `per_device_eval_batch_size`, which the original script kept."""
CORPUS_WORDS = 70_000
"""Generated text for the tokenizer (the train bench's corpus); the eval rows come from a stream of their own."""


def full_logit_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """The original script's metric: next-token accuracy from the arg-max of every logit the Trainer kept."""
    predictions = prediction.predictions[:, :-1].argmax(axis=-1)
    return {"accuracy": float((predictions == prediction.label_ids[:, 1:]).mean())}


def evaluate_original_style(config: GPT2Config, rows: dict[str, np.ndarray]) -> dict:
    """Worker, in its own process: `Trainer.evaluate` with full-logit `compute_metrics` over padded rows."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(measure.device())
    dataset = Dataset.from_dict({**rows, "labels": rows["input_ids"]}).with_format("torch")
    warm_up(model, dataset[:ORIGINAL_EVAL_BATCH_SIZE]["input_ids"])
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_eval_batch_size=ORIGINAL_EVAL_BATCH_SIZE,
            use_cpu=not torch.cuda.is_available(),
            report_to="none",
        )
        trainer = Trainer(model=model, args=args, eval_dataset=dataset, compute_metrics=full_logit_metrics)
        rss_before = measure.current_rss_bytes()
        started = time.perf_counter()
        trainer.evaluate()
        seconds = time.perf_counter() - started
    return figures(
        "original-style: Trainer.evaluate + full-logit compute_metrics, rows padded to 64", rows, seconds, rss_before
    )


def evaluate_stage(config: GPT2Config, blocks: np.ndarray) -> dict:
    """Worker, in its own process: the evaluate stage's scoring, with its default batch size and precision, in
    disjoint windows of the blocks' length over their stream (the protocol's cost: bench/eval_protocol_bench.py)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(measure.device())
    params = EvaluateParams()
    block_tensor = torch.from_numpy(blocks).long()
    warm_up(model, block_tensor[: params.batch_size], params.bf16)
    rss_before = measure.current_rss_bytes()
    started = time.perf_counter()
    block_size = blocks.shape[1]
    score_stream(model, block_tensor.flatten(), block_size, block_size, params.batch_size, params.bf16)
    measure.synchronize()
    seconds = time.perf_counter() - started
    precision = "bf16" if params.bf16 else "fp32"
    return figures(
        f"evaluate stage: score_stream, disjoint windows, batch {params.batch_size}, {precision}",
        {"input_ids": blocks},
        seconds,
        rss_before,
    )


@torch.inference_mode()
def warm_up(model, input_ids: torch.Tensor, bf16: bool = False) -> None:
    """One untimed batch: the first call of each kernel pays for choosing and building it."""
    model.eval()
    with torch.autocast(measure.device().type, dtype=torch.bfloat16, enabled=bf16):
        model(input_ids=input_ids.to(measure.device()))


def figures(setting: str, inputs: dict[str, np.ndarray], seconds: float, rss_before: int) -> dict:
    tokens = inputs["input_ids"].size
    useful = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else tokens
    return {
        "setting": setting,
        "shape": " × ".join(str(n) for n in inputs["input_ids"].shape),
        "tokens": tokens,
        "useful_tokens": useful,
        "seconds": seconds,
        "rss_before": rss_before,
        "peak_rss": measure.peak_rss_bytes(),
        "peak_gpu": measure.peak_gpu_bytes(),
    }


def run_benchmark(config: GPT2Config, blocks: int, corpus_words: int = CORPUS_WORDS) -> dict:
    """Both styles on the text of `blocks` and of SIZE_FACTOR x `blocks` packed blocks, each in its own process."""
    tokenizer = workload.synthetic_tokenizer(workload.synthetic_rows(corpus_words, seed=0))
    eval_rows = workload.synthetic_rows(corpus_words, seed=1)
    block_size = TokenizeParams().block_size
    runs = []
    for size in (blocks, SIZE_FACTOR * blocks):
        rows = workload.rows_for_blocks(eval_rows, tokenizer, size, block_size)
        log.info("evaluating %d blocks (%d rows), original style and the evaluate stage", size, len(rows))
        for worker, inputs in (
            (evaluate_original_style, workload.padded_rows(rows, tokenizer)),
            (evaluate_stage, workload.packed_blocks(rows, tokenizer, block_size)),
        ):
            runs.append({"blocks": size, "rows": len(rows), **measure.run_isolated(worker, config, inputs)})
    return {"blocks": blocks, "runs": runs}


def format_report(report: dict) -> str:
    """The eval table for docs/performance.md, with each style's peak-memory growth over 4x the eval set."""
    table_rows, peaks = [], {}
    for run in report["runs"]:
        peak_gpu = f" (GPU {run['peak_gpu'] / measure.GIB:.2f})" if run["peak_gpu"] is not None else ""
        peaks.setdefault(run["setting"], []).append(run["peak_rss"])
        table_rows.append(
            [
                run["setting"],
                run["blocks"],
                run["shape"],
                f"{run['tokens']:,}",
                f"{run['useful_tokens']:,}",
                f"{run['tokens'] / run['seconds']:,.0f}",
                f"{run['useful_tokens'] / run['seconds']:,.0f}",
                f"{run['peak_rss'] / measure.GIB:.2f}{peak_gpu}",
                f"{(run['peak_rss'] - run['rss_before']) / measure.GIB:.2f}",
            ]
        )
    headers = [
        "setting",
        "eval set (blocks)",
        "rows or blocks × seq",
        "tokens",
        "useful tokens",
        "tokens/s",
        "useful tokens/s",
        "peak RSS GiB",
        "peak over RSS at start GiB",
    ]
    growth = "; ".join(f"{setting.split(':')[0]} {values[-1] / values[0]:.2f}×" for setting, values in peaks.items())
    return "\n\n".join(
        [
            f"**Evaluation**, GPT-2 small shapes (random weights), on the text of {report['blocks']} and "
            f"{SIZE_FACTOR * report['blocks']} packed blocks of 128 (generated Wikitext-shaped validation rows; the "
            f"original style scores the same rows padded to 64), each run in its own process. "
            f"Machine: {measure.machine_description()}.",
            measure.markdown_table(headers, table_rows),
            f"Peak RSS with {SIZE_FACTOR}x the eval set, over peak RSS with 1x: {growth}. Useful tokens are non-pad "
            'tokens; "peak over RSS at start" is the peak less the resident memory just before scoring (model loaded, '
            "one warm-up batch run).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, help="blocks in the smaller eval set")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    args = parser.parse_args(argv)
    if args.blocks < 1:
        parser.error("--blocks must be at least 1")
    configure_logging()
    measure.use_threads(args.threads)
    print(format_report(run_benchmark(GPT2Config(), args.blocks)))


if __name__ == "__main__":
    main()
