"""`python -m pipeline.study --grid studies/<name>.yaml`: queue the grid as DVC experiments, run them with N workers,
and report; `--report` rebuilds the report from the finished experiments of HEAD without training."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.errors import UserError
from pipeline.params import hydra_overrides, load_params, read_overrides
from pipeline.study.grid import load_grid, local_inputs, queue_commands, run_queue, untracked_inputs
from pipeline.study.report import rows, to_markdown, write_report
from pipeline.study.results import study_points
from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.runs import get_or_create_experiment, tracking_client
from pipeline.tracking.study_run import log_study_run

log = logging.getLogger(__name__)

DEFAULT_OUT = "reports/study"
"""Where the report goes; dvc.yaml's top-level plots draw it from there."""


def check_inputs_versioned(root: Path, flat_params: dict[str, object]) -> None:
    if missing := untracked_inputs(root, local_inputs(root, flat_params)):
        raise UserError(
            f"{', '.join(missing)}: not versioned, so queued experiments (which see only what git and DVC track) "
            "would not find them; `dvc add` their folder and `git add` its .dvc file (`python -m pipeline.offline` "
            "does the first and prints the second)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=Path("studies/freezing.yaml"), help="the sweeps to run")
    parser.add_argument("--profile", type=Path, help="a params profile applied to every point (profiles/*.yaml)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel `dvc queue` workers")
    parser.add_argument("--report", action="store_true", help="only rebuild the report from finished experiments")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="folder for study.{md,csv,png}")
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root, where dvc.yaml is")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.jobs < 1:
            raise UserError(f"--jobs: {args.jobs}; at least one worker is needed")
        grid = load_grid(args.grid)
        params = load_params(args.root / "params.yaml")
        # The store and experiment exist before any worker starts, so no two workers race to create them.
        client = tracking_client(args.root.resolve())
        experiment_id = get_or_create_experiment(client, params.mlflow.experiment, args.root.resolve())
        if not args.report:
            profile = read_overrides(args.profile) if args.profile else {}
            check_inputs_versioned(args.root, params.flat() | profile)
            run_queue(args.root, queue_commands(grid, hydra_overrides(profile)), args.jobs)
        points = study_points(args.root, client, params.mlflow.experiment)
        if not points:
            raise UserError(
                f"no finished DVC experiment of HEAD in {args.root} (`dvc exp show`): `dvc queue status` lists the "
                "failed ones and `dvc queue logs <name>` says why; or run the study first"
            )
        table = rows(points)
        paths = write_report(table, args.out, f"Study {grid.name}: {len(table)} points")
        best = min(table, key=lambda row: row["validation_perplexity"])
        run_id = log_study_run(
            client, experiment_id, args.root.resolve(), grid.name,
            settings={"grid": args.grid.as_posix(), "profile": str(args.profile), "jobs": args.jobs,
                      "sweeps": " | ".join(" ".join(sweep) for sweep in grid.sweeps)},
            summary={"points": len(table), "best_validation_perplexity": best["validation_perplexity"]},
            files=list(paths.values()),
            group_run_ids=[point.group_run_id for point in points if point.group_run_id],
        )  # fmt: skip
    print(to_markdown(table, f"Study {grid.name}"))
    print(f"Report: {', '.join(str(path) for path in paths.values())}; MLflow study run {run_id}")


if __name__ == "__main__":
    main()
