"""Dataset I/O between stages: one Parquet file per split, read back as `datasets.Dataset`.

Parquet through `datasets` gives the same bytes for the same rows (no fingerprints or timestamps inside),
which keeps DVC's hashes stable from run to run.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from datasets import Dataset

from pipeline.errors import UserError
from pipeline.params import SPLITS


def split_path(folder: Path, split: str) -> Path:
    return folder / f"{split}.parquet"


def write_splits(folder: Path, splits: dict[str, Dataset]) -> None:
    for split, dataset in splits.items():
        dataset.to_parquet(split_path(folder, split))


def read_splits(folder: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, Dataset]:
    """Read splits into memory without touching the HF datasets cache (no cache files, nothing to go stale)."""
    missing = [str(split_path(folder, split)) for split in splits if not split_path(folder, split).is_file()]
    if missing:
        raise UserError(f"missing {', '.join(missing)}: run the upstream stage first (`dvc repro`)")
    return {split: Dataset(pq.read_table(split_path(folder, split))) for split in splits}
