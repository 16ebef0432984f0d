"""The benchmarks (bench/) run end to end on a tiny GPT-2 and report well-formed figures; no timing is asserted."""

import math
import re

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from bench import eval_bench, measure, train_bench, workload
from pipeline.params import FreezeParams
from pipeline.training.freeze import apply_freeze_policy
from pipeline.training.trainer_setup import bf16_supported

# Worked out by hand for the tiny config (n_layer=2, n_embd=32, vocab 100) at T=16: a block's matmul weights
# 12·32² = 12,288, the head's 100·32 = 3,200, attention 4·16·32 = 2,048 per block and token.
TINY_FORWARD = 2 * (2 * 12_288 + 3_200) + 2 * 2_048  # 59,648
BLOCK_PASSED = 2 * 12_288 + 2 * 2_048  # activation gradient of a block's matmuls and its attention: 28,672
BLOCK_WEIGHT_GRAD = 2 * 12_288


@pytest.mark.parametrize(
    ("head", "trainable_blocks", "backward"),
    [
        # head weight + activation gradients, both blocks passed (the embedding trains), one block's weights
        ("tied", 1, 2 * 3_200 * 2 + 2 * BLOCK_PASSED + BLOCK_WEIGHT_GRAD),  # 94,720
        # the same head, but backward stops at the trainable block
        ("untied", 1, 2 * 3_200 * 2 + BLOCK_PASSED + BLOCK_WEIGHT_GRAD),  # 66,048
        # only the head's activation gradient
        ("frozen", 1, 2 * 3_200 + BLOCK_PASSED + BLOCK_WEIGHT_GRAD),  # 59,648
        ("frozen", 2, 2 * 3_200 + 2 * BLOCK_PASSED + 2 * BLOCK_WEIGHT_GRAD),  # 112,896
    ],
)
def test_flop_count_follows_the_backward_path(tiny_config, head, trainable_blocks, backward):
    model = GPT2LMHeadModel(tiny_config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=trainable_blocks, train_ln_f=False, head=head))
    flops = measure.training_flops_per_token(model, seq_len=16)
    assert (flops.forward, flops.backward) == (TINY_FORWARD, backward)


# The tiny Llama of tests/conftest.py (d=32, 2 blocks, 4 query heads of 8, 2 key/value heads, MLP 64, vocab 100,
# untied) at T=16: q and o 32·32 each, k and v 32·16 each, gate, up and down 32·64 each: 9,216 matmul weights per
# block; the head 100·32 = 3,200; attention 4·16·32 = 2,048 per block and token.
LLAMA_BLOCK = 2 * 1_024 + 2 * 512 + 3 * 2_048
LLAMA_FORWARD = 2 * (2 * LLAMA_BLOCK + 3_200) + 2 * 2_048  # 47,360
LLAMA_BLOCK_PASSED = 2 * LLAMA_BLOCK + 2 * 2_048  # 22,528


@pytest.mark.parametrize(
    ("head", "backward"),
    [
        # the head's weight and input gradients; the (separate) input embedding trains, so both blocks are passed
        ("tied", 2 * 3_200 * 2 + 2 * LLAMA_BLOCK_PASSED + 2 * LLAMA_BLOCK),  # 76,288
        ("untied", 2 * 3_200 * 2 + LLAMA_BLOCK_PASSED + 2 * LLAMA_BLOCK),  # 53,760
        ("frozen", 2 * 3_200 + LLAMA_BLOCK_PASSED + 2 * LLAMA_BLOCK),  # 47,360
    ],
)
def test_flop_count_of_a_llama_reads_its_grouped_query_shapes(tiny_lm, head, backward):
    model = tiny_lm("llama")
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
    flops = measure.training_flops_per_token(model, seq_len=16)
    assert (flops.forward, flops.backward) == (LLAMA_FORWARD, backward)
    cached = measure.training_flops_per_token(model, seq_len=16, cached_prefix_blocks=1)
    assert flops.forward - cached.forward == 2 * LLAMA_BLOCK + 2_048


def test_flop_count_leaves_out_the_forward_of_a_cached_prefix(tiny_config):
    model = GPT2LMHeadModel(tiny_config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head="untied"))
    uncached = measure.training_flops_per_token(model, seq_len=16)
    cached = measure.training_flops_per_token(model, seq_len=16, cached_prefix_blocks=1)
    assert uncached.forward - cached.forward == 2 * 12_288 + 2_048  # one block's matmuls and attention
    assert cached.backward == uncached.backward


def test_flop_count_of_a_head_that_skips_the_last_position(tiny_config):
    model = GPT2LMHeadModel(tiny_config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head="untied"))
    every = measure.training_flops_per_token(model, seq_len=16)
    skipping = measure.training_flops_per_token(model, seq_len=16, head_skips_last_position=True)
    head_share = 3_200 / 16  # one of the 16 positions' head matmul weights
    assert every.forward - skipping.forward == 2 * head_share
    assert every.backward - skipping.backward == 2 * head_share * 2  # weight and activation gradients


@pytest.mark.parametrize(("head", "mflop_per_token"), [("tied", 600), ("untied", 435), ("frozen", 358)])
def test_flop_count_on_real_gpt2_small_shapes_matches_the_printed_note(head, mflop_per_token):
    model = GPT2LMHeadModel(GPT2Config())
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
    assert round(measure.training_flops_per_token(model, seq_len=128).total / 1e6) == mflop_per_token
    assert f"{head} 252 + " in measure.FLOP_COUNTING and f"= {mflop_per_token}" in measure.FLOP_COUNTING


def test_original_rows_are_padded_with_eos_and_cut_to_64():
    rows = workload.synthetic_rows(3_000, seed=0)
    tokenizer = workload.synthetic_tokenizer(rows)
    long_row = " ".join(["word"] * 200) + "\n"
    padded = workload.padded_rows(["", "short row\n", long_row], tokenizer)
    assert padded["input_ids"].shape == (3, 64)
    assert padded["attention_mask"][0].sum() == 0 and (padded["input_ids"][0] == tokenizer.eos_token_id).all()
    assert 0 < padded["attention_mask"][1].sum() < 64 and padded["attention_mask"][2].sum() == 64
    assert len(workload.packed_blocks(workload.rows_for_blocks(rows, tokenizer, 3, 128), tokenizer, 128)) == 3


@pytest.fixture(scope="module")
def bench_config() -> GPT2Config:
    """Tiny, but with the synthetic tokenizer's 1,024 ids and room for the project's 128-token blocks."""
    return GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=1024, n_positions=128, bos_token_id=0, eos_token_id=0)


@pytest.mark.slow
def test_train_benchmark_reports_every_setting(bench_config):
    report = train_bench.run_benchmark(bench_config, steps=1, corpus_words=5_000)
    results = {result["setting"]: result for result in report["results"]}
    assert list(results) == [setting.name for setting in train_bench.SETTINGS]
    original, defaults, untied, frozen, untied_cached, frozen_cached = results.values()
    assert (original["tokens_per_step"], original["precision"]) == (1 * 64 * 4, "fp32")
    assert 0 < original["useful_fraction"] < 1  # the padded rows are part text, part eos
    for project in (defaults, untied, frozen, untied_cached, frozen_cached):
        assert (project["tokens_per_step"], project["useful_fraction"]) == (8 * 128, 1.0)
        assert project["precision"] == ("bf16 autocast" if bf16_supported() else "fp32")
    for result in results.values():
        assert math.isfinite(result["seconds_per_step"]) and result["seconds_per_step"] > 0
        assert result["peak_rss"] > 0
    # Backward goes through every block with the tied head, stops at the last block untied, skips the head frozen.
    assert defaults["flops_per_token"].total > untied["flops_per_token"].total > frozen["flops_per_token"].total
    assert defaults["trainable"] == untied["trainable"] > frozen["trainable"]
    # A cached prefix skips the frozen blocks' forward: fewer FLOPs per token for the same trainable parameters.
    assert untied["flops_per_token"].total > untied_cached["flops_per_token"].total
    assert frozen["flops_per_token"].total > frozen_cached["flops_per_token"].total
    assert untied_cached["trainable"] == untied["trainable"]
    text = train_bench.format_report(report)
    assert all(f"| {name} |" in text for name in results)
    assert not re.search(r"\b(nan|inf)\b", text) and "| 1.0× |" in text  # the baseline against itself


@pytest.mark.slow
def test_eval_benchmark_reports_both_styles_at_two_sizes(bench_config):
    report = eval_bench.run_benchmark(bench_config, blocks=1, corpus_words=5_000)
    runs = report["runs"]
    assert [(run["blocks"], run["setting"].split(":")[0]) for run in runs] == [
        (1, "original-style"),
        (1, "evaluate stage"),
        (4, "original-style"),
        (4, "evaluate stage"),
    ]
    for original, stage in (runs[:2], runs[2:]):
        assert original["shape"] == f"{original['rows']} × 64" and original["tokens"] == 64 * original["rows"]
        assert 0 < original["useful_tokens"] < original["tokens"]
        assert stage["tokens"] == stage["useful_tokens"] == 128 * stage["blocks"]
    assert all(run["seconds"] > 0 and run["peak_rss"] > 0 for run in runs)
    assert "Peak RSS with 4x the eval set" in eval_bench.format_report(report)


def test_ablation_times_every_variant(tiny_config):
    from bench import ablation

    config = GPT2Config(**{**tiny_config.to_dict(), "n_positions": ablation.BLOCK_SIZE})
    seconds = ablation.run_ablation("tied", steps=1, rounds=1, config=config)
    assert list(seconds) == [variant.name for variant in ablation.VARIANTS]
    assert all(value > 0 for value in seconds.values())
    report = ablation.format_ablation("tied", seconds)
    assert report.count("\n| ") == len(ablation.VARIANTS) + 1 and "1.00×" in report


@pytest.mark.slow
def test_gpu_sized_settings_train_full_context_blocks_and_a_failing_setting_is_reported(monkeypatch):
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=1024, n_positions=1024, bos_token_id=0, eos_token_id=0
    )
    # An attention kernel whose package is not installed: the Trainer set-up raises in the worker process.
    broken = train_bench.TrainSetting("project, flash-attn", "project", train={"attention": "flash_attention_2"})
    report = train_bench.run_benchmark(
        config, steps=1, settings=(*train_bench.GPU_SETTINGS, broken), corpus_words=5_000
    )
    assert [result["setting"] for result in report["results"]] == [s.name for s in train_bench.GPU_SETTINGS]
    for result in report["results"]:
        assert (result["tokens_per_step"], result["shape"]) == (16 * 1024, "16 × 1024 × 1")
    assert list(report["failed"]) == [broken.name]
    assert {shape[0] for shape in report["gemms"]} == {16 * 1024, 8 * 128}  # the micro-batches the settings run
    monkeypatch.setattr(measure, "datasheet_bf16_peak", lambda: 1e12)  # as on a listed GPU
    text = train_bench.format_report(report)
    assert "| MFU |" in text and "datasheet peak, 1 TFLOP/s" in text
    assert f"Failed here: {broken.name}: `" in text


def test_rerun_determinism_runs_dvc_yamls_train_command_with_its_own_paths_and_hashes_only_outputs(tmp_path):
    from bench.rerun_determinism import PROJECT_ROOT, result_hash, stage_command

    command = stage_command(PROJECT_ROOT, "train", tmp_path / "p.yaml", {"finetuned": "runs/0/model"})
    assert command[1:3] == ["-m", "pipeline.train"] and command[-2:] == ["--params", str(tmp_path / "p.yaml")]
    assert command[command.index("--out") + 1] == "runs/0/model"
    assert command[command.index("--checkpoints") + 1] == "checkpoints"  # dvc.yaml's own where not replaced

    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "weights").write_bytes(b"a")
    (tmp_path / "run" / "throughput.csv").write_text("step,tokens_per_s\n10,5\n")
    first = result_hash(tmp_path / "run")
    (tmp_path / "run" / "throughput.csv").write_text("step,tokens_per_s\n10,6\n")  # a timing: not a result
    (tmp_path / "run" / "checkpoints").mkdir()
    assert result_hash(tmp_path / "run") == first
    (tmp_path / "run" / "model" / "weights").write_bytes(b"b")
    assert result_hash(tmp_path / "run") != first


def test_window_flops_count_blocks_over_fed_tokens_and_the_head_over_scored_ones(tiny_config):
    model = GPT2LMHeadModel(tiny_config)  # d = 32, 2 blocks of 12 d² matmul weights, vocab 100
    blocks, attention, head = 2 * 2 * 12 * 32**2, 2 * 4 * 16 * 32, 2 * 100 * 32
    assert measure.window_flops(model, fed=16, scored=8) == 16 * (blocks + attention) + 8 * head


def test_op_profile_ceiling_rates_the_call_and_its_matmuls_alone():
    from bench import op_profile

    times = {"aten::mm": 1.0, "aten::addmm": 1.0, "aten::gelu": 2.0}
    line = op_profile.ceiling(times, flops=8e9, bf16_gemm=8e9)
    assert "2 GFLOP/s (25%) over the whole call, 4 GFLOP/s (50%) over its matmuls' time alone" in line
