"""Method lora: exact adapter counts, only adapters train, through the project's trainee and Trainer (loss falls,
checkpoints resume), and the saved model is a plain GPT-2."""

import dataclasses

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, TrainerCallback

from pipeline.params import LORA_TARGETS, Params
from pipeline.training.assembly import build_trainer, prepare_model
from pipeline.training.freeze import FrozenLayout, count_parameters, format_parameter_table
from pipeline.training.lora import lora_params_per_rank, rank_for_budget
from pipeline.training.prefix_cache import FrozenPrefixTail, compute_prefix
from pipeline.training.resumable import StepLog
from pipeline.training.trainee import WholeModelTrainee

# Worked out by hand for the tiny config (n_embd d=32, n_inner 4d=128, n_layer 2); tests/test_freeze.py has the base.
# An adapter on a fan-in x fan-out matrix holds rank x (fan-in + fan-out): A is rank x fan-in, B fan-out x rank.
TINY_TOTAL = 30_720  # the pretrained model, tied head counted once
PER_RANK = {"attn_qkv": 32 + 96, "attn_out": 32 + 32, "mlp_in": 32 + 128, "mlp_out": 128 + 32}  # GPT-2's matrices
TINY_PER_RANK_BLOCK = 128 + 64 + 160 + 160  # 512 = 16 d: all four matrices of one block, per unit of rank

# GPT-2 small (d=768): all four matrices, per rank and block, 768+2304 + 768+768 + 768+3072 + 3072+768 = 12,288.
GPT2_TOTAL, GPT2_BLOCK = 124_439_808, 7_087_872
GPT2_PER_RANK = 12 * 12_288  # 147,456 over the 12 blocks


def lora_params(**lora) -> Params:
    defaults = Params.defaults()
    return dataclasses.replace(
        defaults,
        finetune=dataclasses.replace(defaults.finetune, method="lora"),
        lora=dataclasses.replace(defaults.lora, **lora),
    )


def with_train(params: Params, **train) -> Params:
    train = {"bf16": False, "checkpoint_steps": None, "logging_steps": 1, "batch_size": 2, **train}
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **train))


def tiny_model(tiny_config, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config)


@pytest.mark.parametrize(
    ("rank", "targets", "adapted_blocks", "trainable"),
    [
        (4, LORA_TARGETS, None, 4 * 2 * TINY_PER_RANK_BLOCK),  # 4,096: every matrix of both blocks
        (4, LORA_TARGETS, 1, 4 * TINY_PER_RANK_BLOCK),  # 2,048: the last block only
        (2, ["attn_qkv"], None, 2 * 2 * (32 + 96)),  # 512: q, k, v's fused matrix (c_attn) of both blocks
        (3, ["attn_out", "mlp_out"], 1, 3 * (64 + 160)),  # 672: both c_proj, told apart by their path
    ],
)
def test_counts_on_tiny_config_match_hand_worked_numbers(tiny_config, rank, targets, adapted_blocks, trainable):
    model = tiny_model(tiny_config)
    prepare_model(model, lora_params(rank=rank, target_modules=list(targets), adapted_blocks=adapted_blocks))
    counts = count_parameters(model)
    assert (counts.total, counts.trainable, counts.frozen) == (TINY_TOTAL + trainable, trainable, TINY_TOTAL)
    assert lora_params_per_rank(tiny_config, list(targets), adapted_blocks) * rank == trainable
    modules = {m.name: m for m in counts.modules}
    assert [modules[name].trainable for name in ("wte", "wpe", "ln_f", "lm_head")] == [0, 0, 0, 0]
    per_block = trainable // (2 if adapted_blocks is None else 1)
    assert (modules["h.0"].trainable, modules["h.1"].trainable) == (0 if adapted_blocks else per_block, per_block)
    assert modules["lm_head"].total == 0  # still tied to wte, counted there once


def test_counts_on_real_gpt2_small_shapes_and_the_rank_that_matches_one_unfrozen_block():
    config = GPT2Config()
    per_rank = lora_params_per_rank(config, list(LORA_TARGETS), None)
    assert per_rank == GPT2_PER_RANK == 147_456
    rank = rank_for_budget(GPT2_BLOCK, per_rank)
    assert rank == 48  # 7,087,872 / 147,456 = 48.07
    assert lora_params_per_rank(config, ["attn_qkv"], 1) == 3_072  # 768 + 2,304
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    prepare_model(model, lora_params(rank=rank))
    counts = count_parameters(model)
    assert (counts.trainable, counts.frozen, counts.total) == (7_077_888, GPT2_TOTAL, GPT2_TOTAL + 7_077_888)


def backward_once(model: GPT2LMHeadModel) -> None:
    input_ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    WholeModelTrainee(model).train()(input_ids=input_ids, labels=input_ids).loss.backward()


def test_only_the_adapters_train_and_frozen_weights_get_no_gradient(tiny_config):
    model = tiny_model(tiny_config)
    prepared = prepare_model(model, lora_params(rank=4, adapted_blocks=1))
    backward_once(model)
    matrices = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2's, for the four roles
    adapters = {f"transformer.h.1.{target}.lora_{m}.default.weight" for target in matrices for m in ("A", "B")}
    assert {name for name, p in model.named_parameters() if p.requires_grad} == adapters
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (name in adapters), name
    # B starts at zero, so only B has a gradient at the first step (A's is B^T times the upstream gradient)
    assert all(model.get_parameter(name).grad.abs().sum() > 0 for name in adapters if "lora_B" in name)
    assert prepared.layout == FrozenLayout(head_tied=True, first_trainable_block=1, embedding_trains=False)
    assert prepared.layout.prefix_is_frozen


def test_the_table_says_what_lora_trains(tiny_config):
    model = tiny_model(tiny_config)
    prepared = prepare_model(model, lora_params(rank=4))
    table = format_parameter_table(count_parameters(model), prepared.description)
    assert "trainable 4,096 of 34,816 (11.76%), frozen 30,720; method lora: rank 4 adapters" in table
    assert "of blocks 0-1" in table and "the head and input embedding included, stays frozen" in table


class CloseSteps(TrainerCallback):
    def __init__(self, step_log: StepLog) -> None:
        self.step_log = step_log

    def on_optimizer_step(self, args, state, control, lr_scheduler=None, **kwargs):
        self.step_log.close_step(lr_scheduler.get_last_lr()[0])


def repeating_blocks(tiny_config, rows: int = 16) -> Dataset:
    """A pattern a few steps can learn: each row counts up from its own start, modulo 10."""
    return Dataset.from_dict({"input_ids": [[(start + i) % 10 for i in range(16)] for start in range(rows)]})


def train(model, params, tmp_path, resume_from=None) -> StepLog:
    step_log = StepLog()
    trainer = build_trainer(
        params, model, repeating_blocks(model.config), output_dir=tmp_path / "out",
        prefix_cache_dir=tmp_path / "cache", use_bf16=False, step_log=step_log,
    )  # fmt: skip
    trainer.add_callback(CloseSteps(step_log))
    trainer.train(resume_from_checkpoint=resume_from)
    return step_log


def test_loss_decreases_over_a_few_steps_through_the_trainee_and_trainer(tiny_config, tmp_path):
    model = tiny_model(tiny_config)
    params = with_train(lora_params(rank=4), max_steps=6, learning_rate=1e-2)
    prepared = prepare_model(model, params)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    scorer = WholeModelTrainee(model)
    every_row = torch.tensor(repeating_blocks(tiny_config)["input_ids"])

    def loss() -> float:  # on every row, without dropout: the steps' own losses are of other rows each
        with torch.no_grad():
            return scorer.eval()(input_ids=every_row, labels=every_row).loss.item()

    before = loss()
    assert len(train(model, params, tmp_path).losses) == 6
    assert loss() < before - 0.1
    assert all(torch.equal(model.get_parameter(name), value) for name, value in frozen_before.items())
    assert prepared.adapters is not None


def test_adapters_round_trip_through_a_checkpoint_and_resume_to_the_same_weights(tiny_config, tmp_path):
    """Saved at step 2 of 4; a fresh model (other adapter init) resumed from it ends bitwise where an unbroken run
    ends. Deterministic kernels and the adapter's dropout RNG included."""
    params = with_train(lora_params(rank=4, dropout=0.1), max_steps=4, learning_rate=1e-2, checkpoint_steps=2)
    unbroken = tiny_model(tiny_config)
    prepare_model(unbroken, params)
    train(unbroken, params, tmp_path / "unbroken")
    checkpoint = tmp_path / "unbroken" / "out" / "checkpoint-2"
    saved = load_file(checkpoint / "model.safetensors")
    assert {name for name in saved if ".lora_" in name} == {
        name for name, p in unbroken.named_parameters() if p.requires_grad
    }

    resumed = tiny_model(tiny_config, seed=1)
    prepare_model(resumed, params)
    train(resumed, params, tmp_path / "resumed", resume_from=str(checkpoint))
    for (name, expected), (_, actual) in zip(unbroken.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(expected, actual), name


def test_the_saved_model_is_a_plain_gpt2_with_the_adapters_merged(tiny_config, tmp_path):
    model = tiny_model(tiny_config)
    pretrained = model.transformer.h[1].attn.c_attn.weight.detach().clone()
    params = with_train(lora_params(rank=4, adapted_blocks=1), max_steps=4, learning_rate=1e-2)
    prepared = prepare_model(model, params)
    train(model, params, tmp_path)
    input_ids = torch.randint(0, tiny_config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        adapted_logits = model(input_ids=input_ids).logits  # adapters still separate

    merged = prepared.model_to_save()
    merged.save_pretrained(tmp_path / "saved")
    assert not [name for name in load_file(tmp_path / "saved" / "model.safetensors") if "lora" in name]
    for loader in (GPT2LMHeadModel, AutoModelForCausalLM):
        reloaded = loader.from_pretrained(tmp_path / "saved", use_safetensors=True).eval()
        assert type(reloaded) is GPT2LMHeadModel
        assert count_parameters(reloaded).total == TINY_TOTAL
        assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
        for name, tensor in merged.state_dict().items():
            assert torch.equal(reloaded.state_dict()[name], tensor), name
        with torch.no_grad():
            # Training swapped GELU's five-op form for the one-kernel one (trainee.py); the saved config keeps
            # gelu_new, so the two agree to rounding, not bitwise.
            torch.testing.assert_close(reloaded(input_ids=input_ids).logits, adapted_logits, rtol=1e-5, atol=1e-5)
    assert not torch.equal(merged.transformer.h[1].attn.c_attn.weight, pretrained)  # B A was added in


def test_a_lora_prefix_below_the_adapted_blocks_trains_on_its_cache_with_the_same_loss(tiny_config, tmp_path):
    model = tiny_model(tiny_config)
    prepare_model(model, lora_params(rank=4, adapted_blocks=1))
    input_ids = torch.randint(0, tiny_config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(4))
    whole, tail = WholeModelTrainee(model).eval(), FrozenPrefixTail(model, 1).eval()
    hidden = compute_prefix(model, input_ids, prefix_blocks=1, batch_size=2, bf16=False)
    with torch.no_grad():
        torch.testing.assert_close(
            tail(prefix_hidden_states=hidden, labels=input_ids).loss, whole(input_ids=input_ids, labels=input_ids).loss
        )
