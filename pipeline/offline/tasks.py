"""The offline profile's lm-evaluation-harness tasks: task YAMLs over local JSON Lines files, all generated here.

Three tasks, one per kind of request the default tasks make, so the harness stages run lm-eval's real code paths
with no hub access:

- `offline_wikitext` (loglikelihood_rolling, as lm-eval's `wikitext`): the offline test split's articles, one
  document per article, scored for word perplexity, byte perplexity and bits per byte;
- `offline_choice` (multiple_choice, as ARC-Easy or PIQA): an article's opening sentences, then its next sentence
  among three sentences of other articles;
- `offline_last_word` (loglikelihood, as LAMBADA): a paragraph's last word, given everything before it.

The choice and last-word texts come from the grammar with a seed of their own, so no task copies the corpus's
train text. They are from the same grammar as the target corpus, so on the tiny model they exercise the retention
path rather than measure forgetting (docs/evaluation.md). Data paths in the YAMLs are relative to the repo root,
where the stages run, so the files hash the same in every clone.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from pipeline.data.files import atomic_dir
from pipeline.offline import synthetic_text

CHOICES = 4
"""Answer and distractors per multiple-choice question, as ARC's four options."""
ROLLING_METRICS = {
    "word_perplexity": "weighted_perplexity",
    "byte_perplexity": "weighted_perplexity",
    "bits_per_byte": "bits_per_byte",
}
"""lm-eval's `wikitext` metrics and their corpus-level aggregations (totals over pages, not means of pages)."""
EXAMPLES = 200
"""Questions per retention task: more than the offline profile's `harness.limit`, so the limit is what binds."""


def split_pages(text: str) -> list[str]:
    """Wikitext-raw text cut into articles at each ` = Title = ` line (a section heading has `= =`), as
    EleutherAI/wikitext_document_level's `page` field holds one article each; no empty lines around a page."""
    pages: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith(" = ") and not line.startswith(" = = "):
            pages.append([])
        if pages:
            pages[-1].append(line)
    return ["\n".join(lines).strip("\n") for lines in pages]  # lm-eval's Jinja drops a trailing newline anyway


def articles(rng: random.Random, count: int) -> list[list[list[str]]]:
    """`count` generated articles, each as its paragraphs, each as its sentences (ending in ` .`); headings and
    empty lines dropped."""
    taken: set[str] = set()
    found = []
    for _ in range(count):
        lines = synthetic_text.article_lines(rng, taken)
        texts = [line.strip() for line in lines if line.strip() and not line.startswith(" =")]
        found.append([[part.removesuffix(" .") + " ." for part in text.split(" . ")] for text in texts])
    return found


def choice_questions(rng: random.Random, count: int) -> list[dict]:
    """An article's first sentences as context; its next sentence is the answer, three from other articles not."""
    texts = [[sentence for paragraph in article for sentence in paragraph] for article in articles(rng, count * 2)]
    texts = [sentences for sentences in texts if len(sentences) >= 3]
    questions = []
    for sentences in texts[:count]:
        cut = rng.randint(2, min(4, len(sentences) - 1))  # a few sentences: contexts well within 256 positions
        options: list[str] = []
        while len(options) < CHOICES - 1:  # distractors: sentences of other articles, never this one's own
            sentence = rng.choice(rng.choice(texts))
            if sentence not in sentences and sentence not in options:
                options.append(sentence)
        answer = rng.randrange(CHOICES)
        options.insert(answer, sentences[cut])
        choices = [" " + option for option in options]
        questions.append({"context": " ".join(sentences[:cut]), "choices": choices, "answer": answer})
    return questions


def last_word_questions(rng: random.Random, count: int) -> list[dict]:
    """A paragraph up to its last word (a word, not a number or a symbol) and that word as the target."""
    questions = []
    while len(questions) < count:
        for paragraph in (p for article in articles(rng, count) for p in article if len(p) >= 2):
            words = " ".join(paragraph).removesuffix(" .").split(" ")
            if words[-1].isalpha():
                questions.append({"context": " ".join(words[:-1]), "target": " " + words[-1]})
    return questions[:count]


def task_configs(data_dir: str) -> dict[str, dict]:
    """lm-eval task YAMLs (as dicts) over the JSON Lines files in `data_dir`, a path relative to the repo root."""

    def local(task: str, file: str, output_type: str, metrics: list[dict], **fields: object) -> dict:
        return {
            "task": task,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": f"{data_dir}/{file}"}},
            "output_type": output_type,
            "test_split": "test",
            **fields,
            "metric_list": metrics,
            "metadata": {"version": 1.0},
        }

    accuracy = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
    return {
        "offline_wikitext": local(
            "offline_wikitext", "wikitext.jsonl", "loglikelihood_rolling",
            [{"metric": m, "aggregation": a, "higher_is_better": False} for m, a in ROLLING_METRICS.items()],
            doc_to_text="", doc_to_target="{{page}}",
        ),
        "offline_choice": local(
            "offline_choice", "choice.jsonl", "multiple_choice",
            [accuracy, {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
            doc_to_text="{{context}}", doc_to_target="answer", doc_to_choice="choices",
        ),
        "offline_last_word": local(
            "offline_last_word", "last_word.jsonl", "loglikelihood",
            [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}, accuracy],
            doc_to_text="{{context}}", doc_to_target="{{target}}",
        ),
    }  # fmt: skip


def write_tasks(out_dir: Path, test_file: Path, seed: int = 0, data_dir: str | None = None) -> Path:
    """Write the three tasks' YAMLs and data into `out_dir`. The YAMLs name the data files in `data_dir`: out_dir as
    the stages will see it (relative to the repo root, where they run); by default `out_dir` as given."""
    rng = random.Random(f"harness-tasks:{seed}")  # a stream apart from the corpus's and the pretraining text's
    rows = {
        "wikitext.jsonl": [{"page": page} for page in split_pages(test_file.read_text(encoding="utf-8"))],
        "choice.jsonl": choice_questions(rng, EXAMPLES),
        "last_word.jsonl": last_word_questions(rng, EXAMPLES),
    }
    with atomic_dir(out_dir) as staging:
        for name, records in rows.items():
            lines = [json.dumps(record, ensure_ascii=False, sort_keys=True) for record in records]
            (staging / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        for task, config in task_configs(data_dir or out_dir.as_posix()).items():
            (staging / f"{task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return out_dir
