"""Train the trainable tail of the model on cached outputs of its frozen prefix.

When the input embedding and blocks 0..k-1 are frozen (head mode `untied` or `frozen`, or LoRA on the last blocks)
and run without dropout, their output for a block of tokens never changes during training. So it is computed once,
batch by batch, and the trainable tail (blocks k.., the final norm, the head) trains on it for every epoch: each
step skips the prefix's forward pass (11 of GPT-2 small's 12 blocks with the default policy). The cache is kept on
disk, keyed by a hash of the prefix's weights, the data and the precision, so reruns with other train params skip
the prefix entirely.

Both halves are the model's own forward, not a copy of it: the prefix is the input the model's forward hands its
first tail block (a forward pre-hook stops it there), and the tail's blocks get the keyword arguments the model's
forward would give them, captured the same way once per sequence length: the causal mask (per layer type where a
family mixes full and sliding-window attention, as Qwen2 may), the rotary cos/sin of the Llama family and GPT-NeoX,
the position ids. How each family calls its blocks is read from transformers, not written again here.

It does not apply with the `tied` head: the shared embedding trains, so the prefix's output changes every step.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import CausalLMOutput

from pipeline.training.freeze import FrozenLayout
from pipeline.training.layout import ModelLayout
from pipeline.training.trainee import Trainee
from pipeline.training.weight_casts import FrozenWeightCasts

log = logging.getLogger(__name__)

CACHE_FORMAT = 3
"""Part of the cache key: bump it when how the prefix is computed changes (2: the trainee's fused GELU; 3: the
model's own forward, stopped at the first tail block)."""


class _Stop(Exception):
    """Raised by a pre-hook to end the model's forward once what it wanted was seen."""


def first_tail_module(layout: ModelLayout, prefix_blocks: int) -> nn.Module:
    """What the prefix's output feeds: block `prefix_blocks`, or the final norm when every block is in the prefix."""
    return layout.blocks[prefix_blocks] if prefix_blocks < len(layout.blocks) else layout.final_norm


def prefix_output(
    layout: ModelLayout, input_ids: torch.Tensor, prefix_blocks: int, body: Callable[..., Any]
) -> torch.Tensor:
    """The hidden states the model's own forward hands its first tail module for `input_ids`; `body` runs the
    base model's forward (`layout.body`, or it through FrozenWeightCasts)."""
    seen = {}

    def stop(module, args, kwargs):
        seen["hidden_states"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = first_tail_module(layout, prefix_blocks).register_forward_pre_hook(stop, with_kwargs=True)
    try:
        body(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["hidden_states"]


@torch.no_grad()
def block_arguments(layout: ModelLayout, seq_len: int, device: torch.device) -> list[tuple[tuple, dict]]:
    """The arguments after the hidden states that the model's forward gives each block for rows of `seq_len` tokens
    (masks, rotary cos/sin, position ids: the same for every row of a batch, as the model builds them without
    padding), captured on one row of zeros in eval mode, which draws no random numbers; every module's mode comes
    back after."""
    captured: list[tuple[tuple, dict]] = [((), {}) for _ in layout.blocks]

    def record(index, module, args, kwargs):
        captured[index] = (args[1:], dict(kwargs))  # GPT-2 passes its mask positionally

    modes = {module: module.training for module in layout.body.modules()}
    hooks = [block.register_forward_pre_hook(lambda m, a, k, i=i: record(i, m, a, k), with_kwargs=True)
             for i, block in enumerate(layout.blocks)]  # fmt: skip
    try:
        layout.body.eval()
        layout.body(input_ids=torch.zeros(1, seq_len, dtype=torch.long, device=device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    return captured


def run_blocks(
    layout: ModelLayout, hidden_states: torch.Tensor, first: int, arguments: list[tuple[tuple, dict]]
) -> torch.Tensor:
    """Blocks `first`.. in order, each with the arguments the model's forward gives it."""
    for index in range(first, len(layout.blocks)):
        args, kwargs = arguments[index]
        hidden_states = layout.blocks[index](hidden_states, *args, **kwargs)
    return hidden_states


@torch.no_grad()  # not inference_mode: its tensors could not enter the tail's autograd graph later
def compute_prefix(
    model: nn.Module, input_ids: torch.Tensor, prefix_blocks: int, batch_size: int, bf16: bool
) -> torch.Tensor:
    """Output of embeddings + blocks[:prefix_blocks] for every row of `input_ids`, in eval mode (no dropout).

    Computed on the model's device, batch by batch; the result is kept in host memory, as the Trainer's dataset."""
    layout = ModelLayout.of(model)
    device = layout.input_embedding.weight.device
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    body = FrozenWeightCasts(layout.body)  # the prefix's weights cast to bf16 once, not once per batch
    outputs = []
    for start in tqdm(range(0, len(input_ids), batch_size), desc="frozen prefix", unit="batch", leave=False):
        batch = input_ids[start : start + batch_size].to(device)
        with autocast:
            outputs.append(prefix_output(layout, batch, prefix_blocks, body).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


def cache_key(model: nn.Module, input_ids: torch.Tensor, prefix_blocks: int, bf16: bool) -> str:
    """Hash of what determines the prefix's output bits: its weights, the tokens, its depth, the precision, the
    attention kernel, the device type and the library versions (other kernels round differently)."""
    kernels = [model.config._attn_implementation, model.device.type, torch.__version__, transformers.__version__]
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{prefix_blocks}:{bf16}:{kernels}".encode())
    layout = ModelLayout.of(model)
    prefix = [*layout.embeddings(), *layout.blocks[:prefix_blocks]]
    for module in prefix:
        for tensor in module.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(input_ids.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def cached_prefix(
    model: nn.Module, input_ids: torch.Tensor, prefix_blocks: int, batch_size: int, bf16: bool, cache_dir: Path
) -> torch.Tensor:
    """`compute_prefix`, read from `cache_dir` when this exact prefix was computed before (safetensors, no pickle)."""
    path = cache_dir / f"prefix-{cache_key(model, input_ids, prefix_blocks, bf16)}.safetensors"
    if path.is_file():
        log.info("frozen prefix: reusing %s", path)
        return load_file(path)["hidden_states"]
    hidden_states = compute_prefix(model, input_ids, prefix_blocks, batch_size, bf16)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Named for its writer: parallel experiments (`dvc queue start -j N`) with the same frozen prefix, and ranks on
    # several machines sharing the folder, may each build one key and must not write into one file. The rename is
    # atomic, so a crash mid-write leaves no file that looks complete.
    staging = path.with_suffix(f".{socket.gethostname()}-{os.getpid()}.partial")
    save_file({"hidden_states": hidden_states.contiguous()}, staging)
    os.replace(staging, path)
    log.info("frozen prefix: cached %.1f MB in %s", path.stat().st_size / 1e6, path)
    return hidden_states


class FrozenPrefixTail(Trainee):
    """The trainable tail of `model`, fed cached prefix outputs instead of token ids; shares `model`'s weights."""

    def __init__(self, model: nn.Module, prefix_blocks: int) -> None:
        super().__init__(model)
        self.prefix_blocks = prefix_blocks
        self._block_arguments: dict[tuple, list[tuple[tuple, dict]]] = {}

    def forward(self, prefix_hidden_states: torch.Tensor, labels: torch.Tensor, **loss_kwargs) -> CausalLMOutput:
        key = (prefix_hidden_states.shape[1], prefix_hidden_states.device)
        if key not in self._block_arguments:  # packed blocks: one sequence length, so captured once
            self._block_arguments[key] = block_arguments(self.parts, *key)
        hidden = run_blocks(self.parts, prefix_hidden_states, self.prefix_blocks, self._block_arguments[key])
        return self.loss(self.parts.final_norm(hidden), labels, loss_kwargs)


class PrefixDataset(torch.utils.data.Dataset):
    """Cached prefix outputs with their token blocks as labels, as the Trainer's train_dataset."""

    def __init__(self, hidden_states: torch.Tensor, input_ids: torch.Tensor) -> None:
        self.hidden_states, self.input_ids = hidden_states, input_ids

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"prefix_hidden_states": self.hidden_states[index], "labels": self.input_ids[index]}


def tail_training(
    model: nn.Module, input_ids: torch.Tensor, bf16: bool, cache_dir: Path, batch_size: int
) -> tuple[FrozenPrefixTail, PrefixDataset]:
    """What the Trainer trains instead of the whole model: the tail, and a dataset of cached prefix outputs."""
    prefix_blocks = FrozenLayout.of(model).first_trainable_block
    tail = FrozenPrefixTail(model, prefix_blocks)  # first: the prefix then runs with the trainee's activation
    hidden_states = cached_prefix(model, input_ids, prefix_blocks, batch_size, bf16, cache_dir)
    return tail, PrefixDataset(hidden_states, input_ids)
