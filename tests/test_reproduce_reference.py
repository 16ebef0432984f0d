"""The committed reference of a profile's metrics: what counts as within tolerance, and the file's round trip."""

from pathlib import Path

import pytest

from pipeline.reproduce.reference import (
    compare_with_reference,
    example_tolerances,
    read_reference,
    reference_report,
    write_reference,
)


def test_floats_are_compared_relative_to_their_magnitude():
    rows = compare_with_reference(
        {"eval.json:perplexity": 40.0, "eval.json:accuracy": 0.3},
        {"eval.json:perplexity": 40.3, "eval.json:accuracy": 0.303},
        tolerance=0.01,
    )
    assert [ok for *_, ok in rows] == [True, True]  # 0.75% and 0.99%, below 1%
    (row,) = compare_with_reference({"loss": 3.0}, {"loss": 3.04}, tolerance=0.01)
    assert row == ("loss", 3.0, 3.04, False)  # 1.3%


def test_counts_and_text_must_be_equal_whatever_the_tolerance():
    rows = compare_with_reference(
        {"tokenize.json:blocks": 1540, "eval.json:protocol": "sliding"},
        {"tokenize.json:blocks": 1541, "eval.json:protocol": "sliding"},
        tolerance=0.5,
    )
    assert [(key, ok) for key, *_, ok in rows] == [("eval.json:protocol", True), ("tokenize.json:blocks", False)]
    # A number turned bool is a change of meaning, not of last bits.
    assert not compare_with_reference({"x": 1.0}, {"x": True}, 0.1)[0][-1]


def test_a_metric_on_one_side_only_fails_and_the_report_says_outside(tmp_path):
    rows = compare_with_reference({"a": 1.0, "gone": 2.0}, {"a": 1.0, "new": 5}, tolerance=0.1)
    assert [(key, ok) for key, *_, ok in rows] == [("a", True), ("gone", False), ("new", False)]
    report = reference_report(rows, 0.1).splitlines()
    assert report[1].split() == ["a", "1", "1", "0.00e+00", "within"]
    assert report[2].split() == ["gone", "2", "-", "-", "OUTSIDE"]


def test_the_reference_file_round_trips_metrics_and_tolerance(tmp_path):
    path = tmp_path / "reference" / "ci_metrics.json"
    write_reference(path, "ci", {"b": 2.5, "a": 1}, tolerance=0.02)
    assert read_reference(path) == ({"a": 1, "b": 2.5}, 0.02)
    assert "--profile ci --update" in path.read_text()


HARNESS = {
    "harness.json:examples.choice": 40, "harness.json:examples.wiki": 19,
    "harness.json:finetuned.choice.acc": 0.25, "harness.json:difference.choice.acc": 0.0,
    "harness.json:retention.choice": 0.0, "harness.json:retention_mean": 0.0,
    "harness_base.json:examples.choice": 40, "harness_base.json:scores.choice.acc_norm": 0.3,
    "harness.json:finetuned.wiki.word_perplexity": 36.5,
}  # fmt: skip
COUNTED = sorted(key for key, value in HARNESS.items() if isinstance(value, float) and "perplexity" not in key)


def outside(actual: dict[str, object]) -> list[str]:
    return [key for key, *_, ok in compare_with_reference(HARNESS, actual, tolerance=2e-2) if not ok]


def test_lm_eval_accuracies_and_retention_may_move_by_one_example_of_their_task_and_no_more():
    def moved(by: float) -> dict[str, object]:
        return HARNESS | {key: HARNESS[key] + by for key in COUNTED}

    assert outside(moved(1 / 40)) == []  # one answer flipped by another CPU's last bits
    assert outside(moved(-1 / 40)) == []
    assert outside(moved(2 / 40)) == COUNTED
    # A perplexity counts nothing: the relative tolerance alone (2e-2 of 36.5 is 0.73)
    perplexity = "harness.json:finetuned.wiki.word_perplexity"
    assert outside(HARNESS | {perplexity: 37.5}) == [perplexity]


def test_the_committed_ci_reference_allows_one_example_on_every_lm_eval_accuracy():
    metrics, _ = read_reference(Path(__file__).resolve().parents[1] / "reference" / "ci_metrics.json")
    counted = {key for key in metrics if key.endswith((".acc", ".acc_norm", ":retention_mean")) or ":retention." in key}
    assert len(counted) == 15
    assert example_tolerances(metrics) == pytest.approx(dict.fromkeys(counted, 1 / 40))
