"""Stage 2, tokenize: GPT-2 tokens of each split, packed into contiguous blocks of `block_size`.

The idea of run_clm's `group_texts`: concatenate a split's tokens and cut the stream into equal blocks. Nothing
is padded, so no pad token is ever trained on or scored (the original script padded rows to 64 with pad=eos and
trained on the pads). Only the tail shorter than one block is dropped, and the metrics say how many tokens.
The eval splits' whole streams are also written, unpacked, to their own folder: evaluate cuts its own windows from
them (evaluate.context, evaluate.stride), so every token is scored whatever block size training uses, and a
block_size change leaves them, and so the base model's scores, unchanged.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from datasets import Dataset

from pipeline.data.blocks import pack_blocks, tokenize_text
from pipeline.data.corpus import read_splits, write_splits
from pipeline.data.files import atomic_dir, flatten_metrics, write_json
from pipeline.data.loading import load_config, load_tokenizer
from pipeline.errors import UserError
from pipeline.params import EVAL_SPLITS, load_params
from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.runs import stage_run

log = logging.getLogger(__name__)

PARAMS = {"tokenize": ("model.name_or_path", "tokenize.block_size")}
"""The params.yaml keys each DVC stage this module runs reads (dvc.yaml lists the same; a test holds them equal)."""


def tokenize_splits(
    splits: dict[str, Dataset], tokenizer, block_size: int
) -> tuple[dict[str, Dataset], dict[str, Dataset], dict[str, dict[str, int]]]:
    """Each split's packed blocks; the eval splits' whole token streams (one token per row); the counts."""
    blocks_by_split, streams, stats = {}, {}, {}
    for split, dataset in splits.items():
        tokens = tokenize_text(dataset["text"], tokenizer)
        if len(tokens) < block_size:
            raise UserError(
                f"split {split!r} has {len(tokens)} tokens, fewer than one block of tokenize.block_size="
                f"{block_size}: lower block_size or give the split more text"
            )
        blocks, dropped = pack_blocks(tokens, block_size)
        blocks_by_split[split] = Dataset.from_dict({"input_ids": blocks})
        if split in EVAL_SPLITS:
            streams[split] = Dataset.from_dict({"input_ids": tokens})
        stats[split] = {"tokens": len(tokens), "blocks": len(blocks), "dropped_tail_tokens": dropped}
    return blocks_by_split, streams, stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, required=True, help="folder of prepared <split>.parquet")
    parser.add_argument("--out", type=Path, required=True, help="folder for packed <split>.parquet")
    parser.add_argument("--streams", type=Path, required=True, help="folder for the eval splits' token streams")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON file of per-split token counts")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        params = load_params(args.params, load_model_config=load_config)
        with stage_run("tokenize", params, PARAMS["tokenize"], inputs=[args.prepared]) as run:
            tokenizer = load_tokenizer(params.model.name_or_path)
            blocks, streams, stats = tokenize_splits(read_splits(args.prepared), tokenizer, params.tokenize.block_size)
            with atomic_dir(args.out) as staging:
                write_splits(staging, blocks)
            with atomic_dir(args.streams) as staging:
                write_splits(staging, streams)
            write_json(args.metrics, stats)
            run.log_metrics(flatten_metrics(stats))
        for split, counts in stats.items():
            print(
                f"{split:<10} {counts['tokens']:>10,} tokens -> {counts['blocks']:,} blocks of "
                f"{params.tokenize.block_size} ({counts['dropped_tail_tokens']} tail tokens dropped)"
            )


if __name__ == "__main__":
    main()
