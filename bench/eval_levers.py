"""The evaluation levers a PyTorch user reaches for, each measured against the evaluate stage as it is.

    python -m bench.eval_levers [--rounds 3] [--no-compile]

Two windows of the evaluate stage's default protocol (1,024 tokens fed each, 1,024 + 512 scored) through
`score_stream`, GPT-2 small shapes with random weights (no download). The variants alternate in rounds inside one
process, so machine noise hits them alike, and each keeps its fastest round; the loss column is each variant's mean
loss minus the stage's (fp32), which a lever must keep within 1e-4 nats to be worth having. `torch.compile` of the
transformer body (inductor's CPU backend) is timed apart: its first call compiles, and the table says how long that
took, against which its per-window gain is weighed.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bench import measure
from bench.op_profile import EVAL_CONTEXT, EVAL_STRIDE
from pipeline.activations import fuse_gelu_new
from pipeline.evaluation.lm_metrics import score_stream

BATCH_WINDOWS = 2


@dataclass(frozen=True)
class Lever:
    name: str
    fused_gelu: bool = False
    bf16: bool = False
    compiled: bool = False


LEVERS = (
    Lever("evaluate stage: fp32, gelu_new, sdpa"),
    Lever("+ one-kernel GELU", fused_gelu=True),
    Lever("bf16 autocast (evaluate.bf16), gelu_new", bf16=True),
    Lever("bf16 autocast + one-kernel GELU", fused_gelu=True, bf16=True),
    Lever("fp32, one-kernel GELU, torch.compile of the body", fused_gelu=True, compiled=True),
)


def models(compile_body: bool) -> dict[tuple[bool, bool], GPT2LMHeadModel]:
    """(fused GELU, compiled) -> the same random GPT-2 small, so every lever scores the same weights."""
    torch.manual_seed(0)
    plain = GPT2LMHeadModel(GPT2Config()).eval()
    fused = copy.deepcopy(plain)
    fuse_gelu_new(fused)
    found = {(False, False): plain, (True, False): fused}
    if compile_body:
        compiled = copy.deepcopy(fused)
        compiled.transformer = torch.compile(compiled.transformer)  # what score_stream runs as `base_model`
        found[(True, True)] = compiled
    return found


def timed(run: Callable[[], float]) -> tuple[float, float]:
    started = time.perf_counter()
    loss = run()
    return time.perf_counter() - started, loss


def run_levers(rounds: int, compile_body: bool) -> tuple[dict[str, tuple[float, float]], float | None]:
    """Lever -> (fastest seconds per call, mean loss), and the compiled variant's first call (compile) in seconds."""
    found = models(compile_body)
    tokens = torch.randint(0, found[(False, False)].config.vocab_size, (EVAL_CONTEXT + EVAL_STRIDE + 1,))
    levers = [lever for lever in LEVERS if compile_body or not lever.compiled]
    calls = {
        lever.name: (lambda lever=lever: score_stream(found[(lever.fused_gelu, lever.compiled)], tokens, EVAL_CONTEXT,
                                                      EVAL_STRIDE, BATCH_WINDOWS, lever.bf16).loss)
        for lever in levers
    }  # fmt: skip
    compile_seconds = None
    for lever in levers:  # warm-up; the compiled variant compiles here
        seconds, _ = timed(calls[lever.name])
        if lever.compiled:
            compile_seconds = seconds
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for lever in levers:
            seconds, loss = timed(calls[lever.name])
            best[lever.name] = (min(seconds, best.get(lever.name, (float("inf"),))[0]), loss)
    return best, compile_seconds


def format_levers(best: dict[str, tuple[float, float]], compile_seconds: float | None) -> str:
    first_seconds, first_loss = next(iter(best.values()))
    scored = EVAL_CONTEXT + EVAL_STRIDE
    rows = [[name, f"{seconds:.2f}", f"{scored / seconds:,.0f}", f"{first_seconds / seconds:.2f}×",
             f"{loss - first_loss:+.1e}"] for name, (seconds, loss) in best.items()]  # fmt: skip
    caption = (f"**Evaluation levers**, {BATCH_WINDOWS} windows of {EVAL_CONTEXT} / {EVAL_STRIDE} "
               f"({scored:,} tokens scored): {measure.machine_description()}.")  # fmt: skip
    table = measure.markdown_table(["lever", "s/call", "scored tokens/s", "vs stage", "loss - stage's"], rows)
    note = "" if compile_seconds is None else f"\n\ntorch.compile's first call (compiling): {compile_seconds:.1f} s."
    return caption + "\n\n" + table + note


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all levers; each keeps its fastest")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles for minutes)")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    measure.use_threads(args.threads)
    print(format_levers(*run_levers(args.rounds, not args.no_compile)))


if __name__ == "__main__":
    main()
