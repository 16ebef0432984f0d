"""Writing stage outputs so that they are deterministic and never look complete when they are not."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import UserError


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `final`; on success it replaces `final` in one rename.

    A crash leaves only the staging folder (removed on the next try), never a half-written `final`.
    """
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Keys in the payload's own order, which the code fixes (the headline numbers first: `dvc exp show` and
    `dvc metrics diff` show columns in file order), and a trailing newline: the same numbers always give the same
    bytes, and the same DVC hash."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A stage's JSON input (another stage's metrics); missing, it is the user's to make, not a crash."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"missing {path}: run the upstream stage first (`dvc repro`)") from None


def flatten_metrics(nested: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """`{"test": {"loss": 3.1}}` -> `{"test.loss": 3.1}`: metrics files nest, MLflow keys are flat."""
    flat: dict[str, float] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
