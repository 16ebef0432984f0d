"""What the benchmarks measure with: the machine, peak memory, a fresh process per configuration, a clock for
training steps, GEMM rates, the FLOP count of a training step, and the markdown table they print."""

from __future__ import annotations

import datetime
import itertools
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import transformers
from transformers import TrainerCallback

from pipeline.training.freeze import FrozenLayout
from pipeline.training.layout import ModelLayout
from pipeline.training.weight_casts import MATMUL_MODULES

GIB = 1024**3


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    """Wait for queued GPU work, so a clock read after it times the work and not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine_description() -> str:
    """One line for the table's caption: processor, threads, accelerator, library versions, date."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    parts = [
        cpu,
        isa_description(),
        f"{psutil.cpu_count(logical=True)} logical CPUs",
        f"{torch.get_num_threads()} torch threads",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    parts += [f"torch {torch.__version__}", f"transformers {transformers.__version__}", f"{datetime.date.today()}"]
    return ", ".join(parts)


def isa_description() -> str:
    """The ISA torch's CPU kernels dispatch to, and the bf16 units oneDNN can use: AMX tiles or AVX512-BF16 (a
    benchmark's rate against the same run's GEMM compares across the two; its absolute figures do not)."""
    units = [name for name, present in (("AMX", torch.cpu._is_amx_tile_supported()),
                                        ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported())) if present]  # fmt: skip
    return f"torch CPU capability {torch.backends.cpu.get_cpu_capability()} ({', '.join(units) or 'no bf16 units'})"


DATASHEET_BF16_PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
"""Dense bf16 tensor-core peaks from NVIDIA's datasheets (without sparsity), by a part of the device name; the
first match wins, so the PCIe card comes before the SXM one it shares a name with."""


def datasheet_bf16_peak() -> float | None:
    """The CUDA device's datasheet bf16 FLOP/s, the denominator of MFU; None on a CPU or an unlisted GPU."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for part, peak in DATASHEET_BF16_PEAKS if part in name), None)


def use_threads(threads: int | None) -> None:
    """Run torch on `threads` CPU threads, here and in every process `run_isolated` starts (they read
    OMP_NUM_THREADS when torch loads). On a machine that others are busy on, fewer threads than cores avoids
    threads waiting on each other at every op; None keeps torch's default (one per core)."""
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def current_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM belongs to the address space made at exec, so it excludes what
    the parent had (ru_maxrss can carry a forked parent's pages over exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def peak_gpu_bytes() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def run_isolated(worker: Callable[..., Any], *args: Any) -> Any:
    """`worker(*args)` in a fresh spawned process: its peak memory is its own, and global torch state it sets
    (the Trainer's full determinism, seeds, thread settings) dies with it. Arguments and result must pickle."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(worker, *args).result()


def gemm_rate(rows: int, inner: int, columns: int, dtype: torch.dtype, min_seconds: float = 0.3) -> float:
    """FLOP/s of (rows x inner) @ (inner x columns) on this machine's device, after a warm-up."""
    left = torch.randn(rows, inner, dtype=dtype, device=device())
    right = torch.randn(inner, columns, dtype=dtype, device=device())
    for _ in range(2):  # oneDNN and cuBLAS choose and build their kernel on the first calls
        torch.matmul(left, right)
    repeats = 1
    while True:
        synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(left, right)
        synchronize()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return 2 * rows * inner * columns * repeats / elapsed
        repeats *= 2


class StepClock(TrainerCallback):
    """Wall time at the end of every optimizer step. Timing starts after the first step, which pays for kernel
    selection and first allocations, and leaves out the Trainer's set-up; the steps' own overhead stays in. The
    median step stands for the run, so a burst of load from another process moves it less than the mean."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        self.step_ends.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        return statistics.median(end - start for start, end in itertools.pairwise(self.step_ends))


def reference_gemms(config, tokens: int) -> list[tuple[int, int, int]]:
    """GEMMs of the model's shapes at the project's micro-batch (the MLP's input matrix, the head), and on a GPU a
    large square one too, the usual stand-in for its peak."""
    width = config.hidden_size  # GPT2Config maps it to n_embd
    mlp_width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * width
    shapes = [(tokens, width, mlp_width), (tokens, width, config.vocab_size)]
    return [*shapes, (8192, 8192, 8192)] if torch.cuda.is_available() else shapes


def mlp_bf16_gemm_rate(config, tokens: int) -> float:
    """bf16 FLOP/s of the MLP-shaped GEMM at `tokens` rows: the reference the "of bf16 GEMM" figures divide by."""
    return gemm_rate(*reference_gemms(config, tokens)[0], torch.bfloat16)


def best_gemm_rates(shapes, best: dict | None = None) -> dict[tuple[int, int, int], dict[torch.dtype, float]]:
    """fp32 and bf16 FLOP/s of each GEMM shape, each the better of this measurement and `best` (earlier rounds)."""
    best = best or {}
    return {
        shape: {
            dtype: max(gemm_rate(*shape, dtype), best.get(shape, {}).get(dtype, 0.0))
            for dtype in (torch.float32, torch.bfloat16)
        }
        for shape in shapes
    }


@dataclass(frozen=True)
class FlopCount:
    """Matmul FLOPs per token of one training step (forward and backward), as `training_flops_per_token` counts."""

    forward: float
    backward: float

    @property
    def total(self) -> float:
        return self.forward + self.backward


FLOP_COUNTING = (
    "FLOPs per token, matmuls only (biases, norms, softmax, activations, rotary embeddings, the optimizer and "
    "embedding lookups are left out): a block's matmul weights W are its linear layers' (GPT-2: c_attn 3d², attn "
    "proj d², c_fc 4d², mlp proj 4d² = 12d²; Llama family: q, k, v, o, gate, up, down, k and v narrower under "
    "grouped-query attention), the head's V·d; attention adds 4·T·a per block (QKᵀ and PV over the full T×T, as "
    "Chinchilla's appendix counts; a = heads × head width). Forward = 2·(L·W + V·d) + L·4Ta. Backward = 2·weights "
    "for the activation gradient of every matmul that backward passes through, plus 2·weights for the weight "
    "gradient of every trainable one (+ 8Ta per block passed). The path comes from requires_grad: a trainable "
    "input embedding (tied head) sends backward through all L blocks; otherwise it stops at the lowest trainable "
    "block. Pad tokens are counted: they cost the same. The project's fused loss runs the head on T-1 of every T "
    "positions (the last predicts nothing), and is counted so. GPT-2 small, 1 block, T=128, MFLOP/token: tied "
    "252 + 348 = 600, untied 252 + 184 = 435, frozen 252 + 106 = 358."
)


def matmul_weights(module: torch.nn.Module) -> int:
    """Weights of the matmuls `module` runs per token: every linear layer in it (GPT-2's Conv1D is one, transposed),
    read from the loaded model, so grouped-query attention's narrower k and v count as they are."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, MATMUL_MODULES))


def attention_width(config) -> int:
    """Query heads x head width: the inner size of QKᵀ and PV (the hidden size, unless the config sets head_dim
    apart, as Qwen3 may)."""
    head_width = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads * head_width


def training_flops_per_token(
    model, seq_len: int, cached_prefix_blocks: int = 0, head_skips_last_position: bool = False
) -> FlopCount:
    """Matmul FLOPs per token of one forward+backward of a causal LM of any supported family
    (pipeline/training/layout.py) under its current requires_grad flags.

    `cached_prefix_blocks`: leading blocks whose outputs a step reads from a cache (pipeline.training.prefix_cache)
    instead of computing; their forward is not counted (backward never reaches them when they are frozen).
    `head_skips_last_position`: the head runs on T-1 of every T positions
    (pipeline.training.linear_cross_entropy leaves out the last, which predicts nothing), so it is counted for
    (T-1)/T of the tokens.
    """
    layout, frozen = ModelLayout.of(model), FrozenLayout.of(model)
    block_weights = [matmul_weights(block) for block in layout.blocks]
    head_weights = layout.head.weight.numel()
    if head_skips_last_position:
        head_weights = head_weights * (seq_len - 1) / seq_len
    attention = 4 * seq_len * attention_width(model.config)  # per block and token: QKᵀ 2·T·a + PV 2·T·a
    block_trains = [any(p.requires_grad for p in block.parameters()) for block in layout.blocks]
    # Backward reaches down to the lowest thing that needs a gradient; a trainable embedding lies below every block.
    lowest_reached = 0 if frozen.embedding_trains else frozen.first_trainable_block
    norm_trains = any(p.requires_grad for p in layout.final_norm.parameters())
    head_needs_input_grad = frozen.embedding_trains or any(block_trains) or norm_trains
    forward = 2 * (sum(block_weights[cached_prefix_blocks:]) + head_weights)
    forward += (len(block_weights) - cached_prefix_blocks) * attention
    backward = 2 * head_weights * (int(layout.head.weight.requires_grad) + int(head_needs_input_grad))
    for weights, trains in zip(block_weights[lowest_reached:], block_trains[lowest_reached:], strict=True):
        backward += 2 * weights + 2 * attention + (2 * weights if trains else 0)
    return FlopCount(float(forward), float(backward))


def window_flops(model, fed: int, scored: int) -> float:
    """Matmul FLOPs of one evaluation window, counted as `training_flops_per_token` counts a forward: every block
    over the `fed` tokens (attention over the full T×T), the head over the `scored` ones only."""
    layout = ModelLayout.of(model)
    blocks = 2 * sum(matmul_weights(block) for block in layout.blocks)
    attention = len(layout.blocks) * 4 * fed * attention_width(model.config)
    return fed * (blocks + attention) + scored * 2 * layout.head.weight.numel()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub table; every column after the first is right-aligned (they hold numbers)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
