"""Which local paths a stage may read: only those under the folders dvc.yaml declares as dependencies.

A stage that reads a file DVC does not track is never rerun when that file changes (`dvc status` says up to date
after it was edited), so the params loader refuses such a path before any work. tests/test_dvc_yaml.py holds
`TRACKED_FOLDERS` equal to the dvc.yaml deps of the stages that read each kind of input.
"""

from __future__ import annotations

import os
from pathlib import Path

TRACKED_FOLDERS = {"corpus": "local/corpus", "models": "local/models", "tasks": "local/tasks"}
"""The dvc.yaml dependency that holds each kind of local input: text (prepare), model folders (the others) and
lm-eval task definitions with their data (the harness stages)."""


def is_local_path(name: str) -> bool:
    """Whether `name` (a model.name_or_path or data.hub_dataset) names something on disk rather than a Hub id.

    As `from_pretrained` and `load_dataset` decide: an existing directory is local, whatever it looks like. A name
    that does not exist is a Hub id only if it could be one (`gpt2`, `openai-community/gpt2`: at most one `/`, not
    absolute or starting with `.`, `~` or `local/`); anything else is a path, missing or not, so a typo in
    `local/models/tiny-gpt2` is still checked as one.
    """
    if Path(name).is_dir():
        return True
    return os.path.isabs(name) or name.startswith((".", "~", "local/")) or "\\" in name or name.count("/") > 1


def untracked(path: str, kind: str) -> str | None:
    """None when `path` lies inside the tracked folder for `kind` (`corpus` or `models`), else that folder."""
    folder = TRACKED_FOLDERS[kind]
    resolved = Path(os.path.expanduser(path))
    if resolved.is_absolute():  # the stages run from the repo root, which relative paths are taken from
        try:
            resolved = resolved.relative_to(Path.cwd())
        except ValueError:
            return folder
    inside = os.path.normpath(resolved).replace(os.sep, "/")  # `local/corpus/../x` is not inside
    return None if inside.startswith(folder + "/") else folder


def untracked_path_issue(key: str, path: str, kind: str) -> str | None:
    """The params problem for `key` = `path` when DVC does not track it, as one line that says what to do."""
    folder = untracked(path, kind)
    if folder is None:
        return None
    return (
        f"{key}: {path!r} is outside {folder}/, which is the only place dvc.yaml tracks for it, so DVC would not "
        f"rerun the stages that read it after it changes; move it to {folder}/<name> (and version it with "
        f"`dvc add {folder}/<name>`, docs/operations.md) and point {key} there"
    )
