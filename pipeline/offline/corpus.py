"""The offline corpus: train, validation and test text in Wikitext-2-raw's shape, from `synthetic_text`."""

from __future__ import annotations

import random
from pathlib import Path

from pipeline.data.files import write_text_atomic
from pipeline.offline import synthetic_text


def write_corpus(
    out_dir: Path, seed: int = 0, *, train_words: int = 70_000, validation_words: int = 7_000, test_words: int = 7_000
) -> dict[str, Path]:
    """Write train.txt, validation.txt and test.txt of generated Wikitext-raw-shaped text; returns split -> path.

    One random stream draws the three splits in turn, and no article title repeats across them, so validation and
    test come from train's distribution without copying any of its articles.
    """
    rng = random.Random(seed)
    taken_titles: set[str] = set()
    paths = {}
    for split, words in (("train", train_words), ("validation", validation_words), ("test", test_words)):
        paths[split] = out_dir / f"{split}.txt"
        write_text_atomic(paths[split], "\n".join(synthetic_text.generate_lines(rng, words, taken_titles)) + "\n")
    return paths
