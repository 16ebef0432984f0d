"""The fine-tuned model folder, written so that its bytes depend on the weights alone: the same whether this
process trained or a rerun found training finished in a checkpoint and built no Trainer."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.data.files import atomic_dir


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's tensors as safetensors stores them (each tied tensor once): what a save needs."""
    tensors = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def save_finetuned(model, tokenizer, out_dir: Path, use_cache: bool) -> None:
    """`save_pretrained` of the model and tokenizer into `out_dir`, atomically (a full disk is a `DiskFullError`
    and leaves an earlier `out_dir` as it was), with `config.use_cache` set to the pretrained model's value."""
    # Building a Trainer sets `model.config.use_cache = args.use_cache` (False; transformers 5.23,
    # Trainer.__init__, "Finalize"): without this a run that trained saves false and a rerun resuming from the
    # last checkpoint, which builds none, saves the pretrained true, so models/finetuned hashes differently.
    model.config.use_cache = use_cache
    with atomic_dir(out_dir, expected_bytes=model_bytes(model)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
