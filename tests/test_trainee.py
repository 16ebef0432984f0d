import dataclasses

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

from pipeline.params import FreezeParams, Params
from pipeline.training.assembly import build_trainer, prepare_model
from pipeline.training.freeze import apply_freeze_policy
from pipeline.training.resumable import StepLog
from pipeline.training.trainee import WholeModelTrainee


def trainee_for(tiny_config, head: str, dropout: float = 0.3) -> WholeModelTrainee:
    torch.manual_seed(0)
    dropouts = dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), dropout)
    model = GPT2LMHeadModel(GPT2Config(**{**tiny_config.to_dict(), "n_layer": 3, **dropouts}))
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
    return WholeModelTrainee(model).train()


def tokens(tiny_config) -> torch.Tensor:
    return torch.randint(0, tiny_config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("head", ["tied", "untied", "frozen"])
def test_frozen_blocks_run_without_dropout_and_trainable_ones_with_it(tiny_config, head):
    trainee = trainee_for(tiny_config, head)
    blocks = trainee.model.transformer.h
    outputs: dict[int, list[torch.Tensor]] = {0: [], 2: []}
    for index in outputs:
        blocks[index].register_forward_hook(lambda module, args, output, i=index: outputs[i].append(output.detach()))
    input_ids = tokens(tiny_config)
    for seed in (1, 2):
        torch.manual_seed(seed)
        trainee.train()  # as the Trainer calls it before every step
        trainee(input_ids=input_ids, labels=input_ids)
    same_embedding_dropout = head != "tied"  # a trainable embedding keeps its dropout
    assert torch.equal(*outputs[0]) == same_embedding_dropout
    assert not torch.equal(*outputs[2])  # the trainable block drew other masks
    assert [block.training for block in blocks] == [False, False, True]


def test_eval_mode_turns_every_dropout_off(tiny_config):
    trainee = trainee_for(tiny_config, "tied").eval()
    input_ids = tokens(tiny_config)
    first = trainee(input_ids=input_ids, labels=input_ids).loss
    assert torch.equal(first, trainee(input_ids=input_ids, labels=input_ids).loss)


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_state_dict_is_the_models_and_loads_back(tiny_config, head):
    trainee = trainee_for(tiny_config, head)
    expected = trainee.model.state_dict()
    if head == "tied":
        expected.pop("lm_head.weight")  # stored once, as wte, as save_pretrained does
    state = trainee.state_dict()
    assert state.keys() == expected.keys()
    other = trainee_for(tiny_config, head)
    with torch.no_grad():
        for parameter in other.model.parameters():
            parameter.zero_()
    result = other.load_state_dict(state)  # strict: a tied head's absence is not a missing key
    assert result.missing_keys == [] and result.unexpected_keys == []
    with pytest.raises(RuntimeError, match="missing"):
        other.load_state_dict({key: value for key, value in state.items() if key != "transformer.ln_f.weight"})
    for name, tensor in other.model.state_dict().items():
        assert torch.equal(tensor, trainee.model.state_dict()[name]), name


def test_a_frozen_head_is_cast_once_and_again_after_its_weights_change(tiny_config):
    trainee = trainee_for(tiny_config, "frozen")
    head = trainee.model.lm_head.weight
    assert trainee.head_weight() is head  # no autocast: the fp32 weight itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = trainee.head_weight()
        assert first.dtype == torch.bfloat16 and torch.equal(first, head.to(torch.bfloat16))
        assert trainee.head_weight() is first
        changed = head.detach() + 1.0
        trainee.load_state_dict({"transformer.wte.weight": changed}, strict=False)
        assert torch.equal(trainee.head_weight(), changed.to(torch.bfloat16))


def test_a_trainable_head_is_never_cached(tiny_config):
    trainee = trainee_for(tiny_config, "untied")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert trainee.head_weight() is trainee.model.lm_head.weight


def test_loss_is_the_models_own_with_the_fused_activation_and_the_config_is_untouched(tiny_config):
    trainee = trainee_for(tiny_config, "tied", dropout=0.0)
    model = trainee.model
    input_ids = tokens(tiny_config)
    loss = trainee(input_ids=input_ids, labels=input_ids).loss
    assert model.config.activation_function == "gelu_new"
    assert all(type(block.mlp.act).__name__ != "NewGELUActivation" for block in model.transformer.h)
    reference = GPT2LMHeadModel(model.config)  # a fresh model with gelu_new, the same weights
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(loss, reference(input_ids=input_ids, labels=input_ids).loss, rtol=1e-6, atol=1e-6)


def test_the_trainers_loss_and_gradient_are_the_mean_over_scored_tokens_of_the_accumulated_batch(tiny_config, tmp_path):
    """One optimizer step of 3 micro-batches x 2 blocks (so every block): the logged loss and the clipped-before
    gradient norm must be plain cross_entropy over the shifted logits of all 6 blocks, not (S-1)/S of it."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(**{**tiny_config.to_dict(), "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    )
    blocks = torch.randint(0, tiny_config.vocab_size, (6, 16), generator=torch.Generator().manual_seed(2))
    reference = GPT2LMHeadModel(model.config)
    reference.load_state_dict(model.state_dict())
    freeze = FreezeParams(trainable_blocks=1, train_ln_f=False, head="tied")
    apply_freeze_policy(reference, freeze)
    logits = reference(input_ids=blocks).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), blocks[:, 1:].flatten())  # 6 x 15 positions
    expected.backward()
    expected_norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in reference.parameters() if p.requires_grad])
    )

    params = Params.defaults()
    train = dataclasses.replace(
        params.train, batch_size=2, grad_accum_steps=3, max_steps=1, logging_steps=1, bf16=False,
        checkpoint_steps=None, max_grad_norm=1e9,
    )  # fmt: skip
    params = dataclasses.replace(params, train=train, freeze=freeze)
    prepare_model(model, params)
    step_log = StepLog()
    trainer = build_trainer(
        params, model, Dataset.from_dict({"input_ids": blocks.tolist()}), output_dir=tmp_path / "out",
        prefix_cache_dir=tmp_path / "cache", use_bf16=False, step_log=step_log,
    )  # fmt: skip
    trainer.add_callback(_CloseSteps(step_log))
    trainer.train()
    assert step_log.losses[0] == pytest.approx(expected.item(), rel=1e-5)
    grad_norm = next(entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry)
    assert grad_norm == pytest.approx(expected_norm.item(), rel=1e-4)


class _CloseSteps(TrainerCallback):
    def __init__(self, step_log: StepLog) -> None:
        self.step_log = step_log

    def on_optimizer_step(self, args, state, control, lr_scheduler=None, **kwargs):
        self.step_log.close_step(0.0)
