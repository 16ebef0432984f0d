"""profiles/offline.yaml, read as the `dvc exp run -S` overrides it stands for, and the folders it points at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.params import hydra_overrides, read_overrides

PROFILE = Path("profiles/offline.yaml")


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

    def set_param_args(self) -> list[str]:
        """`dvc exp run` arguments that apply the profile: `-S key=value` for each key."""
        return [arg for override in hydra_overrides(self.overrides) for arg in ("-S", override)]


def load_profile(root: Path = Path(".")) -> OfflineProfile:
    return OfflineProfile(read_overrides(root / PROFILE))
