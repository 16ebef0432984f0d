"""`python -m pipeline.study --grid studies/<name>.yaml`: check every point of the grid, queue the ones not yet run
as DVC experiments named for this study, run them with N workers, and report; `--report` rebuilds the report from
the study's experiments without queueing anything."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.params import hydra_overrides, load_params, read_overrides
from pipeline.study.grid import check_study_name, load_grid, with_seeds
from pipeline.study.plan import Point, plan_study
from pipeline.study.queue import check_inputs_versioned, queue_log, queue_points, queue_status, start_workers, wait_for
from pipeline.study.report import write_report
from pipeline.study.results import TO_QUEUE, Outcome, exp_show, outcomes, with_timings
from pipeline.study.summary import configurations
from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.lineage import git
from pipeline.tracking.runs import get_or_create_experiment, tracking_client
from pipeline.tracking.study_run import log_study_run

log = logging.getLogger(__name__)

DEFAULT_OUT = "reports/study"
"""Where the report goes; dvc.yaml's top-level plots draw it from there."""


def current_outcomes(root: Path, points: list[Point]) -> list[Outcome]:
    return outcomes(points, exp_show(root), queue_status(root), lambda rev: queue_log(root, rev))


def run_points(root: Path, points: list[Point], jobs: int) -> list[Outcome]:
    """Queue the points never run (or failed), run them and any still queued, wait; their outcomes after."""
    before = current_outcomes(root, points)
    to_queue = [outcome.point for outcome in before if outcome.status in TO_QUEUE]
    log.info("%d of %d points to queue (%d finished or diverged before, %d queued or running)", len(to_queue),
             len(points), sum(o.status in ("finished", "diverged") for o in before),
             sum(o.status in ("queued", "running") for o in before))  # fmt: skip
    queue_points(root, to_queue)
    if to_queue or any(outcome.status in ("queued", "running") for outcome in before):
        start_workers(root, jobs)
        wait_for(root, {point.name for point in points})
    return current_outcomes(root, points)


def study(args: argparse.Namespace) -> bool:
    """Plan, run (unless --report) and report the study; whether every point finished."""
    for option, value in (("--jobs", args.jobs), ("--seeds", args.seeds)):
        if value < 1:
            raise UserError(f"{option}: {value}; at least 1")
    grid = load_grid(args.grid)
    name = check_study_name(args.name or grid.name)
    root = args.root.resolve()
    profile = read_overrides(args.profile) if args.profile else {}
    first_seed = profile.get("train.seed", load_params(root / "params.yaml").train.seed)
    baseline = git(root, "rev-parse", "HEAD")
    if not baseline:
        raise UserError(f"{root}: no git commit; DVC experiments are queued on a commit (`git commit` first)")
    seeds = [int(first_seed) + offset for offset in range(args.seeds)]
    points = plan_study(root, name, baseline, with_seeds(grid, seeds), hydra_overrides(profile))
    # The store and experiment exist before any worker starts, so no two workers race to create them.
    client = tracking_client(root)
    experiment = points[0].params.mlflow.experiment
    experiment_id = get_or_create_experiment(client, experiment, root)
    if args.report:
        results = current_outcomes(root, points)
    else:
        check_inputs_versioned(root, points)
        results = run_points(root, points, args.jobs)
    results = with_timings(results, client, experiment)
    configs = configurations(results)
    paths = write_report(f"Study {name}", results, configs, args.out)
    finished = [outcome for outcome in results if outcome.status == "finished"]
    picked = [config.picked.mean("validation_perplexity") for config in configs if config.picked]
    counts = {status: sum(o.status == status for o in results) for status in ("finished", "failed", "diverged")}
    run_id = log_study_run(
        client, experiment_id, root, name,
        settings={"grid": args.grid.as_posix(), "profile": str(args.profile), "seeds": args.seeds,
                  "sweeps": " | ".join(" ".join(sweep) for sweep in grid.sweeps)},
        summary={"points": len(results), **counts} | ({"best_validation_perplexity": min(picked)} if picked else {}),
        files=list(paths.values()),
        group_run_ids=[outcome.group_run_id for outcome in finished if outcome.group_run_id],
    )  # fmt: skip
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"Report: {', '.join(str(path) for path in paths.values())}; MLflow study run {run_id}")
    return len(finished) == len(results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=Path("studies/freezing.yaml"), help="the sweeps to run")
    parser.add_argument("--name", help="the study's name (default: the grid's); another name is another study")
    parser.add_argument("--profile", type=Path, help="a params profile applied to every point (profiles/*.yaml)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per configuration and learning rate")
    parser.add_argument("--jobs", type=int, default=1, help="parallel `dvc queue` workers")
    parser.add_argument("--report", action="store_true", help="only rebuild the report from the study's experiments")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="folder for the report files")
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root, where dvc.yaml is")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        complete = study(args)
    if not complete:
        log.error("not every point finished: the report lists each one that did not, and why")
        sys.exit(1)


if __name__ == "__main__":
    main()
