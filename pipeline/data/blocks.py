"""Token blocks: a text's tokens as one stream, cut into equal blocks (the tokenize stage's packing).

Apart from the stage (pipeline/tokenization.py) so the benchmarks pack their text exactly as it does without
importing its MLflow tracking.
"""

from __future__ import annotations

import itertools

import numpy as np
from tqdm.auto import tqdm

# Rows per call of the (Rust, multi-threaded) fast tokenizer: large enough to amortise the call, small enough
# to show progress.
TOKENIZER_BATCH_ROWS = 2_000


def tokenize_text(texts: list[str], tokenizer) -> np.ndarray:
    """All tokens of `texts`, in order, as one int32 stream (GPT-2 adds no special tokens between rows)."""
    batches = range(0, len(texts), TOKENIZER_BATCH_ROWS)
    token_lists = itertools.chain.from_iterable(
        tokenizer(texts[start : start + TOKENIZER_BATCH_ROWS], return_attention_mask=False, verbose=False)["input_ids"]
        for start in tqdm(batches, desc="tokenizing", unit="batch", leave=False)
    )
    return np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int32)


def pack_blocks(tokens: np.ndarray, block_size: int) -> tuple[np.ndarray, int]:
    """Cut a token stream into (n_blocks, block_size); return the blocks and how many tail tokens were dropped."""
    n_blocks = len(tokens) // block_size
    kept = n_blocks * block_size
    return tokens[:kept].reshape(n_blocks, block_size), len(tokens) - kept
