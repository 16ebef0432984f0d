"""Stage 1, prepare: load the raw corpus and write its train/validation/test splits as Parquet.

Rows are lines of text, headings and empty lines included: article structure is text too, and nothing is
dropped silently (line, empty-line and character counts per split go to the stage's metrics). The hub source
uses the dataset's own splits; the test set is never carved out of train.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
from pathlib import Path

from datasets import Dataset

from pipeline.data.corpus import write_splits
from pipeline.data.files import atomic_dir, flatten_metrics, write_json
from pipeline.data.loading import load_hub_dataset
from pipeline.errors import UserError
from pipeline.params import SPLITS, DataParams, load_params
from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.runs import stage_run

log = logging.getLogger(__name__)

PARAMS = {"prepare": ("data",)}
"""The params.yaml keys each DVC stage this module runs reads (dvc.yaml lists the same; a test holds them equal)."""

# Wikitext marks an article's title as " = Title = "; sections add more "=" (" = = Section = = "). Matched on the
# line with its ending and trailing whitespace stripped, so CRLF and CR files cut at the same places as LF ones.
ARTICLE_HEADING = re.compile(r"^ = [^=].* =$")
# A line and its ending, which is kept: \r\n, \r or \n (not str.splitlines' other separators, which are text here).
LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def prepare(data: DataParams) -> dict[str, Dataset]:
    """Load the corpus `data` describes and cut each split to its subset size.

    Local paths are relative to the working directory, which DVC sets to the folder of dvc.yaml.
    """
    if data.source == "hub":
        hub = load_hub_dataset(data.hub_dataset, data.hub_config)
        missing = [split for split in SPLITS if split not in hub]
        if missing:
            raise UserError(f"data.hub_dataset={data.hub_dataset!r} has no split(s) {missing}; it has {list(hub)}")
        lines = {split: hub[split]["text"] for split in SPLITS}
    elif data.single_file is not None:
        lines = split_documents(read_lines(Path(data.single_file)), data.split_fractions, data.split_seed)
    else:
        lines = {split: read_lines(Path(data.split_file(split))) for split in SPLITS}
    return {split: Dataset.from_dict({"text": _subset(lines[split], data.max_lines(split))}) for split in SPLITS}


def read_lines(path: Path) -> list[str]:
    """Lines with their newlines kept, so joining them gives back the file's text exactly."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (check data.*_file in params.yaml)") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {error.start}); re-encode it as UTF-8") from None
    lines = LINE.findall(text)
    if not any(line.strip() for line in lines):
        raise UserError(f"{path}: no text in it; give the split a non-empty file")
    return lines


def split_documents(lines: list[str], fractions: list[float], seed: int) -> dict[str, list[str]]:
    """Shuffle whole documents with a fixed seed and deal them out by fractions, each to exactly one split.

    Documents start at article headings; a file without headings is cut at empty lines instead. A split that
    would get no document is refused: an empty split would only fail later, in tokenize or evaluate.
    """
    documents = cut_documents(lines)
    counts = documents_per_split(len(documents), fractions)
    if 0 in counts.values():
        empty = ", ".join(split for split, count in counts.items() if count == 0)
        raise UserError(
            f"data.single_file holds {len(documents)} document(s); data.split_fractions {fractions} would leave "
            f"the {empty} split(s) empty ({', '.join(f'{s} {n}' for s, n in counts.items())} documents): give a "
            "file with more articles (' = Title = ' headings, or text blocks between empty lines), raise the small "
            "fractions, or give one file per split (data.<split>_file)"
        )
    random.Random(seed).shuffle(documents)
    splits, start = {}, 0
    for split, count in counts.items():
        splits[split] = [line for document in documents[start : start + count] for line in document]
        start += count
    return splits


def cut_documents(lines: list[str]) -> list[list[str]]:
    """Consecutive lines grouped into documents, each line in exactly one."""
    has_headings = any(_is_heading(line) for line in lines)
    documents: list[list[str]] = [[]]
    for line in lines:
        starts_new = _is_heading(line) if has_headings else not line.strip()
        if starts_new and documents[-1]:
            documents.append([])
        documents[-1].append(line)
    return documents


def documents_per_split(documents: int, fractions: list[float]) -> dict[str, int]:
    """Documents per split: cumulative fractions rounded, so the counts add up to `documents`."""
    ends = [round(sum(fractions[: index + 1]) * documents) for index in range(len(SPLITS) - 1)] + [documents]
    return {split: end - start for split, start, end in zip(SPLITS, [0, *ends[:-1]], ends, strict=True)}


def _is_heading(line: str) -> bool:
    return ARTICLE_HEADING.match(line.rstrip()) is not None


def _subset(lines: list[str], max_lines: int | None) -> list[str]:
    return lines if max_lines is None else lines[:max_lines]


def split_stats(splits: dict[str, Dataset]) -> dict[str, dict[str, int]]:
    stats = {}
    for split, dataset in splits.items():
        texts = dataset["text"]
        stats[split] = {
            "lines": len(texts),
            "empty_lines": sum(1 for text in texts if not text.strip()),
            "characters": sum(len(text) for text in texts),
        }
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="folder for <split>.parquet")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON file of per-split counts")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        params = load_params(args.params)
        local_files = (params.data.single_file, *map(params.data.split_file, SPLITS))
        local_inputs = [Path(path) for path in local_files if path is not None]
        with stage_run("prepare", params, PARAMS["prepare"], inputs=local_inputs) as run:
            splits = prepare(params.data)
            stats = split_stats(splits)
            with atomic_dir(args.out) as staging:
                write_splits(staging, splits)
            write_json(args.metrics, stats)
            run.log_metrics(flatten_metrics(stats))
        for split, counts in stats.items():
            print(
                f"{split:<10} {counts['lines']:>8,} lines ({counts['empty_lines']:,} empty), "
                f"{counts['characters']:,} characters"
            )


if __name__ == "__main__":
    main()
