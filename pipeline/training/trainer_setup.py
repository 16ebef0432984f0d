"""How the train stage sets up the HF Trainer: precision, attention kernel, determinism, malloc, batches and
TrainingArguments.

pipeline/training/assembly.py puts these together for the train stage and the benchmarks alike, so a benchmark
measures what `dvc repro` runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import resource
from pathlib import Path

import torch
from transformers import TrainingArguments

from pipeline.params import Params
from pipeline.training.distributed import backend

log = logging.getLogger(__name__)

EAGER_ATTENTION_UP_TO = 512
"""Block size past which `train.attention: eager` draws a warning (see its docstring in pipeline/params/training.py)."""


def bf16_supported() -> bool:
    """bf16 autocast pays only where the hardware has bf16 arithmetic; elsewhere it is emulated and slower."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


CUBLAS_WORKSPACE = ":16:8"
"""cuBLAS workspace that deterministic algorithms require on a GPU (torch's "Reproducibility" notes,
https://pytorch.org/docs/stable/notes/randomness.html), the Trainer's choice too. torch warns that it caps
cuBLASLt's workspace at 128 KB, but the larger :4096:8 was no faster on an H100 (docs/performance.md)."""


def peak_memory_gib() -> float:
    """Peak memory of training: what torch allocated on the GPU where there is one, else the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def use_deterministic_algorithms(enabled: bool) -> None:
    """`train.deterministic`, set before the first CUDA matmul: torch's deterministic kernels and, on a GPU, the
    cuBLAS workspace they require (an explicit CUBLAS_WORKSPACE_CONFIG wins).

    In place of the Trainer's `full_determinism`, which does the same and also sets CUDA_LAUNCH_BLOCKING=1, making
    every kernel launch wait for the GPU: a debugging aid that no result depends on, and a slower GPU step wherever
    it takes effect (set before CUDA starts; docs/performance.md). The seeds are the Trainer's either way
    (`set_seed(args.seed)`): on the CPU, the offline pipeline's outputs are byte-identical to those under
    `full_determinism`.

    Deterministic mode also fills every new tensor with NaN, so that code reading memory it never wrote shows it
    (torch.utils.deterministic). That too is a debugging aid and changes no result, and it costs time at every step;
    it is turned off here (docs/performance.md).
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(enabled)
    torch.utils.deterministic.fill_uninitialized_memory = False


GLIBC_M_TRIM_THRESHOLD, GLIBC_M_MMAP_MAX = -1, -4
"""mallopt parameters (malloc.h)."""
GLIBC_DEFAULTS = {GLIBC_M_MMAP_MAX: 65_536, GLIBC_M_TRIM_THRESHOLD: 128 * 1024}
GLIBC_HEAP_ONLY = {GLIBC_M_MMAP_MAX: 0, GLIBC_M_TRIM_THRESHOLD: 2**31 - 1}


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of returning it to the kernel.

    glibc serves every allocation over 32 MB with its own mmap and gives it back with munmap when freed. A training
    step allocates and frees several of those (the logits, the head's weight cast and gradient: 77-154 MB each with
    GPT-2 small at 8 x 128), so every step the kernel maps fresh pages, faults each 4 KB page in and zeroes it. Served
    from malloc's heap and not trimmed, each step reuses the last one's pages. The process keeps its peak memory
    mapped until it ends. Only where the C library is glibc; returns whether it applied. `enabled=False` puts
    glibc's defaults back (for benchmarks that compare the two in one process).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    settings = GLIBC_HEAP_ONLY if enabled else GLIBC_DEFAULTS
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings.items())


def use_attention(model, params: Params) -> None:
    """Train with `train.attention`; warn where the other kernel is the faster one (see its docstring)."""
    model.set_attn_implementation(params.train.attention)
    if params.train.attention == "eager" and params.tokenize.block_size > EAGER_ATTENTION_UP_TO:
        log.warning(
            "train.attention is eager with %d-token blocks: above %d, sdpa was faster here and keeps no T x T maps",
            params.tokenize.block_size, EAGER_ATTENTION_UP_TO,
        )  # fmt: skip


def causal_lm_batch(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Labels are the inputs: the model shifts them itself. Blocks are packed, so there is nothing to mask."""
    input_ids = torch.stack([example["input_ids"] for example in examples])
    return {"input_ids": input_ids, "labels": input_ids}


def training_arguments(params: Params, output_dir: Path, use_bf16: bool) -> TrainingArguments:
    train = params.train
    return TrainingArguments(
        **distributed_arguments(train.processes),
        output_dir=str(output_dir),
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
        # Not `full_determinism`: the stage calls use_deterministic_algorithms itself (see why there).
        logging_steps=train.logging_steps,
        # Every checkpoint_steps and, by the Trainer's own rule, at the last step: a run killed while writing its
        # outputs then resumes with nothing left to train. null still saves one on SIGINT/SIGTERM (CheckpointCallback).
        save_strategy="steps" if train.checkpoint_steps else "no",
        save_steps=train.checkpoint_steps or 1,
        eval_strategy="no",  # evaluation is its own stage, with the base model on the same blocks
        report_to="none",  # MLflow logging is the stage's, grouped per pipeline execution
        dataloader_num_workers=0,  # blocks are in memory already; worker processes only add start-up time
    )


def distributed_arguments(processes: int) -> dict[str, object]:
    """The Trainer's DDP settings when torchrun started `processes` > 1 ranks (none for one process, whose arguments
    stay as they were). Every trainable tensor gets a gradient at every step, so DDP need not search the graph for
    unused ones (its default, with a cost at each step)."""
    if processes == 1:
        return {}
    return {"ddp_backend": backend(), "ddp_find_unused_parameters": False}
