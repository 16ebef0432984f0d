"""The study report: rows from experiments' metrics, Pareto fronts, CSV, Markdown and the plot."""

from __future__ import annotations

import csv
import io

import pytest

from pipeline.study.report import COLUMNS, describe_method, mark_front, rows, to_csv, to_markdown, write_report
from pipeline.study.results import StudyPoint


def scores(loss: float, perplexity: float, accuracy: float) -> dict[str, float]:
    return {"perplexity": perplexity, "accuracy": accuracy, "loss": loss}


def point(name: str, blocks: int, head: str, trainable: int, perplexity: float, train_s: float | None) -> StudyPoint:
    split = {"validation": scores(2.0, perplexity, 0.4), "test": scores(2.1, perplexity + 1, 0.39)}
    base = {"validation": scores(2.5, 12.0, 0.3), "test": scores(2.6, 13.0, 0.29)}
    return StudyPoint(
        experiment=name,
        rev=name * 2,
        params={"freeze": {"trainable_blocks": blocks, "head": head, "train_ln_f": False}},
        train={"parameters": {"trainable": trainable, "total": 1000}},
        evaluation={"finetuned": split, "base": base},
        timing={} if train_s is None else {"train_s": train_s, "tokens_per_s": 100.0, "peak_memory_gib": 1.5},
    )


POINTS = [
    point("one-frozen", 1, "frozen", 100, 9.0, 10.0),
    point("two-frozen", 2, "frozen", 200, 8.0, 30.0),
    point("one-untied", 1, "untied", 300, 8.5, 20.0),  # costs more parameters than two-frozen and scores worse
    point("untimed", 2, "untied", 400, 7.0, None),
]


def test_rows_carry_counts_scores_and_timings_sorted_by_trainable_parameters():
    table = rows(POINTS)
    assert [row["experiment"] for row in table] == ["one-frozen", "two-frozen", "one-untied", "untimed"]
    first = table[0]
    assert first["method"] == "freeze: last 1 block, head frozen"
    assert first["trainable_percent"] == 10.0
    assert first["validation_perplexity"] == 9 and first["test_perplexity"] == 10
    assert first["base_validation_perplexity"] == 12
    assert (first["train_s"], first["tokens_per_s"], first["peak_memory_gib"]) == (10.0, 100.0, 1.5)
    assert table[3]["train_s"] is None


def test_pareto_fronts_keep_only_points_no_other_beats():
    by_name = {row["experiment"]: row for row in rows(POINTS)}
    # against trainable parameters: one-untied is beaten by two-frozen (fewer parameters, lower perplexity)
    assert {name for name, row in by_name.items() if row["pareto_params"]} == {"one-frozen", "two-frozen", "untimed"}
    # against train time: one-untied (20 s, 8.5) is beaten by nobody; the untimed point is on no time front
    assert {name for name, row in by_name.items() if row["pareto_time"]} == {"one-frozen", "two-frozen", "one-untied"}


def test_a_tie_on_both_axes_leaves_both_points_on_the_front():
    table = [{"cost": 1, "validation_perplexity": 5.0}, {"cost": 1, "validation_perplexity": 5.0}]
    mark_front(table, "cost", "front")
    assert [row["front"] for row in table] == [True, True]


def test_csv_has_every_column_and_one_line_per_point():
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows(POINTS)))))
    assert len(parsed) == len(POINTS)
    assert tuple(parsed[0]) == COLUMNS
    assert parsed[0]["validation_perplexity"] == "9.0"


def test_markdown_table_has_a_row_per_point_and_marks_the_front():
    lines = to_markdown(rows(POINTS), "Study t").splitlines()
    table_rows = [line for line in lines if "| freeze" in line]
    assert len(table_rows) == len(POINTS)
    assert "★" in table_rows[0] and "—" in table_rows[3]  # on a front; no timing recorded


@pytest.mark.parametrize(
    ("freeze", "name"),
    [
        ({"trainable_blocks": 2, "head": "untied", "train_ln_f": True}, "freeze: last 2 blocks, head untied, ln_f"),
        ({"trainable_blocks": 0, "head": "tied", "train_ln_f": False}, "freeze: last 0 blocks, head tied"),
    ],
)
def test_describe_method(freeze, name):
    assert describe_method({"freeze": freeze}) == name


def test_describe_method_names_lora_and_full_without_the_freeze_section_they_do_not_read():
    freeze = {"trainable_blocks": 1, "head": "tied", "train_ln_f": False}
    lora = {"rank": 12, "target_modules": ["attn.c_attn", "mlp.c_fc"], "adapted_blocks": None}
    assert describe_method({"finetune": {"method": "lora"}, "lora": lora, "freeze": freeze}) == (
        "lora: rank 12, 2 matrices, every block"
    )
    last_two = {"finetune": {"method": "lora"}, "lora": lora | {"adapted_blocks": 2}, "freeze": freeze}
    assert describe_method(last_two) == "lora: rank 12, 2 matrices, last 2 blocks"
    assert describe_method({"finetune": {"method": "full"}, "freeze": freeze}) == "full: every parameter"


def test_write_report_writes_a_png_and_the_same_table_twice_gives_the_same_bytes(tmp_path):
    paths = write_report(rows(POINTS), tmp_path / "a", "Study t")
    again = write_report(rows(POINTS), tmp_path / "b", "Study t")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(paths[kind].read_bytes() == again[kind].read_bytes() for kind in paths)
