"""A study's points, each checked by the params loader before anything is queued.

Each point's params are what its queued experiment will read: params.yaml with the point's overrides applied by
DVC's own `apply_overrides` (what `dvc exp run -S` does in the experiment's copy), then read by `load_params`, as
every stage will. A value DVC accepts but a stage refuses (`lora.rank=0`) would otherwise fail only in the queue,
after the points before it had run. Every bad point is named in one paragraph, and nothing is queued unless all
are good.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.input_paths import is_local_path
from pipeline.params import Params, ParamsError, load_params
from pipeline.study.grid import Grid, expand, point_name


@dataclass(frozen=True)
class Point:
    name: str
    """The DVC experiment name: the point's identity in its study (grid.point_name)."""
    overrides: tuple[str, ...]
    """The `-S` overrides it is queued with: the profile's, then its sweep's."""
    varies: tuple[str, ...]
    """Its sweep's overrides alone: what tells it from the other points."""
    params: Params


def plan_study(root: Path, study: str, baseline: str, grid: Grid, fixed: list[str]) -> list[Point]:
    """Every point of `grid` with its params, or a UserError naming every point the params loader refuses."""
    from dvc.exceptions import DvcException
    from dvc.utils.hydra import apply_overrides

    points, issues, model_configs = [], [], ModelConfigs()
    expanded = expand(grid, fixed)
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(root):  # params paths are relative to the root
        for index, overrides in enumerate(expanded):
            varies = overrides[len(fixed) :]
            copy = Path(scratch) / f"point-{index}.yaml"
            shutil.copyfile("params.yaml", copy)
            try:
                apply_overrides(copy, list(overrides))
                params = load_params(copy)
                if model_configs.readable(params.model.name_or_path):
                    load_params(copy, load_model_config=model_configs.load)
            except (DvcException, ParamsError) as error:
                issues.append(f"point {index + 1} ({' '.join(varies)}): {_problems(error)}")
                continue
            points.append(Point(point_name(study, baseline, overrides), overrides, varies, params))
    issues += _duplicates(points)
    if issues:
        raise UserError(
            f"grid {grid.name}: {len(issues)} of its {len(expanded)} points would fail, so nothing was queued; fix "
            "the grid (or the profile) and run the study again:\n" + "\n".join(f"  - {issue}" for issue in issues)
        )
    return points


class ModelConfigs:
    """Model configs read once per model, for what only they can tell (trainable_blocks above n_layer, a
    block_size above the context). Models on disk only: a study may not reach the Hub, and the train stage checks
    a Hub model before it trains."""

    def __init__(self) -> None:
        self.configs: dict[str, object] = {}

    @staticmethod
    def readable(model: str) -> bool:
        return is_local_path(model) and Path(model).is_dir()

    def load(self, model: str) -> object:
        if model not in self.configs:
            from pipeline.data.loading import load_config  # transformers: imported only when a config is read

            self.configs[model] = load_config(model)
        return self.configs[model]


def _duplicates(points: list[Point]) -> list[str]:
    """Two points with the same params would be one configuration run twice under two names."""
    first_by_digest: dict[str, Point] = {}
    issues = []
    for point in points:
        digest = point.params.digest()
        if digest in first_by_digest:
            earlier = first_by_digest[digest]
            issues.append(f"({' '.join(point.varies)}) has the same params as ({' '.join(earlier.varies)}); keep one")
        first_by_digest.setdefault(digest, point)
    return issues


def _problems(error: Exception) -> str:
    """The loader's problems on one line (it lists them one per line, after a header naming the scratch file)."""
    if isinstance(error, ParamsError):
        lines = [line.strip().removeprefix("- ") for line in str(error).splitlines()[1:]]
        return "; ".join(line for line in lines if line) or str(error)
    cause = error.__cause__ or error  # DVC wraps Hydra's reason (`Key 'x' is not in struct`)
    return " ".join(str(cause).split())
