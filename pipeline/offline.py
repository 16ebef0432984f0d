"""Offline profile: a generated Wikitext-shaped corpus and a tiny pretrained GPT-2, for runs without the hub.

`python -m pipeline.offline` writes both under local/ (which dvc.yaml declares as dependencies) and prints the
`dvc exp run -S ...` command that runs the same stages on them; `--run` runs it. Nothing is downloaded or copied:
the text comes from `pipeline.synthetic_text`'s grammar, and the tokenizer and model are trained here, in seconds,
on CPU. The same seed writes byte-identical files, so pipeline outputs can be compared across runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from pipeline import synthetic_text
from pipeline.cli import configure_logging
from pipeline.files import atomic_dir, write_text_atomic

log = logging.getLogger(__name__)

OFFLINE_CORPUS_DIR = Path("local/corpus/offline")
OFFLINE_MODEL_DIR = Path("local/models/tiny-gpt2")
END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token: bos, eos and unk at once

VOCAB_SIZE = 1024
"""256 byte tokens, <|endoftext|> and 767 merges: about 1.45 tokens per corpus word, and a small softmax."""
TINY_GPT2 = {"n_layer": 4, "n_head": 4, "n_embd": 64, "n_positions": 256}
"""GPT-2's architecture at 0.28M parameters; four blocks leave room to freeze all but the last few."""
PRETRAIN_STEPS = 200
"""About 8 s on two cores; takes the validation loss from ln(1024) = 6.9 to about 2.5 and leaves fine-tuning
something to gain (a plain loop with the offline profile's settings took it to 2.05), as GPT-2 has on Wikitext."""
PRETRAIN_BATCH_SIZE = 8
PRETRAIN_BLOCK_SIZE = 128
"""Pretraining windows; half of n_positions keeps steps cheap and covers the offline block_size (64) twice."""
PRETRAIN_LEARNING_RATE = 1.0e-2
"""High for a large model, right for 0.28M parameters and 200 steps (3e-3 ended about 0.3 nats worse in trials)."""
PRETRAIN_WORDS = 70_000
"""Size of the separate pretraining corpus, the same as the target's train split."""


def write_corpus(
    out_dir: Path, seed: int = 0, *, train_words: int = 70_000, validation_words: int = 7_000, test_words: int = 7_000
) -> dict[str, Path]:
    """Write train.txt, validation.txt and test.txt of generated Wikitext-raw-shaped text; returns split -> path.

    One random stream draws the three splits in turn, and no article title repeats across them, so validation and
    test come from train's distribution without copying any of its articles.
    """
    rng = random.Random(seed)
    taken_titles: set[str] = set()
    paths = {}
    for split, words in (("train", train_words), ("validation", validation_words), ("test", test_words)):
        paths[split] = out_dir / f"{split}.txt"
        write_text_atomic(paths[split], "\n".join(synthetic_text.generate_lines(rng, words, taken_titles)) + "\n")
    return paths


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
        model_max_length=TINY_GPT2["n_positions"],
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


def pretrain(model: GPT2LMHeadModel, token_ids: torch.Tensor, steps: int = PRETRAIN_STEPS) -> float:
    """Causal-LM training on random windows of `token_ids` with AdamW, warm-up and linear decay; returns last loss.

    Draws from torch's global RNG, so run it inside `seeded_and_deterministic`.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LEARNING_RATE, weight_decay=0.01)
    warmup_steps = steps // 10
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) * (1 - step / steps)
    )
    model.train()
    for _ in tqdm(range(steps), desc="pretraining tiny GPT-2", unit="step", leave=False):
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


def write_tiny_model(out_dir: Path, corpus_files: Sequence[Path], seed: int = 0) -> Path:
    """Train a tokenizer on `corpus_files`, pretrain a tiny GPT-2 on a separate generated corpus, save both.

    The pretraining text comes from the same grammar with a seed of its own, so the base model knows the domain
    without having seen the target's articles. Same seed, files and torch thread count: byte-identical output (the
    thread count changes how CPU kernels split their sums, so another count gives other last bits).
    """
    started = time.perf_counter()
    tokenizer = train_tokenizer(corpus_files)
    pretraining_rng = random.Random(f"pretraining:{seed}")  # a stream apart from write_corpus's Random(seed)
    pretraining_text = "\n".join(synthetic_text.generate_lines(pretraining_rng, PRETRAIN_WORDS, set())) + "\n"
    token_ids = torch.tensor(tokenizer(pretraining_text, verbose=False)["input_ids"])
    config = GPT2Config(
        **TINY_GPT2,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with seeded_and_deterministic(seed):
        model = GPT2LMHeadModel(config)
        final_loss = pretrain(model, token_ids)
    with atomic_dir(out_dir) as staging:
        model.save_pretrained(staging)  # safetensors, transformers' default
        tokenizer.save_pretrained(staging)
    log.info(
        "tiny GPT-2 (%s parameters, vocab %d) pretrained on a %s-token corpus to loss %.3f in %.1f s: %s",
        f"{model.num_parameters():,}",
        len(tokenizer),
        f"{len(token_ids):,}",
        final_loss,
        time.perf_counter() - started,
        out_dir,
    )
    return out_dir


def offline_overrides(corpus_dir: Path = OFFLINE_CORPUS_DIR, model_dir: Path = OFFLINE_MODEL_DIR) -> dict[str, object]:
    """The params.yaml values (dotted keys) that point the pipeline at the offline corpus and model.

    Paths are as dvc.yaml's stages see them, relative to the repo root. Training settings suit the tiny model:
    three passes over about 1,540 blocks of 64 tokens at batch 16 (291 steps) take about 10 s on two cores and
    lower the validation loss by about 0.45 nats (2e-3 gives 0.3, GPT-2's 5e-5 only 0.03).
    """
    return {
        "data.source": "local",
        **{f"data.{split}_file": (corpus_dir / f"{split}.txt").as_posix() for split in ("train", "validation", "test")},
        "model.name_or_path": model_dir.as_posix(),
        "tokenize.block_size": 64,
        "train.epochs": 3.0,
        "train.batch_size": 16,
        "train.learning_rate": 5.0e-3,
        "train.logging_steps": 10,
        "train.bf16": False,  # a 64-wide model gains nothing from bf16, and fp32 runs the same on CPUs without it
        "evaluate.batch_size": 32,
    }


def set_param_args(overrides: dict[str, object]) -> list[str]:
    """`dvc exp run` arguments that apply `overrides` (`-S key=value`, values in Hydra's override grammar)."""
    args = []
    for key, value in overrides.items():
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-S", f"{key}={text}"]
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root, where dvc.yaml and local/ are")
    parser.add_argument("--run", action="store_true", help="then run the pipeline on them with `dvc exp run`")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, tokenizer and model")
    args = parser.parse_args(argv)
    configure_logging()
    corpus = write_corpus(args.root / OFFLINE_CORPUS_DIR, args.seed)
    for split, path in corpus.items():
        log.info("%s: %s words in %s", split, f"{len(path.read_text(encoding='utf-8').split()):,}", path)
    write_tiny_model(args.root / OFFLINE_MODEL_DIR, [corpus["train"]], args.seed)
    command = ["dvc", "exp", "run", *set_param_args(offline_overrides())]
    print(f"Offline corpus in {args.root / OFFLINE_CORPUS_DIR}, tiny GPT-2 in {args.root / OFFLINE_MODEL_DIR}.")
    print(f"Run the pipeline on them (from {args.root}):\n  {shlex.join(command)}")
    if args.run:
        sys.exit(subprocess.run(command, cwd=args.root, check=False).returncode)


if __name__ == "__main__":
    main()
