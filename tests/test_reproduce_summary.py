"""`reproduce compare`'s Markdown summary and plot, on made-up runs (no pipeline run)."""

from pathlib import Path

from pipeline.reproduce.compare import RevisionRun, flatten_params
from pipeline.reproduce.summary import markdown_summary, metrics_table, params_table, plot_curves


def run(label: str, workdir: Path, metrics=None, params=None, problem=None) -> RevisionRun:
    return RevisionRun(label, "origin/main" if label == "base" else "HEAD", label[:3] + "1234", workdir, problem,
                       metrics or {}, params or {})  # fmt: skip


def test_metrics_table_shows_base_head_and_change():
    table = metrics_table(
        {"eval.json:loss": 4.0, "tokenize.json:blocks": 1540, "old": 1.0},
        {"eval.json:loss": 3.9, "tokenize.json:blocks": 1540, "new": 2.0},
    ).splitlines()
    assert table[:2] == ["| metric | base | head | change |", "|---|---:|---:|---:|"]
    assert table[2:] == [
        "| `eval.json:loss` | 4 | 3.9 | -0.1 (-2.50%) |",
        "| `new` | - | 2 | - |",
        "| `old` | 1 | - | - |",
        "| `tokenize.json:blocks` | 1540 | 1540 | = |",
    ]


def test_params_table_lists_only_what_differs():
    base = flatten_params({"train": {"epochs": 1.0, "bf16": True}, "samples": {"prompts": ["a"]}})
    assert base == {"train.epochs": 1.0, "train.bf16": True, "samples.prompts": ["a"]}
    head = {**base, "train.epochs": 2.0, "train.new_key": 3}
    assert params_table(base, head).splitlines()[2:] == [
        "| `train.epochs` | 1.0 | 2.0 |",
        "| `train.new_key` | (absent) | 3 |",
    ]
    assert params_table(base, base) == "No param differs."


def test_a_base_without_the_profile_is_said_in_the_summary_not_raised(tmp_path):
    base = run("base", tmp_path, problem="`origin/main` has no `profiles/ci.yaml`: it predates the `ci` profile")
    head = run("head", tmp_path, metrics={"eval.json:loss": 3.9}, params={"train.epochs": 1.0})
    summary = markdown_summary(base, head, "ci", artifact="reproduce-compare")
    assert "- **base**: `origin/main` has no `profiles/ci.yaml`" in summary
    assert "| `eval.json:loss` | - | 3.9 | - |" in summary
    assert "Params that differ" not in summary  # nothing to compare them with
    assert "`curves.png` in the `reproduce-compare` artifact" in summary


def test_plot_draws_both_runs_and_keeps_their_curves(tmp_path):
    runs = []
    for label, losses in (("base", (5.0, 4.0)), ("head", (5.0, 3.5))):
        (tmp_path / label / "plots").mkdir(parents=True)
        (tmp_path / label / "plots" / "train_curve.csv").write_text(
            "step,loss,learning_rate\n" + "".join(f"{i * 10},{loss},0.005\n" for i, loss in enumerate(losses))
        )
        runs.append(run(label, tmp_path / label))  # no validation curve: that panel stays empty
    plot = plot_curves(runs, tmp_path / "out")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "base_train_curve.csv", "curves.png", "head_train_curve.csv",
    ]  # fmt: skip
