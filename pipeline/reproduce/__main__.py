"""`python -m pipeline.reproduce twice|lock|reference|compare`: see the package docstring."""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.offline.profile import OFFLINE_PROFILES
from pipeline.reproduce.checks import check_lock, check_twice, fresh_clone, read_metrics, run_pipeline
from pipeline.reproduce.compare import compare_revisions
from pipeline.reproduce.reference import (
    DEFAULT_TOLERANCE,
    compare_with_reference,
    read_reference,
    reference_path,
    reference_report,
    write_reference,
)
from pipeline.reproduce.summary import markdown_summary, plot_curves
from pipeline.tracking.cli import configure_logging

log = logging.getLogger(__name__)

DESCRIPTION = "Prove that the pipeline reproduces: run it from clean and compare outputs and metrics."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--repo", type=Path, default=Path("."), help="git repo to check (its HEAD)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch clones and print where they are")
    modes = parser.add_subparsers(dest="mode", required=True)
    twice = modes.add_parser("twice", help="run twice from clean; every output hash and metric must be equal")
    twice.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], help="key=value, as dvc")
    twice.add_argument("--profile", choices=OFFLINE_PROFILES, help="on the generated model and corpus, this profile")
    twice.add_argument("--offline", dest="profile", action="store_const", const="offline", help="= --profile offline")
    lock = modes.add_parser("lock", help="rerun from clean and compare with the committed dvc.lock and metrics")
    lock.add_argument("--tolerance", type=float, default=0.0, help="absolute tolerance on metrics (default 0)")
    reference = modes.add_parser("reference", help="run a profile once; its metrics against reference/<profile>_*")
    reference.add_argument("--profile", choices=OFFLINE_PROFILES, default="ci")
    reference.add_argument("--tolerance", type=float, help="relative, on floats (default: the file's)")
    reference.add_argument("--update", action="store_true", help="rewrite the reference file with this run's")
    compare = modes.add_parser("compare", help="run a profile on a base revision and on HEAD; Markdown + plot")
    compare.add_argument("--base", required=True, help="git revision to compare with (e.g. origin/main)")
    compare.add_argument("--profile", choices=OFFLINE_PROFILES, default="ci")
    compare.add_argument("--summary", type=Path, help="append the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    compare.add_argument("--plots", type=Path, help="write the curves of both runs (PNG and CSV) to this folder")
    compare.add_argument("--artifact", help="the name the plots folder is uploaded as, to name it in the summary")
    return parser.parse_args(argv)


def check_reference(args: argparse.Namespace, repo: Path, scratch: Path) -> tuple[str, bool]:
    """One fresh run of the profile; its metrics within tolerance of the committed file (or written to it)."""
    path = repo / reference_path(args.profile)
    stored, stored_tolerance = read_reference(path) if path.is_file() else ({}, DEFAULT_TOLERANCE)
    tolerance = stored_tolerance if args.tolerance is None else args.tolerance
    workdir = fresh_clone(repo, scratch / "fresh")
    run_pipeline(workdir, [], args.profile)
    metrics = read_metrics(workdir)
    if args.update:
        write_reference(path, args.profile, metrics, tolerance)
        return f"wrote {len(metrics)} metrics of the {args.profile} profile to {path} (tolerance {tolerance:g})", True
    if not stored:
        return (
            f"no {path}: write it with `python -m pipeline.reproduce reference --profile {args.profile} --update`",
            False,
        )
    rows = compare_with_reference(stored, metrics, tolerance)
    return reference_report(rows, tolerance), all(ok for *_, ok in rows)


def compare_base(args: argparse.Namespace, repo: Path, scratch: Path) -> tuple[str, bool]:
    """Informative, not a gate: only HEAD failing to run is a failure."""
    base, head = compare_revisions(repo, scratch, args.base, args.profile)
    text = markdown_summary(base, head, args.profile, args.artifact if args.plots else None)
    if args.plots:
        plot_curves([base, head], args.plots)
    if args.summary:
        with args.summary.open("a", encoding="utf-8") as file:
            file.write(text)
    return text, head.problem is None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging()
    repo = args.repo.resolve()
    if subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout.strip():
        log.warning("%s has uncommitted changes: the check runs HEAD without them", repo)
    scratch = Path(tempfile.mkdtemp(prefix="reproduce-"))
    try:
        if args.mode == "twice":
            text, ok = check_twice(repo, scratch, args.overrides, args.profile)
        elif args.mode == "lock":
            text, ok = check_lock(repo, scratch, args.tolerance)
        elif args.mode == "reference":
            text, ok = check_reference(args, repo, scratch)
        else:
            text, ok = compare_base(args, repo, scratch)
    finally:
        if args.keep:
            log.info("scratch clones kept in %s", scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(text)
    if args.mode != "compare":
        print("REPRODUCED" if ok else "NOT REPRODUCED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
