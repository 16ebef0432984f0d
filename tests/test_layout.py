"""Every supported family: its parts found, counted by hand, frozen by head mode; any other model refused."""

import pytest
import torch
from transformers import AutoConfig

from pipeline.params import FreezeParams, Params
from pipeline.params.checks import model_issues
from pipeline.training.freeze import apply_freeze_policy, count_parameters
from pipeline.training.layout import ModelLayout
from pipeline.training.trainee import WholeModelTrainee

# Worked out by hand for tests/conftest.py's TINY_FAMILY_CONFIGS (d=32, vocab 100, 2 blocks, MLP 64 wide).
# Llama: q 32x32 + k 32x16 + v 32x16 + o 32x32 (4 heads of 8, 2 key/value heads), gate, up 32x64 and down 64x32,
# two RMSNorms of 32; no biases.
LLAMA_BLOCK = 1_024 + 512 + 512 + 1_024 + 3 * 2_048 + 2 * 32  # 9,280
# GPT-NeoX: two LayerNorms 2x64, query_key_value 32x96+96, dense 32x32+32, h_to_4h 32x64+64, 4h_to_h 64x32+32.
NEOX_BLOCK = 2 * 64 + 3_168 + 1_056 + 2_112 + 2_080  # 8,544
EMBEDDING = 100 * 32  # the input embedding, and an untied head of the same shape
LLAMA_NORM, NEOX_NORM = 32, 64  # the final norm: RMSNorm (weight), LayerNorm (weight and bias)


@pytest.mark.parametrize(
    ("model_type", "names"),
    [
        ("gpt2", ["wte", "wpe", "h.0", "h.1", "ln_f", "lm_head"]),
        ("llama", ["embed_tokens", "layers.0", "layers.1", "norm", "lm_head"]),
        ("mistral", ["embed_tokens", "layers.0", "layers.1", "norm", "lm_head"]),
        ("qwen2", ["embed_tokens", "layers.0", "layers.1", "norm", "lm_head"]),
        ("qwen3", ["embed_tokens", "layers.0", "layers.1", "norm", "lm_head"]),
        ("gpt_neox", ["embed_in", "layers.0", "layers.1", "final_layer_norm", "lm_head"]),
    ],
)
def test_every_family_is_counted_by_its_own_parts_and_nothing_is_left_out(tiny_lm, model_type, names):
    model = tiny_lm(model_type)
    counts = count_parameters(model)  # asserts that the rows hold every parameter
    assert [module.name for module in counts.modules] == names
    assert counts.total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("model_type", "tied", "total"),
    [
        ("llama", False, 2 * EMBEDDING + 2 * LLAMA_BLOCK + LLAMA_NORM),  # 25,024
        ("llama", True, EMBEDDING + 2 * LLAMA_BLOCK + LLAMA_NORM),  # 21,824: the tied head once
        ("gpt_neox", False, 2 * EMBEDDING + 2 * NEOX_BLOCK + NEOX_NORM),  # 23,552
    ],
)
@pytest.mark.parametrize("head", ["tied", "untied", "frozen"])
def test_counts_match_hand_worked_numbers_for_each_head_mode(tiny_lm, model_type, tied, total, head):
    model = tiny_lm(model_type, tie_word_embeddings=tied)
    block = LLAMA_BLOCK if model_type == "llama" else NEOX_BLOCK
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
    counts = count_parameters(model)
    # tied: head and embedding (one tensor or two); untied: the head (a new copy on a tied model); frozen: neither
    head_and_embedding = {"tied": EMBEDDING if tied else 2 * EMBEDDING, "untied": EMBEDDING, "frozen": 0}[head]
    untied_copy = EMBEDDING if tied and head == "untied" else 0
    assert (counts.total, counts.trainable) == (total + untied_copy, block + head_and_embedding)
    assert ModelLayout.of(model).head_tied is (tied and head != "untied")


def test_untied_on_an_untied_model_trains_the_head_alone_and_keeps_its_tensor(tiny_lm):
    model = tiny_lm("llama")
    layout = ModelLayout.of(model)
    head_weight = layout.head.weight
    apply_freeze_policy(model, FreezeParams(trainable_blocks=0, train_ln_f=False, head="untied"))
    assert layout.head.weight is head_weight  # nothing to untie: the same tensor trains
    input_ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    WholeModelTrainee(model).train()(input_ids=input_ids, labels=input_ids).loss.backward()
    assert [name for name, p in model.named_parameters() if p.grad is not None] == ["lm_head.weight"]


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox"])
def test_tied_on_an_untied_model_trains_the_head_and_the_embedding_each_with_a_gradient(tiny_lm, model_type):
    model = tiny_lm(model_type)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=True, head="tied"))
    layout = ModelLayout.of(model)
    input_ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    WholeModelTrainee(model).train()(input_ids=input_ids, labels=input_ids).loss.backward()
    assert layout.input_embedding.weight.grad.abs().sum() > 0 and layout.head.weight.grad.abs().sum() > 0
    assert layout.final_norm.weight.grad is not None
    assert all(p.grad is None for p in layout.blocks[0].parameters())  # frozen: reached, but no gradient kept


@pytest.mark.parametrize(
    ("model_type", "context_field"),
    [("gpt2", "n_positions"), ("llama", "max_position_embeddings"), ("gpt_neox", "max_position_embeddings")],
)
def test_the_context_limit_is_read_from_the_field_each_family_uses(tiny_lm, model_type, context_field):
    params = Params.defaults()  # block_size 128, evaluate.context 1024; the tiny models have 64 positions
    issues = model_issues(params, tiny_lm(model_type).config)
    assert f"tokenize.block_size: 128 exceeds the model's {context_field} (64)" in issues[0]
    assert f"evaluate.context: 1024 exceeds the model's {context_field} (64)" in issues[1]


def test_an_unsupported_model_type_is_one_paragraph_naming_the_supported_ones():
    [issue] = model_issues(Params.defaults(), AutoConfig.for_model("bloom"))
    assert "model_type 'bloom' is not supported" in issue
    assert "gpt2, gpt_neox, llama, mistral, qwen2, qwen3" in issue and "\n" not in issue
