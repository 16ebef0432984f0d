"""Where a default training step and an evaluation window spend their time on this CPU, by op (torch.profiler).

    python -m bench.op_profile [--steps 3] [--windows 2] [--top 12]

The training step is bench.ablation's with every change of the train stage on (tied head, the last block
trainable, 8 x 128, bf16 autocast where the CPU has bf16 arithmetic, fused head loss, fused AdamW, clipping); the
evaluation window is the evaluate stage's `score_stream` at its defaults (1,024 context / 512 stride, fp32), once
more in bf16 autocast. GPT-2 small shapes, random weights (no download). Each profile covers a few steps or windows
after a warm-up and reports self CPU time per op, then the same grouped into what a speed-up would target: the
matrix multiplications (what the GEMM rate bounds) against everything around them. The caption names the ISA torch
dispatches to and whether the CPU has AMX (bench.measure.machine_description), so a profile from another machine
reads beside this one. On a busy machine use `--threads 1`: with two threads, every parallel op waits whenever the
other thread is descheduled, which inflates the many small ops far more than the GEMMs.

Each profile ends with its ceiling: the call's matmul FLOPs (bench.measure's count) over all of its time and over
its matmuls' time alone (the GEMMs and the attention kernel), each against the MLP-shaped bf16 GEMM measured in the
same run (the train benchmark's "of bf16 GEMM" column). The second is what the call would reach if everything
around its matmuls took no time: at the model's own shapes (K = 3,072 into 768 columns, the 50,257-column head)
the GEMMs run below the MLP shape's rate.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import GPT2Config, GPT2LMHeadModel

from bench import measure
from bench.ablation import BATCH_SIZE, BLOCK_SIZE, VARIANTS, Step
from pipeline.activations import fuse_gelu_new
from pipeline.evaluation.lm_metrics import plan_windows, score_stream

EVAL_CONTEXT, EVAL_STRIDE = 1024, 512
"""The evaluate stage's defaults (params.yaml `evaluate:`)."""

OP_GROUPS = (
    ("matmul (GEMM)", ("mm", "addmm", "bmm", "baddbmm", "addmm_activation", "mkldnn", "mkl", "linear")),
    ("attention kernel (sdpa)", ("scaled_dot_product",)),
    ("softmax, log-softmax, exp, argmax (attention and loss)",
     ("softmax", "log_softmax", "softmax_backward_data", "log_softmax_backward_data", "exp", "logsumexp",
      "nll_loss", "cross_entropy", "argmax", "max", "amax", "sum", "scatter", "gather", "masked_fill", "where")),
    ("LayerNorm", ("layer_norm", "native_layer_norm")),
    ("GELU", ("gelu", "tanh", "pow")),
    ("optimizer and clipping", ("fused_adamw", "foreach", "norm", "linalg_vector_norm", "clamp")),
    ("casts and copies", ("copy", "to_copy", "to", "clone", "contiguous", "cat", "stack", "index", "index_select",
                          "embedding", "fill", "zero", "empty", "zeros", "ones", "resize", "as_strided", "t",
                          "transpose", "view", "reshape", "permute", "expand", "slice", "select", "split",
                          "unsqueeze", "tril")),
    ("elementwise", ("add", "mul", "addcmul", "neg", "rsub", "sub", "div", "lerp", "sqrt")),
)  # fmt: skip
"""Op name -> group, first match wins. A name matches an entry when, without `aten::` and leading or trailing
underscores, it equals the entry or starts with the entry and an underscore (`native_layer_norm_backward`,
`foreach_norm`). What no entry names is "other" (Python-side ops, profiler records)."""


def op_group(name: str) -> str:
    op = name.removeprefix("aten::").strip("_")
    for group, ops in OP_GROUPS:
        if any(op == entry or op.startswith(f"{entry}_") for entry in ops):
            return group
    return "other"


def self_times(run: Callable[[], None], repeats: int) -> dict[str, float]:
    """Self CPU seconds per op over `repeats` calls of `run`, after one unprofiled warm-up call."""
    run()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            run()
    return {event.key: event.self_cpu_time_total / 1e6 / repeats for event in profiler.key_averages()}


def grouped(times: dict[str, float]) -> dict[str, float]:
    groups: dict[str, float] = defaultdict(float)
    for name, seconds in times.items():
        groups[op_group(name)] += seconds
    return dict(sorted(groups.items(), key=lambda item: -item[1]))


def train_step() -> tuple[Callable[[], None], float]:
    """The train stage's default step (bench.ablation's last variant: every change on), and its matmul FLOPs."""
    step = Step("tied", GPT2Config())
    variant = VARIANTS[-1]
    step.use(variant)
    flops = measure.training_flops_per_token(step.model, BLOCK_SIZE, head_skips_last_position=True).total
    return lambda: step.seconds(variant), flops * BATCH_SIZE * BLOCK_SIZE


def eval_window(bf16: bool) -> tuple[Callable[[], None], float]:
    """Two windows of the evaluate stage at its defaults (1,024 tokens fed, the second scoring 512 of them; in bf16
    with the one-kernel GELU, as the stage runs it), and their matmul FLOPs."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    if bf16:
        fuse_gelu_new(model)
    tokens = torch.randint(0, model.config.vocab_size, (EVAL_CONTEXT + EVAL_STRIDE + 1,))
    windows = plan_windows(len(tokens), EVAL_CONTEXT, EVAL_STRIDE)
    flops = sum(measure.window_flops(model, window.length, window.scored) for window in windows)
    return lambda: score_stream(model, tokens, EVAL_CONTEXT, EVAL_STRIDE, batch_size=2, bf16=bf16), flops


def ceiling(times: dict[str, float], flops: float, bf16_gemm: float) -> str:
    """The call's FLOP rate over all its time and over its matmuls' time alone, as shares of `bf16_gemm`."""
    groups = grouped(times)
    total = sum(times.values())
    gemm = sum(groups.get(group, 0.0) for group, _ in OP_GROUPS[:2])  # the GEMMs and sdpa, whose FLOPs are counted
    rates = [f"{flops / seconds / 1e9:,.0f} GFLOP/s ({flops / seconds / bf16_gemm:.0%})" for seconds in (total, gemm)]
    return (
        f"{flops / 1e9:,.1f} GFLOP of matmuls per call: {rates[0]} over the whole call, {rates[1]} over its "
        f"matmuls' time alone (of the same run's MLP-shaped bf16 GEMM, {bf16_gemm / 1e9:,.0f} GFLOP/s)"
    )


def format_profile(title: str, times: dict[str, float], top: int) -> str:
    total = sum(times.values())
    groups = [[group, f"{seconds * 1e3:,.1f}", f"{seconds / total:.0%}"] for group, seconds in grouped(times).items()]
    ops = sorted(times.items(), key=lambda item: -item[1])[:top]
    rows = [[name, op_group(name), f"{seconds * 1e3:,.1f}", f"{seconds / total:.0%}"] for name, seconds in ops]
    return "\n\n".join([
        f"**{title}**: {total * 1e3:,.0f} ms of self CPU time per call",
        measure.markdown_table(["group", "ms", "share"], groups),
        measure.markdown_table(["op", "group", "ms", "share"], rows),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="profiled training steps (after one warm-up)")
    parser.add_argument("--windows", type=int, default=2, help="profiled evaluation calls (after one warm-up)")
    parser.add_argument("--top", type=int, default=12, help="ops listed by self time")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    args = parser.parse_args(argv)
    if min(args.steps, args.windows, args.top) < 1:
        parser.error("--steps, --windows and --top must be at least 1")
    measure.use_threads(args.threads)
    print(f"Machine: {measure.machine_description()}.\n")
    windows = f"2 windows of {EVAL_CONTEXT} / {EVAL_STRIDE}"
    profiles = [("Training step, defaults (tied head, 8 x 128, bf16 autocast)", train_step(), args.steps),
                (f"Evaluation, {windows}, fp32", eval_window(False), args.windows),
                (f"Evaluation, {windows}, bf16 autocast", eval_window(True), args.windows)]  # fmt: skip
    bf16_gemm = measure.mlp_bf16_gemm_rate(GPT2Config(), BATCH_SIZE * BLOCK_SIZE)
    for title, (run, flops), repeats in profiles:
        times = self_times(run, repeats)
        print(format_profile(title, times, args.top), ceiling(times, flops, bf16_gemm), sep="\n\n", end="\n\n")


if __name__ == "__main__":
    main()
