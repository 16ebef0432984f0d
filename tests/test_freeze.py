import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.params import FreezeParams
from pipeline.training.freeze import (
    apply_freeze_policy,
    count_parameters,
    format_parameter_table,
    head_mode_description,
)

# Worked out by hand for the tiny config (n_embd=32, n_layer=2, vocab 100, n_positions 64):
# block = ln_1 2*32 + c_attn 32*96+96 + attn c_proj 32*32+32 + ln_2 2*32 + c_fc 32*128+128 + mlp c_proj 128*32+32
TINY_BLOCK = 64 + 3_168 + 1_056 + 64 + 4_224 + 4_128  # 12,704
TINY_WTE, TINY_WPE, TINY_LN_F = 100 * 32, 64 * 32, 2 * 32
TINY_TOTAL = TINY_WTE + TINY_WPE + 2 * TINY_BLOCK + TINY_LN_F  # 30,720 with the head tied to wte

# GPT-2 small, from the published shapes (tied weight counted once).
GPT2_TOTAL, GPT2_BLOCK, GPT2_WTE, GPT2_LN_F = 124_439_808, 7_087_872, 38_597_376, 1_536


def tiny_model(tiny_config) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_config)


@pytest.mark.parametrize(
    ("head", "train_ln_f", "total", "trainable", "frozen"),
    [
        # frozen: the first block and wpe always; wte unless the tied head trains it; ln_f unless it trains
        ("tied", False, TINY_TOTAL, TINY_BLOCK + TINY_WTE, TINY_BLOCK + TINY_WPE + TINY_LN_F),
        ("tied", True, TINY_TOTAL, TINY_BLOCK + TINY_WTE + TINY_LN_F, TINY_BLOCK + TINY_WPE),
        ("untied", False, TINY_TOTAL + TINY_WTE, TINY_BLOCK + TINY_WTE, TINY_BLOCK + TINY_WTE + TINY_WPE + TINY_LN_F),
        ("frozen", False, TINY_TOTAL, TINY_BLOCK, TINY_BLOCK + TINY_WTE + TINY_WPE + TINY_LN_F),
        ("frozen", True, TINY_TOTAL, TINY_BLOCK + TINY_LN_F, TINY_BLOCK + TINY_WTE + TINY_WPE),
    ],
)
def test_counts_on_tiny_config_match_hand_worked_numbers(tiny_config, head, train_ln_f, total, trainable, frozen):
    model = tiny_model(tiny_config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=train_ln_f, head=head))
    counts = count_parameters(model)
    assert (counts.total, counts.trainable, counts.frozen) == (total, trainable, frozen)
    modules = {m.name: m for m in counts.modules}
    assert (modules["h.0"].trainable, modules["h.1"].trainable) == (0, TINY_BLOCK)
    assert modules["wpe"].trainable == 0
    assert modules["lm_head"].total == (TINY_WTE if head == "untied" else 0)


@pytest.mark.parametrize(
    ("head", "total", "trainable"),
    [
        ("tied", GPT2_TOTAL, GPT2_BLOCK + GPT2_WTE),  # the original script: 45,685,248 of 124,439,808
        ("untied", GPT2_TOTAL + GPT2_WTE, GPT2_BLOCK + GPT2_WTE),
        ("frozen", GPT2_TOTAL, GPT2_BLOCK),
    ],
)
def test_counts_on_real_gpt2_small_shapes(head, total, trainable):
    model = GPT2LMHeadModel(GPT2Config())
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
    counts = count_parameters(model)
    assert (counts.total, counts.trainable) == (total, trainable)
    if head == "tied":
        assert counts.trainable == 45_685_248
        assert f"{counts.trainable_percent:.2f}" == "36.71"


def test_trainable_blocks_are_the_last_ones(tiny_config):
    config = GPT2Config(**{**tiny_config.to_dict(), "n_layer": 4})
    model = GPT2LMHeadModel(config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=2, train_ln_f=False, head="frozen"))
    trainable = [m.name for m in count_parameters(model).modules if m.trainable]
    assert trainable == ["h.2", "h.3"]


def backward_once(model: GPT2LMHeadModel) -> None:
    input_ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=input_ids, labels=input_ids).loss.backward()


@pytest.mark.parametrize("head", ["tied", "untied", "frozen"])
def test_frozen_parameters_get_no_gradient(tiny_config, head):
    model = tiny_model(tiny_config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
    backward_once(model)
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name
    assert all(p.grad is None for p in model.transformer.h[0].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transformer.h[1].parameters())


@pytest.mark.parametrize(("head", "graph_through_frozen_block"), [("tied", True), ("untied", False), ("frozen", False)])
def test_backward_traverses_frozen_blocks_only_with_the_tied_head(tiny_config, head, graph_through_frozen_block):
    """With a trainable input embedding (tied), the frozen block's output is part of the autograd graph."""
    model = tiny_model(tiny_config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
    seen = []
    model.transformer.h[0].register_forward_hook(lambda module, args, output: seen.append(output[0].requires_grad))
    backward_once(model)
    assert seen == [graph_through_frozen_block]


def test_untied_head_trains_apart_from_the_input_embedding(tiny_config, tmp_path):
    model = tiny_model(tiny_config)
    embedding_before = model.transformer.wte.weight.detach().clone()
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head="untied"))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    backward_once(model)
    optimizer.step()
    assert torch.equal(model.transformer.wte.weight, embedding_before)
    assert not torch.equal(model.lm_head.weight, embedding_before)

    model.save_pretrained(tmp_path)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path, use_safetensors=True)
    assert reloaded.lm_head.weight is not reloaded.transformer.wte.weight
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(reloaded.transformer.wte.weight, embedding_before)


def test_table_names_every_module_and_explains_the_head_mode(tiny_config):
    model = tiny_model(tiny_config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head="tied"))
    table = format_parameter_table(count_parameters(model), head_mode_description("tied"))
    for name in ("wte", "wpe", "h.0", "h.1", "ln_f", "lm_head", "total"):
        assert name in table
    assert "trainable 15,904 of 30,720 (51.77%)" in table
    assert "gradients flow back through every frozen block" in table


def test_method_full_trains_every_parameter_and_the_freeze_section_is_not_read(tiny_config):
    import dataclasses

    from pipeline.params import Params
    from pipeline.training.assembly import prepare_model

    defaults = Params.defaults()
    params = dataclasses.replace(defaults, finetune=dataclasses.replace(defaults.finetune, method="full"),
                                 freeze=FreezeParams(trainable_blocks=0, head="frozen"))  # fmt: skip
    model = tiny_model(tiny_config)
    prepared = prepare_model(model, params)
    counts = count_parameters(model)
    assert counts.trainable == counts.total == TINY_TOTAL
    assert prepared.layout.head_tied and prepared.layout.embedding_trains and not prepared.layout.prefix_is_frozen
    assert model.transformer.wpe.weight.requires_grad
