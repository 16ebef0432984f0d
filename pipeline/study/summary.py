"""From points to answers: points that differ only in seed and learning rate are one configuration; each
configuration is reported at the learning rate with the lowest mean validation loss over its seeds.

Validation, never test: choosing on test scores would make the reported test numbers optimistic. A learning rate
with a diverged seed is not a candidate (it is unstable), nor one with no finished seed. Spread is the sample
standard deviation over seeds, so a gap between two configurations can be set against it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.params import Params
from pipeline.study.results import Outcome

TUNED = ("train.learning_rate", "train.seed")
"""Params that do not make another configuration: the one tuned per configuration, and the seed repeated."""
RETENTION_MEAN = "retention_mean"
"""The mean over retention tasks of fine-tuned minus base accuracy (metrics/harness.json): what a point kept."""


def configuration_key(params: Params) -> str:
    return json.dumps({key: value for key, value in params.flat().items() if key not in TUNED}, sort_keys=True)


def describe(params: Params) -> str:
    """The configuration in words: `1 block, head frozen`, `2 blocks, head untied, ln_f`, `head tied only`,
    `LoRA r12`, `LoRA r8, last 2 blocks, attn.c_attn+mlp.c_fc`, `full`."""
    method = params.finetune.method
    if method == "full":
        return "full"
    if method == "lora":
        lora = params.lora
        parts = [f"LoRA r{lora.rank}"]
        if lora.adapted_blocks is not None:
            parts.append(f"last {lora.adapted_blocks} block{'s' if lora.adapted_blocks != 1 else ''}")
        if sorted(lora.target_modules) != sorted(type(lora)().target_modules):  # fewer than the default's four
            parts.append("+".join(lora.target_modules))
        return ", ".join(parts)
    freeze = params.freeze
    blocks = freeze.trainable_blocks
    parts = [f"head {freeze.head} only"] if blocks == 0 else [f"{blocks} block{'s' if blocks != 1 else ''}",
                                                               f"head {freeze.head}"]  # fmt: skip
    if freeze.train_ln_f:
        parts.append("ln_f")
    return ", ".join(parts)


def labels(params_by_key: dict[str, Params]) -> dict[str, str]:
    """A label per configuration; configurations that read alike get the params that tell them apart appended."""
    described = {key: describe(params) for key, params in params_by_key.items()}
    result = dict(described)
    for text in set(described.values()):
        alike = [key for key, value in described.items() if value == text]
        if len(alike) < 2:
            continue
        flats = {key: json.loads(key) for key in alike}
        differing = sorted({name for flat in flats.values() for name in flat
                            if len({json.dumps(other.get(name)) for other in flats.values()}) > 1})  # fmt: skip
        for key in alike:
            result[key] = text + "".join(f", {name}={flats[key].get(name)}" for name in differing)
    return result


@dataclass(frozen=True)
class Setting:
    """One configuration at one learning rate: its points, one per seed."""

    learning_rate: float
    outcomes: tuple[Outcome, ...]

    @property
    def finished(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "finished"]

    @property
    def candidate(self) -> bool:
        return bool(self.finished) and not any(outcome.status == "diverged" for outcome in self.outcomes)

    def mean(self, score: str) -> float | None:
        values = [value for value in self.values(score) if value is not None]
        return statistics.fmean(values) if values else None

    def spread(self, score: str) -> float | None:
        values = [value for value in self.values(score) if value is not None]
        return statistics.stdev(values) if len(values) > 1 else None

    def values(self, score: str) -> list[float | None]:
        return [scores(outcome).get(score) for outcome in self.finished]


@dataclass(frozen=True)
class Configuration:
    key: str
    label: str
    method: str
    settings: tuple[Setting, ...]
    """One per learning rate, lowest first."""

    @property
    def picked(self) -> Setting | None:
        """The learning rate with the lowest mean validation loss among the candidates; None if none is."""
        candidates = [setting for setting in self.settings if setting.candidate]
        return min(candidates, key=lambda setting: setting.mean("validation_loss")) if candidates else None

    @property
    def at_edge(self) -> str | None:
        """`lowest` or `highest` when the pick is an end of several candidates: the best may lie beyond."""
        picked = self.picked
        if picked is None or len(self.settings) < 2:
            return None
        rates = [setting.learning_rate for setting in self.settings]
        ends = {min(rates): "lowest", max(rates): "highest"}
        return ends.get(picked.learning_rate)


def configurations(results: Sequence[Outcome]) -> list[Configuration]:
    """The study's configurations, in the order their first point appears in the grid."""
    grouped: dict[str, dict[float, list[Outcome]]] = {}
    params_by_key: dict[str, Params] = {}
    for outcome in results:
        key = configuration_key(outcome.point.params)
        params_by_key.setdefault(key, outcome.point.params)
        grouped.setdefault(key, {}).setdefault(outcome.point.params.train.learning_rate, []).append(outcome)
    names = labels(params_by_key)
    return [
        Configuration(key, names[key], params_by_key[key].finetune.method,
                      tuple(Setting(rate, tuple(points)) for rate, points in sorted(by_rate.items())))
        for key, by_rate in grouped.items()
    ]  # fmt: skip


def scores(outcome: Outcome) -> dict[str, Any]:
    """A point's numbers by report column: counts, timings, and base and fine-tuned scores per split."""
    if outcome.train is None or outcome.evaluation is None:
        return {}
    counts = outcome.train["parameters"]
    row: dict[str, Any] = {"trainable_params": counts["trainable"],
                           "trainable_percent": round(100.0 * counts["trainable"] / counts["total"], 3)}  # fmt: skip
    row |= {key: outcome.timing.get(key) for key in ("train_s", "tokens_per_s", "peak_memory_gib")}
    for model, prefix in (("base", "base_"), ("finetuned", "")):
        for split in ("validation", "test"):
            split_scores = outcome.evaluation[model][split]
            row |= {f"{prefix}{split}_{name}": split_scores[name] for name in ("loss", "perplexity", "accuracy")}
    if outcome.harness is not None:  # points run before the harness stages existed have none
        row |= {f"retention.{task}": value for task, value in (outcome.harness.get("retention") or {}).items()}
        row[RETENTION_MEAN] = outcome.harness.get(RETENTION_MEAN)
    return row


def retention_columns(results: Sequence[Outcome]) -> tuple[str, ...]:
    """`retention.<task>` for each retention task a point reports, in the order first met, then `retention_mean`."""
    tasks = dict.fromkeys(task for outcome in results if outcome.harness is not None
                          for task in outcome.harness.get("retention") or {})  # fmt: skip
    return (*(f"retention.{task}" for task in tasks), RETENTION_MEAN)


def mark_front(table: list[dict[str, Any]], cost: str, column: str, quality: str = "validation_perplexity",
               higher_is_better: Sequence[str] = ()) -> None:  # fmt: skip
    """Mark each row that no other row beats: none has a lower-or-equal cost and `quality` with one of them lower
    (higher, for the keys in `higher_is_better`, such as retention). Rows without a finite cost or quality (no
    timing recorded, a diverged score, no harness scores) are on no front and beat none."""

    def known(row: dict[str, Any]) -> bool:
        return all(isinstance(row.get(key), int | float) and math.isfinite(row[key]) for key in (cost, quality))

    def beats(other: dict[str, Any], row: dict[str, Any]) -> bool:
        signs = {key: -1 if key in higher_is_better else 1 for key in (cost, quality)}
        pairs = [(signs[key] * other[key], signs[key] * row[key]) for key in (cost, quality)]
        return all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)

    candidates = [row for row in table if known(row)]
    for row in table:
        row[column] = known(row) and not any(beats(other, row) for other in candidates)
