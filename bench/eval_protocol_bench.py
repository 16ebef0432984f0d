"""Eval protocol benchmark: what a sliding window costs against disjoint windows, in fp32 and bf16, with the LM
head over every position (full logits) or only the scored ones (what the evaluate stage does).

    python -m bench.eval_protocol_bench [--tokens N] [--threads T]
    python -m bench.eval_protocol_bench --model local/models/tiny-gpt2 --text local/corpus/offline/validation.txt

GPT-2 small shapes with random weights, on a random token stream of N tokens; each configuration runs in its own
process, so its peak memory is its own. Throughput counts scored tokens (the split's tokens), whatever the
windows feed. The loss column shows how far bf16 moves the number from fp32 on the same windows. bf16 runs use the
one-kernel GELU, as the evaluate stage does in bf16. The FLOP rate counts the matmuls of every window fed (the
blocks, attention over the full T×T as bench.measure counts it, the head at the scored positions only) against the
MLP-shaped bf16 GEMM measured in the same run. With --model and --text: that model's loss on that text under
windows up to its n_positions, to choose a profile's protocol.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from bench import measure
from pipeline.activations import fuse_gelu_new
from pipeline.data.blocks import tokenize_text
from pipeline.evaluation.lm_metrics import TokenScores, plan_windows, score_stream
from pipeline.params import EvaluateParams
from pipeline.tracking.cli import configure_logging

DEFAULT_TOKENS = 2_049
"""Two 1,024-token disjoint windows (the scored tokens); the sliding window at stride 512 feeds four."""
PROTOCOLS = ((1024, 1024), (1024, 512))
"""(context, stride): disjoint, and the default (HF's guide)."""


@torch.inference_mode()
def score_full_logits(model, tokens: torch.Tensor, context: int, stride: int, batch_size: int, bf16: bool):
    """The same windows, batched the same way, scored from the model's full logits (the head over every position:
    batch x context x 50,257 floats), then sliced to the scored positions."""
    model.eval()
    windows = list(plan_windows(len(tokens), context, stride))
    scores = TokenScores()
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        inputs = torch.stack([tokens[w.start : w.start + w.length] for w in batch]).long()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=inputs).logits
        for row, w in enumerate(batch):
            targets = tokens[w.start + w.length - w.scored + 1 : w.start + w.length + 1].long()
            scores.update(logits[row, -w.scored :], targets)
    return scores


def run_one(config: GPT2Config, tokens: torch.Tensor, context: int, stride: int, bf16: bool, head: str) -> dict:
    """Worker, in its own process: one protocol, precision and head placement, after an untimed warm-up window."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(measure.device())
    if bf16:
        fuse_gelu_new(model)  # as pipeline.evaluate does in bf16
    batch_size = EvaluateParams().batch_size
    scorer = score_stream if head == "scored positions" else score_full_logits
    scorer(model, tokens[: context + 1], context, stride, 1, bf16)
    rss_before = measure.current_rss_bytes()
    started = time.perf_counter()
    scores = scorer(model, tokens, context, stride, batch_size, bf16)
    seconds = time.perf_counter() - started
    windows = list(plan_windows(len(tokens), context, stride))
    return {
        "protocol": f"{context} / {stride}",
        "precision": "bf16" if bf16 else "fp32",
        "head": head,
        "scored": scores.tokens,
        "fed": sum(w.length for w in windows),
        "flops": sum(measure.window_flops(model, w.length, w.scored) for w in windows),
        "seconds": seconds,
        "loss": scores.loss,
        "peak_rss": measure.peak_rss_bytes(),
        "rss_before": rss_before,
    }


def run_benchmark(config: GPT2Config, n_tokens: int) -> list[dict]:
    tokens = torch.randint(0, config.vocab_size, (n_tokens,), generator=torch.Generator().manual_seed(0))
    runs = []
    for context, stride in PROTOCOLS:
        for bf16 in (False, True):
            for head in ("scored positions", "full logits"):
                if head == "full logits" and stride == context:
                    continue  # the head's share is shown once, at the default protocol
                runs.append(measure.run_isolated(run_one, config, tokens, context, stride, bf16, head))
    return runs


def format_report(runs: list[dict], n_tokens: int, bf16_gemm: float) -> str:
    """The table; `bf16_gemm`: the same run's MLP-shaped bf16 GEMM rate, FLOP/s."""
    fp32_loss = {(r["protocol"], r["head"]): r["loss"] for r in runs if r["precision"] == "fp32"}
    rows = [
        [
            r["protocol"],
            r["precision"],
            r["head"],
            f"{r['scored']:,}",
            f"{r['fed']:,}",
            f"{r['scored'] / r['seconds']:,.0f}",
            f"{r['flops'] / r['seconds'] / 1e9:,.0f}",
            f"{r['flops'] / r['seconds'] / bf16_gemm:.0%}",
            f"{r['loss']:.5f}",
            f"{r['loss'] - fp32_loss[(r['protocol'], r['head'])]:+.1e}",
            f"{r['peak_rss'] / measure.GIB:.2f}",
            f"{(r['peak_rss'] - r['rss_before']) / measure.GIB:.2f}",
        ]
        for r in runs
    ]
    headers = [
        "context / stride",
        "precision",
        "LM head over",
        "tokens scored",
        "tokens fed",
        "scored tokens/s",
        "GFLOP/s",
        "of bf16 GEMM",
        "loss",
        "loss - fp32 loss",
        "peak RSS GiB",
        "peak over RSS at start GiB",
    ]
    return "\n\n".join(
        [
            f"**Eval protocols**, GPT-2 small shapes (random weights), a random stream of {n_tokens:,} tokens, batch "
            f"{EvaluateParams().batch_size} windows, each run in its own process. Machine: "
            f"{measure.machine_description()}. Same-run bf16 GEMM (MLP shape): {bf16_gemm / 1e9:,.0f} GFLOP/s.",
            measure.markdown_table(headers, rows),
            "Random weights put the loss near ln(50,257) = 10.8; the bf16 column shows the rounding, not a model's "
            "sensitivity to it.",
        ]
    )


def protocol_losses(model_dir: str, text_file: str) -> str:
    """Loss of a trained model on a text's stream, for disjoint and sliding windows of each length it allows."""
    model = GPT2LMHeadModel.from_pretrained(model_dir)
    lines = Path(text_file).read_text(encoding="utf-8").splitlines(keepends=True)
    tokens = torch.from_numpy(tokenize_text(lines, AutoTokenizer.from_pretrained(model_dir)))
    rows = []
    context = 64
    while context <= model.config.n_positions:
        for stride in (context, context // 2, context // 4):
            fp32, bf16 = (score_stream(model, tokens, context, stride, 32, bf16) for bf16 in (False, True))
            rows.append(
                [f"{context} / {stride}", f"{fp32.tokens:,}", f"{fp32.loss:.4f}", f"{bf16.loss - fp32.loss:+.1e}"]
            )
        context *= 2
    headers = ["context / stride", "tokens scored", "loss (fp32)", "bf16 - fp32"]
    caption = f"**Eval protocols on {model_dir}** ({model.config.n_positions} positions), text {text_file}."
    return "\n\n".join([caption, measure.markdown_table(headers, rows)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="length of the token stream")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    parser.add_argument("--model", help="a trained GPT-2 folder: its loss per protocol on --text instead")
    parser.add_argument("--text", help="UTF-8 text file to score with --model")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.text is None):
        parser.error("--model and --text go together")
    if args.tokens < 2:
        parser.error("--tokens must be at least 2")
    configure_logging()
    measure.use_threads(args.threads)
    if args.model:
        print(protocol_losses(args.model, args.text))
        return
    config = GPT2Config()
    runs = run_benchmark(config, args.tokens)
    print(format_report(runs, args.tokens, measure.mlp_bf16_gemm_rate(config, EvaluateParams().context)))


if __name__ == "__main__":
    main()
