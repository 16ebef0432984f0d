"""`python -m pipeline.reproduce twice|lock`: see the package docstring."""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.offline.profile import OFFLINE_PROFILES
from pipeline.reproduce.checks import check_lock, check_twice
from pipeline.tracking.cli import configure_logging

log = logging.getLogger(__name__)

DESCRIPTION = "Prove that the pipeline reproduces: run it from clean and compare outputs and metrics."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--repo", type=Path, default=Path("."), help="git repo to check (its HEAD)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch clones and print where they are")
    modes = parser.add_subparsers(dest="mode", required=True)
    twice = modes.add_parser("twice", help="run twice from clean and compare")
    twice.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], help="key=value, as dvc")
    twice.add_argument("--profile", choices=OFFLINE_PROFILES, help="on the generated model and corpus, this profile")
    twice.add_argument("--offline", dest="profile", action="store_const", const="offline", help="= --profile offline")
    lock = modes.add_parser("lock", help="rerun from clean and compare with the committed dvc.lock and metrics")
    lock.add_argument("--tolerance", type=float, default=0.0, help="absolute tolerance on metrics (default 0)")
    args = parser.parse_args(argv)
    configure_logging()
    repo = args.repo.resolve()
    if subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout.strip():
        log.warning("%s has uncommitted changes: the check runs HEAD without them", repo)
    scratch = Path(tempfile.mkdtemp(prefix="reproduce-"))
    try:
        if args.mode == "twice":
            text, ok = check_twice(repo, scratch, args.overrides, args.profile)
        else:
            text, ok = check_lock(repo, scratch, args.tolerance)
    finally:
        if args.keep:
            log.info("scratch clones kept in %s", scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(text)
    print("REPRODUCED" if ok else "NOT REPRODUCED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
