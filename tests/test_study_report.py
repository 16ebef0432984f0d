"""The study report: configurations and their labels, each at the learning rate its validation loss picks, mean and
spread over seeds, every point accounted for (finished, failed, diverged), Pareto fronts on the means, CSV, Markdown
and the plot."""

from __future__ import annotations

import csv
import io
import math

import pytest

from pipeline.study.plan import Point
from pipeline.study.report import POINT_COLUMNS, point_rows, summary_rows, to_markdown, write_report
from pipeline.study.results import Outcome
from pipeline.study.summary import configurations, describe, mark_front

FROZEN_1 = {"freeze.trainable_blocks": 1, "freeze.head": "frozen"}
FROZEN_2 = {"freeze.trainable_blocks": 2, "freeze.head": "frozen"}
LORA_12 = {"finetune.method": "lora", "lora.rank": 12}


@pytest.fixture
def outcome(make_params):
    """`outcome(config, lr, seed, val_loss, ...)`: a point of that configuration and what became of it."""
    made = {}

    def make(config, learning_rate, seed, validation_loss=None, *, test_loss=None, trainable=100, train_s=10.0,
             status=None, reason=None, retention=None):  # fmt: skip
        overrides = config | {"train.learning_rate": learning_rate, "train.seed": seed}
        name = f"p{len(made)}"
        made[name] = make_params(overrides, name=f"{name}.yaml")
        point = Point(name, (), tuple(f"{key}={value}" for key, value in overrides.items()), made[name])
        if validation_loss is None:
            return Outcome(point, status or "failed", reason)
        test_loss = validation_loss + 0.1 if test_loss is None else test_loss
        finetuned = {split: {"loss": loss, "perplexity": math.exp(loss), "accuracy": 0.4}
                     for split, loss in (("validation", validation_loss), ("test", test_loss))}  # fmt: skip
        base = {split: {"loss": 2.5, "perplexity": math.exp(2.5), "accuracy": 0.3} for split in ("validation", "test")}
        counts = {"parameters": {"trainable": trainable, "total": 1000}}
        # metrics/harness.json's retention part: fine-tuned minus base accuracy per retention task, and their mean
        harness = (
            None
            if retention is None
            else {"retention": retention, "retention_mean": sum(retention.values()) / len(retention)}
        )
        return Outcome(point, status or "finished", reason, train=counts, evaluation={"finetuned": finetuned,
                       "base": base}, timing={"train_s": train_s}, harness=harness)  # fmt: skip

    return make


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        (FROZEN_1, "1 block, head frozen"),
        ({"freeze.trainable_blocks": 2, "freeze.head": "untied", "freeze.train_ln_f": True},
         "2 blocks, head untied, ln_f"),
        ({"freeze.trainable_blocks": 0, "freeze.head": "tied"}, "head tied only"),
        (LORA_12, "LoRA r12"),
        (LORA_12 | {"lora.adapted_blocks": 2, "lora.target_modules": ["attn_qkv", "mlp_in"]},
         "LoRA r12, last 2 blocks, attn_qkv+mlp_in"),
        ({"finetune.method": "full"}, "full"),
    ],
)  # fmt: skip
def test_labels_read_as_the_configuration(make_params, overrides, label):
    assert describe(make_params(overrides)) == label


def test_configurations_that_read_alike_are_told_apart_by_the_params_that_differ(outcome):
    results = [outcome(FROZEN_1, 5e-3, 42, 2.0), outcome(FROZEN_1 | {"train.epochs": 2.0}, 5e-3, 42, 2.0)]
    labels = [config.label for config in configurations(results)]
    assert labels == ["1 block, head frozen, train.epochs=1.0", "1 block, head frozen, train.epochs=2.0"]


def test_each_configuration_is_reported_at_the_learning_rate_with_the_lowest_mean_validation_loss(outcome):
    results = [
        # freeze: 1e-2 is better on validation (mean 2.05 against 2.10) but worse on test: validation decides
        outcome(FROZEN_1, 5e-3, 42, 2.10, test_loss=1.0), outcome(FROZEN_1, 5e-3, 43, 2.10, test_loss=1.0),
        outcome(FROZEN_1, 1e-2, 42, 2.00, test_loss=3.0), outcome(FROZEN_1, 1e-2, 43, 2.10, test_loss=3.0),
        # LoRA: its own candidates; 2e-2 has the lowest single loss, but one of its seeds diverged
        outcome(LORA_12, 1e-2, 42, 2.20, trainable=98), outcome(LORA_12, 1e-2, 43, 2.30, trainable=98),
        outcome(LORA_12, 2e-2, 42, 1.50, trainable=98), outcome(LORA_12, 2e-2, 43, None, status="diverged",
                                                                 reason="train: training diverged: the loss was nan"),
    ]  # fmt: skip
    freeze, lora = configurations(results)
    assert (freeze.label, [s.learning_rate for s in freeze.settings], freeze.picked.learning_rate) == (
        "1 block, head frozen", [5e-3, 1e-2], 1e-2)  # fmt: skip
    assert lora.picked.learning_rate == 1e-2 and lora.at_edge == "lowest" and freeze.at_edge == "highest"
    by_label = {row["configuration"]: row for row in summary_rows(configurations(results))}
    assert by_label["1 block, head frozen"]["validation_loss_mean"] == pytest.approx(2.05)
    assert by_label["1 block, head frozen"]["validation_loss_std"] == pytest.approx(0.0707107)  # sample sd of 2.0, 2.1
    assert by_label["LoRA r12"]["learning_rates"] == "0.01 0.02" and by_label["LoRA r12"]["seeds_finished"] == 2
    picked = {row["experiment"] for row in point_rows(results, configurations(results)) if row["picked"]}
    assert picked == {"p2", "p3", "p4", "p5"}


def test_a_failed_and_a_diverged_point_are_shown_as_such_and_never_on_a_front_or_best(outcome):
    results = [
        outcome(FROZEN_1, 5e-3, 42, 2.0, trainable=100),
        outcome(FROZEN_2, 5e-3, 42, float("nan"), trainable=200, status="diverged", reason="not a number: loss nan"),
        outcome(LORA_12, 1e-2, 42, None, reason="train: RuntimeError: out of memory"),
    ]
    configs = configurations(results)
    summary = summary_rows(configs)
    assert [config.picked is not None for config in configs] == [True, False, False]
    fronts = {row["configuration"]: (row["pareto_params"], row["pareto_time"]) for row in summary}
    assert fronts == {"1 block, head frozen": (True, True), "2 blocks, head frozen": (False, False),
                      "LoRA r12": (False, False)}  # fmt: skip
    markdown = to_markdown("Study t", point_rows(results, configs), summary, configs)
    assert markdown.startswith("# Study t: 1 of 3 points finished")
    not_finished = markdown.split("## Points not finished")[1]
    assert "| p1 | 2 blocks, head frozen | 0.005 | 42 | diverged | not a number: loss nan |" in not_finished
    assert "| p2 | LoRA r12 | 0.01 | 42 | failed | train: RuntimeError: out of memory |" in not_finished
    assert "0.01 (none finished)" in markdown


def test_a_nan_score_beats_no_point_and_sits_on_no_front():
    table = [{"cost": 1, "quality": float("nan")}, {"cost": 2, "quality": 5.0}, {"cost": 3, "quality": 6.0}]
    mark_front(table, "cost", "front", quality="quality")
    assert [row["front"] for row in table] == [False, True, False]


def test_a_tie_on_both_axes_leaves_both_points_on_the_front():
    table = [{"cost": 1, "quality": 5.0}, {"cost": 1, "quality": 5.0}]
    mark_front(table, "cost", "front", quality="quality")
    assert [row["front"] for row in table] == [True, True]


def test_markdown_gives_mean_and_spread_and_the_csv_every_point_with_its_experiment_name(outcome):
    results = [outcome(FROZEN_1, 5e-3, seed, loss) for seed, loss in ((42, 2.0), (43, 2.2), (44, 2.1))]
    configs = configurations(results)
    points, summary = point_rows(results, configs), summary_rows(configs)
    markdown = to_markdown("Study t", points, summary, configs)
    assert "| 1 block, head frozen | 100 | 10 | **0.005** | 3/3 | 2.100 ± 0.100 | 8.19 ± 0.82 |" in markdown
    parsed = list(csv.DictReader(io.StringIO(write_report_csv(points))))
    assert [(row["experiment"], row["seed"], row["status"]) for row in parsed] == [
        ("p0", "42", "finished"), ("p1", "43", "finished"), ("p2", "44", "finished")]  # fmt: skip


def write_report_csv(points):
    from pipeline.study.report import to_csv

    return to_csv(points, POINT_COLUMNS)


def test_write_report_writes_a_png_and_the_same_results_twice_give_the_same_bytes(outcome, tmp_path):
    results = [outcome(FROZEN_1, 5e-3, 42, 2.0), outcome(FROZEN_1, 5e-3, 43, 2.1),
               outcome(LORA_12, 1e-2, 42, 2.2, trainable=98), outcome(LORA_12, 1e-2, 43, None)]  # fmt: skip
    paths = write_report("Study t", results, configurations(results), tmp_path / "a")
    again = write_report("Study t", results, configurations(results), tmp_path / "b")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(paths[kind].read_bytes() == again[kind].read_bytes() for kind in paths)
    assert paths["summary"].read_text().splitlines()[0].startswith("configuration,method,learning_rate,")


def test_retention_per_task_and_its_mean_are_columns_of_each_point_and_mean_and_sd_over_seeds_per_configuration(
    outcome, tmp_path
):
    results = [outcome(FROZEN_1, 5e-3, 42, 2.0, retention={"choice": -0.05, "last_word": -0.10}),
               outcome(FROZEN_1, 5e-3, 43, 2.1, retention={"choice": -0.15, "last_word": 0.04}),
               outcome(FROZEN_1, 5e-3, 44, None, reason="harness: failed")]  # fmt: skip
    paths = write_report("Study t", results, configurations(results), tmp_path)
    points = list(csv.DictReader(io.StringIO(paths["points"].read_text())))
    columns = ("retention.choice", "retention.last_word", "retention_mean")
    assert [[float(row[key]) for key in columns] for row in points[:2]] == [
        pytest.approx([-0.05, -0.10, -0.075]), pytest.approx([-0.15, 0.04, -0.055])]  # fmt: skip
    assert [points[2][key] for key in columns] == ["", "", ""]  # the failed point has none
    (summary,) = csv.DictReader(io.StringIO(paths["summary"].read_text()))
    expected = {
        "retention.choice_mean": -0.10,
        "retention.choice_std": 0.0707107,
        "retention.last_word_mean": -0.03,
        "retention_mean_mean": -0.065,
        "retention_mean_std": 0.0141421,
        "retention.last_word_std": 0.0989949,
    }
    assert {key: float(summary[key]) for key in expected} == pytest.approx(expected, abs=1e-6)
    markdown = paths["markdown"].read_text()
    assert "| train s | retention choice | retention last_word | retention mean | front (params) |" in markdown
    assert "| 10.0 ± 0.0 | -0.100 ± 0.071 | -0.030 ± 0.099 | -0.065 ± 0.014 | ★ | ★ | ★ |" in markdown


def test_a_study_without_harness_scores_has_no_retention_in_its_markdown(outcome):
    results = [outcome(FROZEN_1, 5e-3, 42, 2.0), outcome(FROZEN_1, 5e-3, 43, 2.1)]
    configs = configurations(results)
    markdown = to_markdown("Study t", point_rows(results, configs), summary_rows(configs), configs)
    assert "retention" not in markdown and "| front (params) | front (time) |" in markdown


def retention_study(outcome):
    """Four configurations: the lowest perplexity and the highest retention (both on the retention front), one that
    both of those beat, and the lowest perplexity of all with no harness scores (on no retention front)."""
    return [
        outcome(FROZEN_1, 5e-3, 42, 2.0, trainable=100, retention={"choice": -0.10}),
        outcome(FROZEN_2, 5e-3, 42, 2.2, trainable=200, retention={"choice": 0.0}),
        outcome(LORA_12, 1e-2, 42, 2.3, trainable=98, retention={"choice": -0.05}),
        outcome(FROZEN_1 | {"train.epochs": 2.0}, 5e-3, 42, 1.5, trainable=100),
    ]


def test_the_retention_front_takes_lower_perplexity_and_higher_retention_as_better_and_skips_unknown(outcome):
    by_label = {row["configuration"]: row["pareto_retention"] for row in
                summary_rows(configurations(retention_study(outcome)))}  # fmt: skip
    assert by_label == {"1 block, head frozen, train.epochs=1.0": True, "2 blocks, head frozen": True,
                        "LoRA r12": False, "1 block, head frozen, train.epochs=2.0": False}  # fmt: skip


def test_a_nan_retention_is_on_no_front_and_beats_none():
    table = [{"ppl": 5.0, "kept": float("nan")}, {"ppl": 6.0, "kept": -0.1}, {"ppl": 7.0, "kept": -0.2}]
    mark_front(table, "kept", "front", quality="ppl", higher_is_better=("kept",))
    assert [row["front"] for row in table] == [False, True, False]


def test_the_plot_has_a_third_panel_of_perplexity_against_retention_with_its_front(outcome):
    from matplotlib import pyplot

    from pipeline.study.plot import figure

    drawn = figure(summary_rows(configurations(retention_study(outcome))))
    try:
        retention_axis = drawn.axes[2]
        assert "retention" in retention_axis.get_xlabel()
        (front,) = [line for line in retention_axis.lines if line.get_label() == "Pareto front of the means"]
        assert list(front.get_xdata()) == pytest.approx([-0.10, 0.0])
        assert list(front.get_ydata()) == pytest.approx([math.exp(2.0), math.exp(2.2)])
    finally:
        pyplot.close(drawn)
