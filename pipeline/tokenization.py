"""Stage 2, tokenize: GPT-2 tokens of each split, packed into contiguous blocks of `block_size`.

The idea of run_clm's `group_texts`: concatenate a split's tokens and cut the stream into equal blocks. Nothing
is padded, so no pad token is ever trained on or scored (the original script padded rows to 64 with pad=eos and
trained on the pads). Only the tail shorter than one block is dropped, and the metrics say how many tokens.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm

from pipeline.cli import exit_on_user_error
from pipeline.corpus import read_splits, write_splits
from pipeline.errors import UserError
from pipeline.files import atomic_dir, flatten_metrics, write_json
from pipeline.loading import load_config, load_tokenizer
from pipeline.params import load_params
from pipeline.tracking import stage_run

log = logging.getLogger(__name__)

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


def tokenize_splits(
    splits: dict[str, Dataset], tokenizer, block_size: int
) -> tuple[dict[str, Dataset], dict[str, dict[str, int]]]:
    blocks_by_split, stats = {}, {}
    for split, dataset in splits.items():
        tokens = tokenize_text(dataset["text"], tokenizer)
        if len(tokens) < block_size:
            raise UserError(
                f"split {split!r} has {len(tokens)} tokens, fewer than one block of tokenize.block_size="
                f"{block_size}: lower block_size or give the split more text"
            )
        blocks, dropped = pack_blocks(tokens, block_size)
        blocks_by_split[split] = Dataset.from_dict({"input_ids": blocks})
        stats[split] = {"tokens": len(tokens), "blocks": len(blocks), "dropped_tail_tokens": dropped}
    return blocks_by_split, stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, required=True, help="folder of prepared <split>.parquet")
    parser.add_argument("--out", type=Path, required=True, help="folder for packed <split>.parquet")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON file of per-split token counts")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        params = load_params(args.params, load_model_config=load_config)
        with stage_run("tokenize", params, ("mlflow", "model", "tokenize"), inputs=[args.prepared]) as run:
            tokenizer = load_tokenizer(params.model.name_or_path)
            blocks, stats = tokenize_splits(read_splits(args.prepared), tokenizer, params.tokenize.block_size)
            with atomic_dir(args.out) as staging:
                write_splits(staging, blocks)
            write_json(args.metrics, stats)
            run.log_metrics(flatten_metrics(stats))
        for split, counts in stats.items():
            print(
                f"{split:<10} {counts['tokens']:>10,} tokens -> {counts['blocks']:,} blocks of "
                f"{params.tokenize.block_size} ({counts['dropped_tail_tokens']} tail tokens dropped)"
            )


if __name__ == "__main__":
    main()
