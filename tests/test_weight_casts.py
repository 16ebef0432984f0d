import pytest
import torch

from pipeline.params import FreezeParams
from pipeline.training.freeze import apply_freeze_policy
from pipeline.training.trainee import WholeModelTrainee
from pipeline.training.weight_casts import FrozenWeightCasts


def frozen_model(tiny_lm, model_type: str, head: str):
    model = tiny_lm(model_type, n_layer=3) if model_type == "gpt2" else tiny_lm(model_type, num_hidden_layers=3)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
    return model.eval()  # no dropout: two passes must draw nothing to be compared


def tokens() -> torch.Tensor:
    return torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("model_type", "head"), [("gpt2", "tied"), ("gpt2", "untied"), ("llama", "untied")])
def test_cast_weights_give_bitwise_the_loss_and_gradients_of_autocast(tiny_lm, model_type, head):
    model = frozen_model(tiny_lm, model_type, head)
    trainee = WholeModelTrainee(model).eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    input_ids = tokens()

    def loss_and_gradients(use_casts: bool):
        trainee.body_forward.enabled = use_casts
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = trainee(input_ids=input_ids, labels=input_ids).loss
        return [loss, *torch.autograd.grad(loss, trainable)]

    for ours, autocasts in zip(loss_and_gradients(True), loss_and_gradients(False), strict=True):
        assert torch.equal(ours, autocasts)


def test_only_frozen_matmul_weights_are_cast_once_and_again_when_they_change(tiny_lm):
    model = frozen_model(tiny_lm, "gpt2", "untied")
    casts = FrozenWeightCasts(model.transformer)
    first = casts.casts(torch.bfloat16)
    frozen_matmuls = {name for name, p in model.transformer.named_parameters()
                      if not p.requires_grad and (".attn.c_" in name or ".mlp.c_" in name)}  # fmt: skip
    assert set(first) == frozen_matmuls  # not LayerNorms, embeddings, or the trainable block
    assert {tensor.dtype for tensor in first.values()} == {torch.bfloat16}
    assert casts.casts(torch.bfloat16) is first  # reused

    weight = model.transformer.h[0].mlp.c_fc.weight
    with torch.no_grad():
        weight.add_(1.0)  # an in-place write bumps its version
    changed = casts.casts(torch.bfloat16)
    assert changed is not first and torch.equal(changed["h.0.mlp.c_fc.weight"], weight.to(torch.bfloat16))

    weight.requires_grad_(True)  # unfrozen: autocast's own cast then carries its gradient
    assert "h.0.mlp.c_fc.weight" not in casts.casts(torch.bfloat16)
    assert weight.dtype == torch.float32  # the module's own parameters never change dtype


def test_without_autocast_the_module_runs_as_it_is(tiny_lm):
    model = frozen_model(tiny_lm, "gpt2", "untied")
    casts = FrozenWeightCasts(model.transformer)
    input_ids = tokens()
    assert torch.equal(casts(input_ids=input_ids).last_hidden_state, model.transformer(input_ids).last_hidden_state)
    assert casts._casts is None  # nothing was cast


def frozen_weight_casts_in_a_step(trainee: WholeModelTrainee, input_ids: torch.Tensor) -> int:
    """How many times autocast casts a frozen parameter of `trainee` in one forward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    frozen = {p.data_ptr() for p in trainee.parameters() if not p.requires_grad}

    class CountCasts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in frozen:
                CountCasts.count += 1
            return func(*args, **(kwargs or {}))

    with torch.autocast("cpu", dtype=torch.bfloat16), CountCasts():
        trainee(input_ids=input_ids, labels=input_ids)
    return CountCasts.count


def test_the_trainee_casts_frozen_weights_in_its_first_step_only(tiny_lm):
    trainee = WholeModelTrainee(frozen_model(tiny_lm, "gpt2", "frozen")).eval()
    input_ids = tokens()
    first = frozen_weight_casts_in_a_step(trainee, input_ids)
    assert first == 2 * 4 * 2 + 1  # two frozen blocks' four matmuls (weight and bias each), the head's weight
    assert frozen_weight_casts_in_a_step(trainee, input_ids) == 0
    trainee.body_forward.enabled = False  # autocast alone casts the blocks' weights at every step
    assert frozen_weight_casts_in_a_step(trainee, input_ids) == 2 * 4 * 2
