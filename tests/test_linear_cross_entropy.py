import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.training import linear_cross_entropy
from pipeline.training.linear_cross_entropy import IGNORE_INDEX, causal_lm_loss
from pipeline.training.trainer_setup import bf16_supported

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def model_and_labels(tiny_config, rows: int = 5, length: int = 12):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**{**tiny_config.to_dict(), **NO_DROPOUT})).train()
    input_ids = torch.randint(0, tiny_config.vocab_size, (rows, length), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[0, 3:7] = IGNORE_INDEX  # unscored positions, as padding would be
    labels[2, -1] = IGNORE_INDEX
    return model, input_ids, labels


def fused_loss(model, input_ids, labels, num_items=None, vocab_multiple=linear_cross_entropy.VOCAB_MULTIPLE):
    hidden = model.transformer(input_ids=input_ids).last_hidden_state
    return causal_lm_loss(hidden, model.lm_head.weight, labels, num_items, vocab_multiple)


def grads_after(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# model_and_labels: 5 rows x 11 predicted positions = 55, less the 4 + 1 whose labels are IGNORE_INDEX.
SCORED_BY_HAND = 50


@pytest.mark.parametrize("num_items", [None, 100])
def test_loss_and_gradients_are_plain_cross_entropy_over_the_scored_positions_in_fp32(
    tiny_config, num_items, monkeypatch
):
    """Against F.cross_entropy on the shifted logits, summed and divided by the hand-counted scored positions, or by
    `num_items_in_batch` (100: what the Trainer passes for a batch accumulated over two such micro-batches)."""
    monkeypatch.setattr(linear_cross_entropy, "ROWS_PER_CHUNK", 7)  # chunks that do not divide the 55 rows
    model, input_ids, labels = model_and_labels(tiny_config)
    logits = model(input_ids=input_ids).logits
    summed = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    expected = summed / (SCORED_BY_HAND if num_items is None else num_items)
    expected_grads = grads_after(model, expected)
    actual = fused_loss(model, input_ids, labels, None if num_items is None else torch.tensor(num_items))
    actual_grads = grads_after(model, actual)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    assert actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def relative_error(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    difference = torch.cat([(grads[name] - grad).flatten() for name, grad in reference.items()])
    return (difference.norm() / torch.cat([grad.flatten() for grad in reference.values()]).norm()).item()


@pytest.mark.skipif(not bf16_supported(), reason="no bf16 arithmetic on this CPU")
def test_under_bf16_autocast_it_is_as_close_to_fp32_as_the_unfused_loss(tiny_config):
    model, input_ids, labels = model_and_labels(tiny_config)
    reference = model(input_ids=input_ids, labels=labels).loss
    reference_grads = grads_after(model, reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unfused = model(input_ids=input_ids, labels=labels).loss
    unfused_grads = grads_after(model, unfused)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_loss(model, input_ids, labels)
    fused_grads = grads_after(model, fused)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, unfused, rtol=1e-6, atol=1e-6)  # the same bf16 logits, softmax in fp32
    unfused_error = relative_error(unfused_grads, reference_grads)
    assert 0 < unfused_error < 0.05  # bf16 rounding, visible
    assert relative_error(fused_grads, reference_grads) < 1.5 * unfused_error


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_do(tiny_config):
    model, input_ids, labels = model_and_labels(tiny_config)
    hidden = model.transformer(input_ids=input_ids).last_hidden_state.detach().requires_grad_()
    frozen_head = model.lm_head.weight.detach()
    causal_lm_loss(hidden, frozen_head, labels).backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert frozen_head.grad is None
    assert hidden.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_a_padded_trainable_head_gives_the_unpadded_loss_and_gradients(tiny_config):
    model, input_ids, labels = model_and_labels(tiny_config)  # vocabulary of 100
    assert linear_cross_entropy.cast_head(model.lm_head.weight, torch.float32, vocab_multiple=1).shape[0] == 100
    unpadded = fused_loss(model, input_ids, labels, vocab_multiple=1)
    unpadded_grads = grads_after(model, unpadded)
    assert linear_cross_entropy.cast_head(model.lm_head.weight, torch.float32, vocab_multiple=64).shape[0] == 128
    padded = fused_loss(model, input_ids, labels, vocab_multiple=64)
    padded_grads = grads_after(model, padded)
    torch.testing.assert_close(padded, unpadded, rtol=1e-6, atol=1e-6)
    assert model.lm_head.weight.grad.shape == model.lm_head.weight.shape
    for name, grad in unpadded_grads.items():
        torch.testing.assert_close(padded_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
