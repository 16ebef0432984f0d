"""Train the trainable tail of GPT-2 on cached outputs of its frozen prefix.

When the input embedding and blocks 0..k-1 are frozen (head mode `untied` or `frozen`) and run without dropout,
their output for a block of tokens never changes during training. So it is computed once, batch by batch, and
the trainable tail (blocks k.., ln_f, lm_head) trains on it for every epoch: each step skips the prefix's forward
pass (11 of GPT-2 small's 12 blocks with the default policy). The cache is kept on disk, keyed by a hash of the
prefix's weights, the data and the precision, so reruns with other train params skip the prefix entirely.

It does not apply with the `tied` head: the shared embedding trains, so the prefix's output changes every step.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutput

from pipeline.training.freeze import FrozenLayout
from pipeline.training.trainee import Trainee

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
"""Part of the cache key: bump it when how the prefix is computed changes (2: the trainee's fused GELU)."""


def run_blocks(model: GPT2LMHeadModel, hidden_states: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
    """Blocks in order, with the causal mask GPT2Model itself would build for this input."""
    mask = create_causal_mask(
        config=model.config,
        inputs_embeds=hidden_states,
        attention_mask=None,
        past_key_values=None,
        position_ids=torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0),
    )
    for block in blocks:
        hidden_states = block(hidden_states, attention_mask=mask)
    return hidden_states


@torch.no_grad()  # not inference_mode: its tensors could not enter the tail's autograd graph later
def compute_prefix(
    model: GPT2LMHeadModel, input_ids: torch.Tensor, prefix_blocks: int, batch_size: int, bf16: bool
) -> torch.Tensor:
    """Output of embeddings + blocks[:prefix_blocks] for every row of `input_ids`, in eval mode (no dropout).

    Computed on the model's device, batch by batch; the result is kept in host memory, as the Trainer's dataset."""
    transformer = model.transformer
    device = transformer.wte.weight.device
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    outputs = []
    for start in tqdm(range(0, len(input_ids), batch_size), desc="frozen prefix", unit="batch", leave=False):
        batch = input_ids[start : start + batch_size].to(device)
        positions = torch.arange(batch.shape[1], device=device)
        with autocast:
            hidden = transformer.wte(batch) + transformer.wpe(positions)
            outputs.append(run_blocks(model, hidden, transformer.h[:prefix_blocks]).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


def cache_key(model: GPT2LMHeadModel, input_ids: torch.Tensor, prefix_blocks: int, bf16: bool) -> str:
    """Hash of what determines the prefix's output bits: its weights, the tokens, its depth, the precision, the
    attention kernel, the device type and the library versions (other kernels round differently)."""
    kernels = [model.config._attn_implementation, model.device.type, torch.__version__, transformers.__version__]
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{prefix_blocks}:{bf16}:{kernels}".encode())
    prefix = [model.transformer.wte, model.transformer.wpe, *model.transformer.h[:prefix_blocks]]
    for module in prefix:
        for tensor in module.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(input_ids.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def cached_prefix(
    model: GPT2LMHeadModel, input_ids: torch.Tensor, prefix_blocks: int, batch_size: int, bf16: bool, cache_dir: Path
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

    def __init__(self, model: GPT2LMHeadModel, prefix_blocks: int) -> None:
        super().__init__(model)
        self.prefix_blocks = prefix_blocks

    def forward(self, prefix_hidden_states: torch.Tensor, labels: torch.Tensor, **loss_kwargs) -> CausalLMOutput:
        transformer = self.model.transformer
        hidden = run_blocks(self.model, prefix_hidden_states, transformer.h[self.prefix_blocks :])
        return self.loss(transformer.ln_f(hidden), labels, loss_kwargs)


class PrefixDataset(torch.utils.data.Dataset):
    """Cached prefix outputs with their token blocks as labels, as the Trainer's train_dataset."""

    def __init__(self, hidden_states: torch.Tensor, input_ids: torch.Tensor) -> None:
        self.hidden_states, self.input_ids = hidden_states, input_ids

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"prefix_hidden_states": self.hidden_states[index], "labels": self.input_ids[index]}


def tail_training(
    model: GPT2LMHeadModel, input_ids: torch.Tensor, bf16: bool, cache_dir: Path, batch_size: int
) -> tuple[FrozenPrefixTail, PrefixDataset]:
    """What the Trainer trains instead of the whole model: the tail, and a dataset of cached prefix outputs."""
    prefix_blocks = FrozenLayout.of(model).first_trainable_block
    tail = FrozenPrefixTail(model, prefix_blocks)  # first: the prefix then runs with the trainee's activation
    hidden_states = cached_prefix(model, input_ids, prefix_blocks, batch_size, bf16, cache_dir)
    return tail, PrefixDataset(hidden_states, input_ids)
