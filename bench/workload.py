"""The benchmarks' inputs: Wikitext-shaped text, a tokenizer for it, the original script's padded rows, packed blocks.

GPT-2's own tokenizer needs the hub, so a byte-level BPE is trained here on the generated text, as
`pipeline.offline` does. Its ids (< 1,024) are valid inputs to GPT-2's 50,257-token embedding, and what the timings
depend on is kept: the shapes, and how much of each padded row is padding (a third of Wikitext's rows are empty).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np

from pipeline.data.blocks import pack_blocks, tokenize_text
from pipeline.offline import synthetic_text
from pipeline.offline.tiny_model import train_tokenizer

ORIGINAL_ROW_LENGTH = 64
"""The original script padded (pad = eos) and truncated every row to 64 tokens."""
WIKITEXT_TEXT_FRACTION = 0.49
"""Share of text in Wikitext-2's train rows so padded, with GPT-2's tokenizer (measured: docs/performance.md). The
generated rows hold less (about 40%): their paragraphs are shorter, and fewer of them fill 64 tokens, so they flatter
the project against the original; the train report says by how much."""


def synthetic_rows(words: int, seed: int) -> list[str]:
    """Rows as `load_dataset("wikitext", ...)` gives them: text rows end with a newline, empty rows are ""."""
    lines = synthetic_text.generate_lines(random.Random(seed), words, set())
    return [f"{line}\n" if line else "" for line in lines]


def synthetic_tokenizer(rows: list[str]):
    """A GPT-2-style byte-level BPE (1,024 tokens) trained on `rows`, with pad = eos as the original script set it."""
    with tempfile.TemporaryDirectory() as scratch:
        text_file = Path(scratch) / "train.txt"
        text_file.write_text("".join(rows), encoding="utf-8")
        tokenizer = train_tokenizer([text_file])
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def padded_rows(rows: list[str], tokenizer, row_length: int = ORIGINAL_ROW_LENGTH) -> dict[str, np.ndarray]:
    """One row per text row, padded with eos and truncated to `row_length`, as the original script tokenized."""
    encoded = tokenizer(
        rows, padding="max_length", truncation=True, max_length=row_length, return_tensors="np", verbose=False
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def packed_blocks(rows: list[str], tokenizer, block_size: int) -> np.ndarray:
    """The tokenize stage's blocks: every row's tokens in one stream, cut into (n_blocks, block_size)."""
    blocks, _dropped_tail = pack_blocks(tokenize_text(rows, tokenizer), block_size)
    return blocks


def rows_for_blocks(rows: list[str], tokenizer, n_blocks: int, block_size: int) -> list[str]:
    """The shortest prefix of `rows` whose tokens fill `n_blocks` packed blocks of `block_size`."""
    needed, total = n_blocks * block_size, 0
    for count, token_ids in enumerate(tokenizer(rows, verbose=False)["input_ids"], start=1):
        total += len(token_ids)
        if total >= needed:
            return rows[:count]
    raise ValueError(f"{n_blocks} blocks of {block_size} asked for; the rows hold only {total} tokens")


def sample_rows(rows: list[str], count: int, seed: int) -> list[str]:
    """`count` rows drawn at random (with replacement when `count` exceeds them): a fair sample of row lengths."""
    rng = random.Random(seed)
    return rng.choices(rows, k=count) if count > len(rows) else rng.sample(rows, count)
