"""Writing stage outputs so that they are deterministic and never look complete when they are not."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import UserError


class DiskFullError(UserError):
    """The disk filled up while a stage wrote an output; the earlier output is untouched."""


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC or EDQUOT, raised by Python as OSError, or by a library writing through its own code as another type
    carrying only the OS message (safetensors' SafetensorError: `IoError(Os { code: 28, ... "No space left on
    device" })`)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(error) for text in ("No space left on device", "Disk quota exceeded", "code: 28,"))


def disk_full_error(path: Path, needed_bytes: int) -> DiskFullError:
    """One paragraph naming the output, the free space where it goes and about how much it needs."""
    folder = next(parent for parent in (path, *path.parents) if parent.exists())
    free = shutil.disk_usage(folder).free
    return DiskFullError(
        f"{path}: no space left on the disk while writing it ({_size(free)} free there; it needs about "
        f"{_size(needed_bytes)}): free some space on that disk and rerun the stage (`dvc repro`); the {path.name} "
        "an earlier run wrote, if any, is unchanged"
    )


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


@contextmanager
def atomic_dir(final: Path, expected_bytes: int = 0) -> Iterator[Path]:
    """Yield an empty staging folder beside `final`; on success it replaces `final` in one rename.

    A crash leaves only the staging folder (removed on the next try), never a half-written `final`. A full disk
    becomes a `DiskFullError` saying how much the folder needs: `expected_bytes`, or what was staged when it filled.
    """
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException as error:
        staged = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file())
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(error):
            raise disk_full_error(final, max(expected_bytes, staged)) from None
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    try:
        staging.write_text(text, encoding="utf-8")
    except OSError as error:
        staging.unlink(missing_ok=True)
        if is_disk_full(error):
            raise disk_full_error(path, len(text.encode("utf-8"))) from None
        raise
    os.replace(staging, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Keys in the payload's own order, which the code fixes (the headline numbers first: `dvc exp show` and
    `dvc metrics diff` show columns in file order), and a trailing newline: the same numbers always give the same
    bytes, and the same DVC hash. NaN and infinity are refused: they are not JSON, and DVC cannot read them."""
    try:
        text = json.dumps(payload, indent=2, allow_nan=False)
    except ValueError:
        numbers = flatten_metrics({key: value for key, value in payload.items() if isinstance(value, (dict, float))})
        bad = [f"{key} = {value}" for key, value in numbers.items() if isinstance(value, float)
               and not math.isfinite(value)]  # fmt: skip
        raise UserError(
            f"{path}: not written, because {', '.join(bad) or 'a value'} is not a finite number (NaN or infinity is "
            "not JSON); a diverging run gives them: lower train.learning_rate and rerun"
        ) from None
    write_text_atomic(path, text + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A stage's JSON input (another stage's metrics); missing, it is the user's to make, not a crash."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"missing {path}: run the upstream stage first (`dvc repro`)") from None


def flatten_metrics(nested: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """`{"test": {"loss": 3.1}}` -> `{"test.loss": 3.1}`: metrics files nest, MLflow keys are flat. Any other value
    (a list, a string) is kept as it is."""
    flat: dict[str, float] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
