"""The committed reference of a profile's metrics: what counts as within tolerance, and the file's round trip."""

from pipeline.reproduce.reference import compare_with_reference, read_reference, reference_report, write_reference


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
