"""`python -m pipeline.offline [--run]`: write the offline corpus and tiny GPT-2, then (with --run) run the pipeline
on them with `dvc exp run`, applying profiles/offline.yaml as `-S` overrides."""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from pipeline.offline.corpus import write_corpus
from pipeline.offline.profile import load_profile
from pipeline.offline.tiny_model import write_tiny_model
from pipeline.tracking.cli import configure_logging

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root, where dvc.yaml and local/ are")
    parser.add_argument("--run", action="store_true", help="then run the pipeline on them with `dvc exp run`")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, tokenizer and model")
    args = parser.parse_args(argv)
    configure_logging()
    profile = load_profile(args.root)
    corpus = write_corpus(args.root / profile.corpus_dir, args.seed)
    for split, path in corpus.items():
        log.info("%s: %s words in %s", split, f"{len(path.read_text(encoding='utf-8').split()):,}", path)
    write_tiny_model(args.root / profile.model_dir, [corpus["train"]], args.seed)
    command = ["dvc", "exp", "run", *profile.set_param_args()]
    print(f"Offline corpus in {args.root / profile.corpus_dir}, tiny GPT-2 in {args.root / profile.model_dir}.")
    print(f"Run the pipeline on them (from {args.root}):\n  {shlex.join(command)}")
    if args.run:
        sys.exit(subprocess.run(command, cwd=args.root, check=False).returncode)


if __name__ == "__main__":
    main()
