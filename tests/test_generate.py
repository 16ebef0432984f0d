"""`python -m pipeline.generate` (streamed continuation, clear errors) and the evaluate stage's samples file
(pipeline/evaluation/samples.py: greedy, so byte-identical across calls)."""

import pytest

from pipeline.data.loading import load_model, load_tokenizer
from pipeline.evaluation.samples import samples_markdown, side_by_side
from pipeline.generate.__main__ import main
from pipeline.tracking.cli import USER_ERROR_EXIT_CODE


def test_generate_streams_a_continuation_of_the_prompt(tiny_model_dir, capsys):
    main(["--model", str(tiny_model_dir), "The river", "--max-new-tokens", "12", "--temperature", "0"])
    printed = capsys.readouterr().out
    assert printed.startswith("The river") and len(printed.split()) > 3


def test_generate_is_repeatable_with_a_seed(tiny_model_dir, capsys):
    argv = ["--model", str(tiny_model_dir), "The river", "--max-new-tokens", "12", "--seed", "3"]
    main(argv)
    first = capsys.readouterr().out
    main(argv)
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no/such/folder", "The river"], "no such model folder"),
        (["--model", "{model}", "   "], "the prompt is empty"),
        (["--model", "{model}", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
    ],
)
def test_generate_errors_are_one_paragraph_and_exit_2(tiny_model_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(model=tiny_model_dir) for arg in argv])
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    error = capsys.readouterr().err  # the stage's logging writes to stderr (configure_logging replaces handlers)
    assert message in error and "Traceback" not in error


def test_samples_are_byte_identical_across_calls(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    prompts = ["The river", "In the early years of the war ,"]
    first = side_by_side(model, model, tokenizer, prompts, 8)
    assert side_by_side(load_model(str(tiny_model_dir)), model, tokenizer, prompts, 8) == first
    rows = first.splitlines()[-2:]
    assert [row.split(" | ")[0] for row in rows] == ["| The river", "| In the early years of the war ,"]


def test_samples_table_keeps_each_continuation_in_its_cell():
    text = samples_markdown(["a|b"], ["line one\nline two"], [""], 5)
    assert text.splitlines()[-1] == "| a\\|b | line one ↵ line two | ∅ |"
