"""`python -m pipeline.offline [--profile NAME] [--run]`: write the offline corpus, the profile's tiny model and lm-eval
tasks, version them with `dvc add`, then (with --run) run the pipeline on them with `dvc exp run`, applying
profiles/NAME.yaml (offline: a tiny GPT-2; offline-llama: a tiny Llama) as `-S` overrides."""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from pipeline.offline.corpus import write_corpus
from pipeline.offline.profile import load_profile
from pipeline.offline.tasks import write_tasks
from pipeline.offline.tiny_model import family_of_folder, write_tiny_model
from pipeline.tracking.cli import configure_logging, exit_on_user_error

log = logging.getLogger(__name__)


def dvc_add(root: Path, folders: list[Path]) -> list[str]:
    """`dvc add` the folders (their data goes to DVC's cache, a .dvc file beside each); returns the .dvc paths.

    Generated again with the same seed, they hash the same, so the committed .dvc files stay unchanged."""
    subprocess.run([sys.executable, "-m", "dvc", "add", "--quiet", *map(str, folders)], cwd=root, check=True)
    return [f"{folder}.dvc" for folder in folders]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root, where dvc.yaml and local/ are")
    parser.add_argument("--run", action="store_true", help="then run the pipeline on them with `dvc exp run`")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, tokenizer and model")
    parser.add_argument("--profile", default="offline", help="profiles/<name>.yaml: its model folder and overrides")
    args = parser.parse_args(argv)
    configure_logging()
    with exit_on_user_error():
        profile = load_profile(args.root, args.profile)
        family = family_of_folder(profile.model_dir)
    corpus = write_corpus(args.root / profile.corpus_dir, args.seed)
    for split, path in corpus.items():
        log.info("%s: %s words in %s", split, f"{len(path.read_text(encoding='utf-8').split()):,}", path)
    write_tiny_model(args.root / profile.model_dir, [corpus["train"]], args.seed, family=family)
    write_tasks(args.root / profile.task_dir, corpus["test"], args.seed, data_dir=profile.task_dir.as_posix())
    dvc_files = dvc_add(args.root, [profile.corpus_dir, profile.model_dir, profile.task_dir])
    command = ["dvc", "exp", "run", *profile.set_param_args()]
    print(
        f"Offline corpus in {args.root / profile.corpus_dir}, tiny {family} in {args.root / profile.model_dir}, "
        f"lm-eval tasks in {args.root / profile.task_dir}."
    )
    print(f"Versioned by DVC; commit their .dvc files (queued experiments need them):\n  git add {' '.join(dvc_files)}")
    print(f"Run the pipeline on them (from {args.root}):\n  {shlex.join(command)}")
    if args.run:
        sys.exit(subprocess.run(command, cwd=args.root, check=False).returncode)


if __name__ == "__main__":
    main()
