"""A profile on the generated corpus and a tiny model (profiles/offline.yaml, ci.yaml, offline-llama.yaml), read as the
`dvc exp run -S` overrides it stands for, and the folders it points at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.params import hydra_overrides, read_overrides

PROFILES = Path("profiles")
PROFILE = PROFILES / "offline.yaml"
OFFLINE_PROFILES = ("offline", "ci", "offline-llama")
"""Profiles that run on what `python -m pipeline.offline` generates: `offline` (fp32, the one to explore with),
`ci` (shorter, with the default's bf16, what CI runs several times per job), both on the tiny GPT-2, and
`offline-llama`, the offline profile on a tiny Llama (`python -m pipeline.offline --profile offline-llama`)."""
DEFAULT_MODEL_PROFILES = ("offline", "ci")
"""Profiles whose model `python -m pipeline.offline` writes without `--profile` (every revision's generator does)."""


@dataclass(frozen=True)
class OfflineProfile:
    overrides: dict[str, object]
    """Dotted params keys and their values, as `-S key=value` sets them."""

    @property
    def corpus_dir(self) -> Path:
        """Where the corpus goes: the folder of the split files the profile names (relative to the repo root)."""
        return Path(str(self.overrides["data.train_file"])).parent

    @property
    def model_dir(self) -> Path:
        return Path(str(self.overrides["model.name_or_path"]))

    @property
    def task_dir(self) -> Path:
        """Where the lm-eval tasks over generated files go (pipeline/offline/tasks.py): `harness.task_dir`."""
        return Path(str(self.overrides["harness.task_dir"]))

    def set_param_args(self) -> list[str]:
        """`dvc exp run` arguments that apply the profile: `-S key=value` for each key."""
        return [arg for override in hydra_overrides(self.overrides) for arg in ("-S", override)]


def profile_path(name: str = "offline") -> Path:
    return PROFILES / f"{name}.yaml"


def load_profile(root: Path = Path("."), name: str = "offline") -> OfflineProfile:
    return OfflineProfile(read_overrides(root / profile_path(name)))
