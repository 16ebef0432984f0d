"""The md5 that DVC records in dvc.lock for a file or a directory, so MLflow runs can name their exact inputs.

A file's hash is the md5 of its bytes (DVC 3 dropped 2.x's `md5-dos2unix` text normalisation; dvc.lock says
`hash: md5`). A directory's hash is DVC's ".dir" hash: the md5 of a JSON listing of every file below it, plus the
suffix `.dir`.

The listing is reimplemented here (a few lines) rather than taken from dvc_data, because the piece of dvc_data
that walks and hashes a directory (`dvc_data.hashfile.build._build_tree`) is private and wants an object store,
while the public `Tree.digest()` would still need our own walk; and every stage imports this module through
`pipeline.tracking.runs`, which should not load DVC. The format cannot drift silently: DVC would have to rehash every
dvc.lock in existence to change it (it did so once, from 2.x to 3.x), and tests/test_hashing.py checks this code
against what `dvc repro` writes. The format, from dvc_data 3.x `hashfile/tree.py` (`Tree.as_list`, `as_bytes`,
`digest`): `json.dumps(sorted([{"md5": <file md5>, "relpath": <posix path>}, ...], key=relpath), sort_keys=True)`.

Known gap: patterns in the repo's `.dvcignore` are not applied (this project's has none); DVC's built-in ones
(`.git`, `.hg`, `.dvc` anywhere in the tree, from `dvc/ignore.py`) are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# DvcIgnoreFilter's default patterns: `.git` (file or dir), `.hg/` and `.dvc/` at any depth never enter a tree.
_IGNORED_DIRS = frozenset({".git", ".hg", ".dvc"})
_IGNORED_FILES = frozenset({".git"})
_CHUNK_BYTES = 2**20


def dvc_md5(path: Path) -> str:
    """The md5 DVC 3 writes into dvc.lock for `path`: a file's md5, or a directory's `<md5>.dir`."""
    path = Path(path)
    if path.is_dir():
        return _dir_md5(path)
    return file_md5(path)


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _dir_md5(path: Path) -> str:
    entries = [{"md5": file_md5(path / relpath), "relpath": relpath} for relpath in _tree_files(path)]
    entries.sort(key=lambda entry: entry["relpath"])
    # json.dumps' default separators and ensure_ascii are part of the format: DVC hashes exactly these bytes.
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"


def _tree_files(path: Path) -> list[str]:
    """Posix paths, relative to `path`, of the files DVC puts in the tree.

    os.walk without followlinks, as dvc_objects' LocalFileSystem.walk does: a symlinked file is hashed by its
    target's bytes, a symlinked directory is not descended into.
    """
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [name for name in dirs if name not in _IGNORED_DIRS]
        relroot = Path(root).relative_to(path)
        files += [(relroot / name).as_posix() for name in names if name not in _IGNORED_FILES]
    return files
