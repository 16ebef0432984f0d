"""Train's checkpoints: where they live, how one becomes complete, and which one a rerun resumes from.

Layout: `<checkpoints>/<key>/checkpoint-<step>/`. The key hashes everything that decides what training computes
(the train params, the fine-tuning method's params, block size, the tokenized train split, the base model, the
precision, the torch and transformers versions, and the machine's numerics: ISA, threads and the canary of
pipeline/training/numerics.py), so a rerun never resumes from another configuration's state. The
folder is not a DVC output: DVC deletes a stage's outputs before running it, which would delete the very checkpoints
a rerun needs.

The Trainer writes a checkpoint file by file into its output folder, so that folder is `<key>/staging/`; `commit`
then records each file's size and sha256 in `complete.json`, flushes everything to disk and renames the folder into
place. A kill at any moment leaves the earlier checkpoints and at most a staging folder (cleared on the next run);
a checkpoint damaged later (a truncated copy, a bad disk) fails its hashes and is skipped for the one before it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from pipeline.errors import UserError
from pipeline.params import Params
from pipeline.tracking.hashing import dvc_md5, file_md5

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 3
"""Part of the key: bump it when what a checkpoint holds, or what training computes from the same params, changes,
so older checkpoints stop matching (2: the trainee's fused head loss, padded head, one-kernel GELU and frozen blocks
without dropout; 3: the loss divided by the scored positions, B x (S-1), not B x S, and the validation record)."""
MARKER = "complete.json"
STEP_LOG = "step_log.json"
# Without any of these the Trainer would resume silently from a weaker state (fresh optimizer, unseeded RNG).
REQUIRED_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", STEP_LOG)


def required_files(processes: int = 1) -> tuple[str, ...]:
    """REQUIRED_FILES for a run of `processes` ranks: the Trainer saves one RNG state per rank (`rng_state_<rank>.pth`)
    when there are several, and a rank resuming without its own would refuse to start."""
    if processes == 1:
        return REQUIRED_FILES
    per_rank = tuple(f"rng_state_{rank}.pth" for rank in range(processes))
    return tuple(name for name in REQUIRED_FILES if name != "rng_state.pth") + per_rank


# These decide when and how much is saved or logged, not what training computes.
_NOT_IN_KEY = ("checkpoint_steps", "keep_checkpoints", "logging_steps")
_PREFIX = "checkpoint-"
# Free space asked for beyond the estimate: the marker, the staging copy's metadata, filesystem slack.
FREE_SPACE_MARGIN = 1.1


def checkpoint_key(
    params: Params,
    train_split: Path,
    base_model: str,
    precision: str,
    validation_split: Path | None = None,
    numerics: dict[str, str] | None = None,
) -> str:
    """16 hex digits naming one training configuration (see the module docstring for what goes in); the validation
    split when training scores it (its points are in the step log, and early stopping acts on them); the numerics
    fingerprint (pipeline/training/numerics.py), so a run resumes only where its kernels compute as they did."""
    identity = {
        "format": CHECKPOINT_FORMAT,
        "train": {k: v for k, v in dataclasses.asdict(params.train).items() if k not in _NOT_IN_KEY},
        "freeze": dataclasses.asdict(params.freeze),
        "block_size": params.tokenize.block_size,
        "train_blocks": file_md5(train_split),
        "validation_blocks": file_md5(validation_split) if validation_split is not None else None,
        "base_model": base_model,
        "precision": precision,
        "versions": [torch.__version__, transformers.__version__],
        "numerics": numerics,
    }
    if params.finetune.method != "freeze":  # only then: method freeze's keys stay those of before methods existed
        identity["method"] = params.finetune.method
    if params.finetune.method == "lora":
        identity["lora"] = dataclasses.asdict(params.lora)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def base_model_identity(name_or_path: str, config) -> str:
    """A local folder by the DVC hash of its files; a hub id by name and the commit its cache resolved to."""
    if Path(name_or_path).is_dir():
        return dvc_md5(Path(name_or_path))
    return f"{name_or_path}@{getattr(config, '_commit_hash', None) or 'unknown'}"


def checkpoint_problem(folder: Path, key: str, processes: int = 1) -> str | None:
    """Why `folder` cannot be resumed from by `processes` ranks; None when every file has the size and hash it was
    saved with."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files = {name: (entry["bytes"], entry["sha256"]) for name, entry in record["files"].items()}
        saved_key = record["key"]
    except FileNotFoundError:
        return f"no {MARKER}: its save never finished"
    except (ValueError, TypeError, KeyError, AttributeError):
        return f"{MARKER} is unreadable"
    if saved_key != key:
        return f"saved for configuration {saved_key}, not {key}"
    missing = [name for name in required_files(processes) if name not in files]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for name, (size, sha256) in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when saved (truncated?)"
        if _sha256(path) != sha256:
            return f"{name} differs from what was saved (corrupt)"
    return None


@dataclass(frozen=True)
class CheckpointStore:
    """The checkpoints of one key under `root`, newest `keep` kept."""

    root: Path
    key: str
    keep: int
    processes: int = 1
    """Ranks that save into each checkpoint (train.processes, also in the key)."""

    @property
    def folder(self) -> Path:
        return self.root / self.key

    @property
    def staging(self) -> Path:
        """The Trainer's output folder: what it writes there is not a checkpoint until `commit` moves it out."""
        return self.folder / "staging"

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the key's folder for this process, clear what a killed run left in staging, name other keys.

        The lock is the kernel's (flock): it goes away with the process however it ends, kill -9 included.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+", encoding="utf-8") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                raise UserError(
                    f"{self.folder}: another train run (pid {lock.read().strip() or '?'}) is using these "
                    "checkpoints; wait for it to end or stop it, then rerun"
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(str(os.getpid()))
            lock.flush()
            shutil.rmtree(self.staging, ignore_errors=True)
            self._report_other_keys()
            yield

    def checkpoints(self) -> list[Path]:
        """Committed checkpoint folders, newest (highest step) first."""
        found = [path for path in self.folder.glob(f"{_PREFIX}*") if path.name[len(_PREFIX) :].isdigit()]
        return sorted(found, key=lambda path: int(path.name[len(_PREFIX) :]), reverse=True)

    def resume_point(self) -> Path | None:
        """The newest checkpoint that passes `checkpoint_problem`; the ones that fail are said and deleted."""
        for checkpoint in self.checkpoints():
            problem = checkpoint_problem(checkpoint, self.key, self.processes)
            if problem is None:
                return checkpoint
            log.warning("%s is not usable (%s): deleted, trying the one before it", checkpoint, problem)
            shutil.rmtree(checkpoint, ignore_errors=True)
        return None

    def commit(self, staged: Path) -> Path:
        """Seal a checkpoint the Trainer finished writing in staging and move it into place; prune old ones."""
        files = {path.relative_to(staged).as_posix(): path for path in sorted(staged.rglob("*")) if path.is_file()}
        for path in files.values():
            _fsync(path)
        record = {
            "key": self.key,
            "files": {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for name, path in files.items()},
        }
        (staged / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _fsync(staged / MARKER)
        final = self.folder / staged.name
        shutil.rmtree(final, ignore_errors=True)  # same step saved by a run that died before it could resume
        os.replace(staged, final)
        _fsync(self.folder)  # the rename itself must reach the disk, or a power loss could undo it
        for old in self.checkpoints()[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def ensure_room(self, model: torch.nn.Module) -> None:
        """Fail before a save that would not fit, rather than halfway through it."""
        committed = self.checkpoints()
        needed = _folder_bytes(committed[0]) if committed else estimated_checkpoint_bytes(model)
        free = shutil.disk_usage(self.folder).free
        if free < needed * FREE_SPACE_MARGIN:
            raise UserError(
                f"{self.root}: {free / 2**20:,.0f} MiB free, but a checkpoint needs about "
                f"{needed * FREE_SPACE_MARGIN / 2**20:,.0f} MiB: free some space (other configurations' checkpoints "
                f"are folders under {self.root}), point the `checkpoints` var in dvc.yaml at a larger disk, or set "
                "train.checkpoint_steps: null"
            )

    def discard(self) -> None:
        """After a successful run: the outputs hold its result now, and a checkpoint kept past them could be resumed
        by a later run whose training code has changed (the code is not in the key)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _report_other_keys(self) -> None:
        others = [path for path in self.root.iterdir() if path.is_dir() and path.name != self.key]
        if others:
            size = sum(_folder_bytes(path) for path in others)
            log.info(
                "ignoring checkpoints of %d other configuration(s) under %s (%s; %.0f MiB): they do not match "
                "these params, data and model, or were computed with other kernels or threads (the numerics tags of "
                "the train run); delete them if you will not return to those params",
                len(others), self.root, ", ".join(sorted(path.name for path in others)), size / 2**20,
            )  # fmt: skip


def estimated_checkpoint_bytes(model: torch.nn.Module) -> int:
    """Weights (each tensor once, as safetensors stores tied ones) plus AdamW's two fp32 moments per trainable one."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    return weights + moments


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
