"""What decides the last bits of training on this machine, recorded once per run and part of the checkpoint key.

Two processes on one machine give bitwise-equal training only if they run the same kernels on the same number of
threads: the GEMM kernel oneDNN or MKL picks (from the ISA it detects, AVX512-BF16 or AMX, and the cache sizes it
reads) and the thread count both fix the order of every floating-point sum. Under bf16 autocast a different order
shows within the first steps (docs/reproducibility.md measured 1e-6 on the loss at step 10). None of this is visible
from the params, so the stage records it:

- the versions, ISA and thread counts torch reports, and
- a *canary*: the hash of the model's own loss and gradients on two blocks of fixed token ids, in the training
  precision, before any weight moves. It runs the kernels and threads of a step, so two processes whose canaries
  differ compute differently whatever the reason, including one that no setting names.

The fingerprint goes into the checkpoint key (a rerun never resumes a run whose kernels computed otherwise, so it
ends with an unbroken run's bytes for the machine it runs on) and into the train run's MLflow tags, where
`python -m pipeline.reproduce` reads them when two runs differ, to tell a machine that changed from code that did.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import nullcontext

import torch

from pipeline import MKL_REPRODUCIBLE

CANARY_ROWS = 2
"""Blocks the canary scores: enough to run a step's GEMM shapes, at a fraction of a step's cost."""


def kernel_library_versions() -> str:
    """oneDNN and MKL as torch was built with them (`torch.__config__.show()`), e.g. 'MKL-DNN v3.12.0'."""
    return ", ".join(re.findall(r"MKL-DNN v[\d.]+|Math Kernel Library Version [\w.-]+", torch.__config__.show()))


def machine_numerics() -> dict[str, str]:
    """The settings torch reports that pick kernels and fix summation order."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": str(torch.cpu._is_avx512_bf16_supported()),
        "amx": str(torch.cpu._is_amx_tile_supported()),
        "threads": str(torch.get_num_threads()),
        "mkl": " ".join(f"{name}={os.environ.get(name, 'unset')}" for name in MKL_REPRODUCIBLE),
        "kernels": kernel_library_versions(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }


def canary(model: torch.nn.Module, input_ids: torch.Tensor, use_bf16: bool) -> str:
    """16 hex digits of sha256 over the loss `model` computes for `input_ids` under the training precision and its
    gradients for the trainable weights: the forward and backward kernels of a step (the weight gradients are where
    the thread count splits a sum).

    Dropout is off for the pass (eval mode), the mode is restored after, and the gradients are returned rather than
    accumulated into `.grad`: the canary reads no random state and changes nothing training reads."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    try:
        with autocast:
            loss = model(input_ids=input_ids.to(device), labels=input_ids.to(device)).loss
        gradients = torch.autograd.grad(loss, trainable) if trainable else []
    finally:
        model.train(was_training)
    digest = hashlib.sha256(loss.detach().float().cpu().numpy().tobytes())
    for gradient in gradients:
        digest.update(gradient.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def canary_input(vocab_size: int, block_size: int) -> torch.Tensor:
    """`CANARY_ROWS` blocks of token ids from a fixed seed: the shapes of training, and the same ids whatever the
    data, so the canary changes with the kernels and the model, not with a change to tokenization."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (CANARY_ROWS, block_size), generator=generator)


def numerics_fingerprint(model: torch.nn.Module, block_size: int, use_bf16: bool) -> dict[str, str]:
    """`machine_numerics()` and the canary on `canary_input` of `block_size` tokens."""
    input_ids = canary_input(model.config.vocab_size, block_size)
    return machine_numerics() | {"canary": canary(model, input_ids, use_bf16)}
