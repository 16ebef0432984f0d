"""Lineage tags for MLflow runs: the git commit and state, the params digest, the DVC stage and experiment, and the
DVC hash of each input, so a run names exactly what produced it. Also the key that groups the stages of one
pipeline execution, and the redaction that keeps the home folder and secrets out of any tag.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from pipeline.params import Params
from pipeline.tracking.hashing import dvc_md5

logger = logging.getLogger(__name__)

# DVC rewrites dvc.lock after every stage and .gitignore for new outputs, and the first stage creates mlruns/, so
# these must not change the group key between two stages of one execution; the `git.dirty` tag still counts them.
_BOOKKEEPING_PATHSPECS = (":(exclude,glob)**/dvc.lock", ":(exclude,glob)**/.gitignore", ":(exclude)mlruns")
# `${name}` in dvc.yaml: a top-level var (DVC's templating).
_TEMPLATE_VAR = re.compile(r"\$\{\s*([\w.-]+)\s*\}")
# MLflow's key alphabet (its own error message lists it); any other character of a file name becomes "_".
_INVALID_KEY_CHARS = re.compile(r"[^\w\-. :/]")
# Environment variables whose values are credentials wherever they appear (HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...).
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY", re.IGNORECASE)
INPUT_TAG_PREFIX = "input."
# Shorter values (a "1", a "true") would blank unrelated words.
_MIN_SECRET_CHARS = 8


def git(cwd: Path, *args: str) -> str | None:
    """stdout of a git command, or None outside a repo or without git."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _dirty(root: Path, *pathspecs: str) -> str:
    status = git(root, "status", "--porcelain", "--", ".", *pathspecs)
    return "unknown" if status is None else str(bool(status)).lower()


def lineage_tags(root: Path, params: Params, stage: str) -> dict[str, str]:
    commit = git(root, "rev-parse", "HEAD")
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": _dirty(root),
        "params.hash": params.digest(),
        "dvc.stage": os.environ.get("DVC_STAGE") or stage,
    }
    if commit:  # MLflow's UI links this standard tag to the commit; "unknown" would be a broken link
        tags["mlflow.source.git.commit"] = commit
    tags |= _source_tags(root)
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = exp_name
    return tags


def _source_tags(root: Path) -> dict[str, str]:
    """MLflow's standard source tags (the UI's Source and User columns), which the client API, unlike the fluent
    one, does not set: the entry point, as a repo-relative path or a module name."""
    entry = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    source = entry.relative_to(root).as_posix() if entry and entry.is_relative_to(root) else Path(sys.argv[0]).name
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": source or "python"}
    if branch := git(root, "rev-parse", "--abbrev-ref", "HEAD"):
        tags["mlflow.source.git.branch"] = branch
    with contextlib.suppress(KeyError, OSError):  # no passwd entry for the uid (some containers)
        tags["mlflow.user"] = getpass.getuser()
    return tags


def group_key(root: Path, params: Params, lineage: dict[str, str]) -> str:
    dirty = _dirty(root, *_BOOKKEEPING_PATHSPECS, *_stage_output_pathspecs(root))
    identity = [params.digest(), lineage["git.commit"], dirty, lineage.get("dvc.exp_name", "")]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def interpolate(text: str, pipeline: dict) -> str:
    """`text` from a loaded dvc.yaml with each `${name}` replaced by the top-level var of that name, as DVC's
    templating fills it in (a name the vars lack raises KeyError)."""
    variables = {
        key: value for entry in pipeline.get("vars") or () if isinstance(entry, dict) for key, value in entry.items()
    }
    return _TEMPLATE_VAR.sub(lambda match: str(variables[match[1]]), text)


def _stage_output_pathspecs(root: Path) -> list[str]:
    """Every output dvc.yaml declares, excluded from the group key's dirty check: metrics files are not git-ignored
    (they are committed), so without this the second stage of an execution would see the first one's metrics as
    uncommitted changes and start a group of its own."""
    try:
        pipeline = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
        kinds = ("outs", "metrics", "plots")
        stages = pipeline["stages"].values()
        declared = [entry for stage in stages for kind in kinds for entry in stage.get(kind) or ()]
        paths = [entry if isinstance(entry, str) else next(iter(entry)) for entry in declared]
        resolved = [interpolate(path, pipeline) for path in paths]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return []  # no dvc.yaml (a stage run by hand elsewhere), or one DVC itself would refuse
    return [f":(exclude){path}" for path in resolved]


def input_tags(root: Path, inputs: Sequence[Path]) -> dict[str, str]:
    """`input.<repo-relative path>` = its dvc.lock md5, for each input that exists.

    Paths are relative to the innermost of the repo root and the cwd's git top level, and never absolute:
    `dvc exp run --temp` runs stages in a git copy of the repo inside the original's `.dvc/tmp/exps/`, where the
    copy's own top level must win; a path outside both is named by its last part only.
    """
    bases = [Path(base).resolve() for base in (root, git(Path.cwd(), "rev-parse", "--show-toplevel")) if base]
    tags = {}
    for path in map(Path, inputs):
        if not path.exists():
            logger.warning("Input %s does not exist; its hash is not tagged on the MLflow run", path)
            continue
        absolute = path.resolve()
        relatives = [absolute.relative_to(base) for base in bases if absolute.is_relative_to(base)]
        name = min(relatives, key=lambda relative: len(relative.parts)).as_posix() if relatives else path.name
        tags[f"{INPUT_TAG_PREFIX}{_INVALID_KEY_CHARS.sub('_', name)}"] = dvc_md5(path)
    return tags


def redact(text: str) -> str:
    """`text` with the values of secret-named environment variables blanked and the home folder written `~`: an
    error message from a library may quote either, and a tag is shown to everyone who can open the MLflow UI.
    """
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_CHARS:
            text = text.replace(value, "***")
    home = str(Path.home())
    return text.replace(home, "~") if len(home) > 1 else text
