"""The offline base models: a byte-level BPE tokenizer and a tiny GPT-2 or Llama pretrained on generated text, on CPU.

Both families share the tokenizer (trained on the fly from the corpus, the same bytes for the same seed), the
pretraining text and its schedule; each profile names its model folder, and the folder's name says which family
(`TINY_FAMILIES`)."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from pipeline.data.files import atomic_dir
from pipeline.errors import UserError
from pipeline.offline import synthetic_text

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token: bos, eos and unk at once

VOCAB_SIZE = 1024
"""256 byte tokens, <|endoftext|> and 767 merges: about 1.45 tokens per corpus word, and a small softmax."""
TINY_GPT2 = {"n_layer": 4, "n_head": 4, "n_embd": 64, "n_positions": 256}
"""GPT-2's architecture at 0.28M parameters; four blocks leave room to freeze all but the last few."""
TINY_LLAMA = {
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as SmolLM2, Qwen2.5 and Llama 3.2 use
    "hidden_size": 64,
    "intermediate_size": 176,  # about 8/3 x hidden, Llama's SwiGLU ratio
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,  # untied, as most Llama-size models are; the tiny GPT-2 covers the tied head
}
"""The Llama architecture (RMSNorm, rotary positions, SwiGLU, no biases) at 0.32M parameters, four blocks."""
CONTEXT = 256
"""Both tiny models' context (`n_positions`, `max_position_embeddings`), and the tokenizer's model_max_length."""
TINY_FAMILIES = {"tiny-gpt2": "gpt2", "tiny-llama": "llama"}
"""A profile's model folder name -> the family written there."""
PRETRAIN_STEPS = 200
"""Enough to take the validation loss from ln(1024) = 6.9 to about 2.5, cheaply on a CPU, and to leave fine-tuning
something to gain, as GPT-2 has on Wikitext (docs/performance.md)."""
PRETRAIN_BATCH_SIZE = 8
PRETRAIN_BLOCK_SIZE = 128
"""Pretraining windows; half of n_positions keeps steps cheap and covers the offline block_size (64) twice."""
PRETRAIN_LEARNING_RATE = 1.0e-2
"""High for a large model, right for 0.28M parameters and 200 steps (a lower one ended worse: docs/performance.md)."""
PRETRAIN_WORDS = 70_000
"""Size of the separate pretraining corpus, the same as the target's train split."""


def train_tokenizer(corpus_files: Sequence[Path]) -> GPT2TokenizerFast:
    """A byte-level BPE trained on `corpus_files`, wrapped with exactly GPT-2's pre-tokenizer and special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so no text is ever unknown
        show_progress=False,
    )
    bpe.train([str(path) for path in corpus_files], trainer)
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    # No pad token, as GPT-2 has none: the pipeline packs blocks and never pads.
    return GPT2TokenizerFast(
        vocab=bpe.get_vocab(),
        merges=merges,
        model_max_length=CONTEXT,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
    )


@contextmanager
def seeded_and_deterministic(seed: int) -> Iterator[None]:
    """Seed torch and insist on deterministic kernels inside; the caller's RNG state and mode come back after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def pretrain(model: PreTrainedModel, token_ids: torch.Tensor, steps: int = PRETRAIN_STEPS) -> float:
    """Causal-LM training on random windows of `token_ids` with AdamW, warm-up and linear decay; returns last loss.

    Draws from torch's global RNG, so run it inside `seeded_and_deterministic`.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LEARNING_RATE, weight_decay=0.01)
    warmup_steps = steps // 10
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) * (1 - step / steps)
    )
    model.train()
    for _ in tqdm(range(steps), desc=f"pretraining tiny {model.config.model_type}", unit="step", leave=False):
        starts = torch.randint(0, len(token_ids) - PRETRAIN_BLOCK_SIZE, (PRETRAIN_BATCH_SIZE,))
        batch = torch.stack([token_ids[start : start + PRETRAIN_BLOCK_SIZE] for start in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


def family_of_folder(out_dir: Path) -> str:
    """The family a profile's model folder holds, by its name (`TINY_FAMILIES`)."""
    if out_dir.name not in TINY_FAMILIES:
        raise UserError(
            f"model.name_or_path: the offline generator writes {', '.join(TINY_FAMILIES)} under local/models/, not "
            f"{out_dir.name!r}; point the profile's model.name_or_path at one of them"
        )
    return TINY_FAMILIES[out_dir.name]


def tiny_model(family: str, tokenizer: GPT2TokenizerFast) -> PreTrainedModel:
    """A freshly initialised tiny model of `family`, for `tokenizer` (draws from torch's global RNG)."""
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, vocab_size=len(tokenizer), **special))
    return GPT2LMHeadModel(GPT2Config(**TINY_GPT2, vocab_size=len(tokenizer), **special))


def write_tiny_model(out_dir: Path, corpus_files: Sequence[Path], seed: int = 0, family: str = "gpt2") -> Path:
    """Train a tokenizer on `corpus_files`, pretrain a tiny model of `family` (gpt2 or llama) on a separate generated
    corpus, save both.

    The pretraining text comes from the same grammar with a seed of its own, so the base model knows the domain
    without having seen the target's articles. Same seed, files and torch thread count: byte-identical output (the
    thread count changes how CPU kernels split their sums, so another count gives other last bits).
    """
    started = time.perf_counter()
    tokenizer = train_tokenizer(corpus_files)
    pretraining_rng = random.Random(f"pretraining:{seed}")  # a stream apart from write_corpus's Random(seed)
    pretraining_text = "\n".join(synthetic_text.generate_lines(pretraining_rng, PRETRAIN_WORDS, set())) + "\n"
    token_ids = torch.tensor(tokenizer(pretraining_text, verbose=False)["input_ids"])
    with seeded_and_deterministic(seed):
        model = tiny_model(family, tokenizer)
        final_loss = pretrain(model, token_ids)
    with atomic_dir(out_dir) as staging:
        model.save_pretrained(staging)  # safetensors, transformers' default
        tokenizer.save_pretrained(staging)
    log.info(
        "tiny %s (%s parameters, vocab %d) pretrained on a %s-token corpus to loss %.3f in %.1f s: %s",
        family,
        f"{model.num_parameters():,}",
        len(tokenizer),
        f"{len(token_ids):,}",
        final_loss,
        time.perf_counter() - started,
        out_dir,
    )
    return out_dir
