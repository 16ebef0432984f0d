"""A study's grid (studies/*.yaml) expanded into its points, each with the DVC experiment name that makes it part
of this study and no other.

A grid is a list of sweeps in DVC's own `-S` sweep syntax (`freeze.trainable_blocks=range(1,4)`,
`train.learning_rate=choice(5.0e-3,1.0e-2)`); each sweep is the cross product of its lines, and several sweeps make a
grid that is not one cross product (no point trains nothing; LoRA ranks and their learning rates go with LoRA only).
DVC's own parser expands them (`dvc.utils.hydra.get_hydra_sweeps`, what `dvc exp run --queue` calls), so a point
here is exactly the point DVC would have queued.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.errors import UserError

SEED_KEY = "train.seed"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Study names become part of DVC experiment names, which are git ref names: no spaces, slashes or `..`."""


@dataclass(frozen=True)
class Grid:
    name: str
    sweeps: tuple[tuple[str, ...], ...]
    """Each sweep: `key=value` overrides in DVC's sweep syntax, expanded to their cross product."""


def load_grid(path: Path) -> Grid:
    """Read a grid file: `sweeps:` a list of lists of `key=value` strings. Problems are refused all at once."""
    if path.is_dir():
        raise UserError(f"{path}: is a folder; --grid takes one grid file, such as studies/freezing.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such grid file (see studies/ for examples)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a YAML grid file ({_one_line(error)}); see studies/ for examples") from None
    sweeps = raw.get("sweeps") if isinstance(raw, dict) else None
    if not isinstance(sweeps, list) or not sweeps:
        raise UserError(f"{path}: expected `sweeps:`, a list of sweeps, each a list of key=value strings")
    issues = [
        f"sweeps[{index}]: {sweep!r} is not a list of key=value strings"
        for index, sweep in enumerate(sweeps)
        if not isinstance(sweep, list) or not all(isinstance(line, str) and "=" in line for line in sweep)
    ]
    if unknown := sorted(raw.keys() - {"sweeps"}):
        issues.append(f"{', '.join(map(str, unknown))}: unknown key(s); a grid file holds only `sweeps:`")
    if issues:
        raise UserError(f"{path} has {len(issues)} problem(s):\n" + "\n".join(f"  - {i}" for i in issues))
    return Grid(path.stem, tuple(tuple(sweep) for sweep in sweeps))


def with_seeds(grid: Grid, seeds: list[int]) -> Grid:
    """Every sweep once per seed (a `train.seed` axis). A sweep that already sets the seed is refused: the grid
    and `--seeds` would disagree on how many runs a configuration gets."""
    if len(seeds) < 2:
        return grid
    clashing = [str(index) for index, sweep in enumerate(grid.sweeps) if any(_key(line) == SEED_KEY for line in sweep)]
    if clashing:
        raise UserError(f"--seeds {len(seeds)}: sweeps[{', '.join(clashing)}] of grid {grid.name} already set "
                        f"{SEED_KEY}; drop that line or --seeds")  # fmt: skip
    axis = f"{SEED_KEY}=choice({','.join(map(str, seeds))})"
    return Grid(grid.name, tuple((*sweep, axis) for sweep in grid.sweeps))


def expand(grid: Grid, fixed: list[str]) -> list[tuple[str, ...]]:
    """Each point's overrides: `fixed` (a profile's) first, then its sweep's values, so the sweep's win. Sweeps DVC
    cannot parse are refused together, each with the parser's reason."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import HydraException

    points, issues = [], []
    for index, sweep in enumerate(grid.sweeps):
        try:
            expanded = get_hydra_sweeps(to_path_overrides([*fixed, *sweep]))
        except (HydraException, DvcException) as error:
            issues.append(f"sweeps[{index}] {list(sweep)}: {_one_line(error)}")
            continue
        # One params file: DVC keys each point's overrides by the file they change.
        points += [tuple(overrides) for point in expanded for overrides in point.values()]
    if issues:
        raise UserError(f"grid {grid.name}: {len(issues)} sweep(s) are not DVC's `-S` sweep syntax (`key=value`, "
                        "`key=choice(a,b)`, `key=range(1,4)`):\n" + "\n".join(f"  - {i}" for i in issues))  # fmt: skip
    return points


def point_name(study: str, baseline: str, overrides: tuple[str, ...]) -> str:
    """The DVC experiment name of a point: the study's name and a digest of the commit and the point's overrides.

    The same study and point on the same commit get the same name, so running a study again resumes it (DVC refuses
    a second experiment of one name on one commit); any other experiment (queued by hand, or by another study)
    has another name and stays out of this study's report."""
    digest = hashlib.sha256("\n".join([baseline, *overrides]).encode()).hexdigest()[:8]
    return f"{study}-{digest}"


def check_study_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
        raise UserError(f"--name {name!r}: a study name is letters, digits, `-`, `_` and `.`, as a DVC experiment "
                        "name (a git ref) allows")  # fmt: skip
    return name


def _key(line: str) -> str:
    return line.split("=", 1)[0].strip().lstrip("+~")


def _one_line(error: BaseException) -> str:
    cause = error.__cause__ or error
    return " ".join(str(cause).split()) or type(cause).__name__
