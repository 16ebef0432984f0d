import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.params import FreezeParams
from pipeline.training.freeze import FrozenLayout, apply_freeze_policy
from pipeline.training.prefix_cache import FrozenPrefixTail, cached_prefix, compute_prefix
from pipeline.training.trainee import WholeModelTrainee
from pipeline.training.trainer_setup import bf16_supported

DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def frozen_prefix_model(tiny_config, head: str, dropout: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(**{**tiny_config.to_dict(), "n_layer": 3, **dict.fromkeys(DROPOUTS, dropout)})
    model = GPT2LMHeadModel(config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=True, head=head))
    return model.train()


def tokens(tiny_config, rows: int = 6, length: int = 16) -> torch.Tensor:
    return torch.randint(0, tiny_config.vocab_size, (rows, length), generator=torch.Generator().manual_seed(1))


def assert_cached_equals_uncached(model, input_ids: torch.Tensor, bf16: bool = False) -> None:
    """The same seed on both paths, then the loss and every trainable gradient bitwise equal; the first 2 blocks
    are the cached prefix."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    torch.manual_seed(7)
    with autocast:
        uncached = WholeModelTrainee(model).train()(input_ids=input_ids, labels=input_ids).loss
    uncached.backward()
    uncached_grads = [p.grad.clone() for p in trainable]
    model.zero_grad(set_to_none=True)

    prefix = compute_prefix(model, input_ids, prefix_blocks=2, batch_size=4, bf16=bf16)
    torch.manual_seed(7)
    with autocast:
        cached = FrozenPrefixTail(model, prefix_blocks=2).train()(prefix_hidden_states=prefix, labels=input_ids).loss
    cached.backward()
    assert cached.item() == uncached.item()
    for parameter, expected in zip(trainable, uncached_grads, strict=True):
        assert torch.equal(parameter.grad, expected)


@pytest.mark.parametrize("head", ["untied", "frozen"])
@pytest.mark.parametrize(
    "bf16", [False, pytest.param(True, marks=pytest.mark.skipif(not bf16_supported(), reason="no bf16"))]
)
def test_cached_and_uncached_paths_give_the_same_loss_and_gradients(tiny_config, head, bf16):
    """Bitwise, with dropout on: the frozen prefix runs without it on both paths, and the trainable block draws
    the same masks from the same seed."""
    model = frozen_prefix_model(tiny_config, head, dropout=0.3)
    assert_cached_equals_uncached(model, tokens(tiny_config), bf16)


@pytest.mark.parametrize(("head", "frozen"), [("tied", False), ("untied", True), ("frozen", True)])
def test_the_prefix_is_frozen_only_when_the_embedding_is(tiny_config, head, frozen):
    assert FrozenLayout.of(frozen_prefix_model(tiny_config, head)).prefix_is_frozen is frozen


def test_disk_cache_is_reused_for_the_same_prefix_and_data_only(tiny_config, tmp_path):
    model = frozen_prefix_model(tiny_config, "untied")
    input_ids = tokens(tiny_config)
    first = cached_prefix(model, input_ids, 2, 4, False, tmp_path)
    [cache_file] = tmp_path.glob("prefix-*.safetensors")
    modified = cache_file.stat().st_mtime_ns
    assert torch.equal(cached_prefix(model, input_ids, 2, 4, False, tmp_path), first)
    assert cache_file.stat().st_mtime_ns == modified  # read, not recomputed
    cached_prefix(model, tokens(tiny_config, rows=5), 2, 4, False, tmp_path)  # other data: another entry
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(1.0)  # other prefix weights: another entry
    cached_prefix(model, input_ids, 2, 4, False, tmp_path)
    assert len(list(tmp_path.glob("prefix-*.safetensors"))) == 3
    assert not list(tmp_path.glob("*.partial"))


def test_prefix_is_computed_without_dropout_and_leaves_the_mode_alone(tiny_config):
    config = GPT2Config(**{**tiny_config.to_dict(), "n_layer": 3, "resid_pdrop": 0.5, "embd_pdrop": 0.5})
    model = GPT2LMHeadModel(config).train()
    input_ids = tokens(tiny_config)
    assert torch.equal(compute_prefix(model, input_ids, 2, 3, False), compute_prefix(model, input_ids, 2, 6, False))
    assert model.training


def test_trainer_on_the_cached_prefix_ends_with_the_same_weights(tiny_config, tmp_path):
    """A few Trainer steps on the tail with cached prefixes = the same steps on the whole model, dropout on."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from pipeline.training.prefix_cache import tail_training

    input_ids = tokens(tiny_config, rows=12)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        seed=0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )

    def full_batch(examples):
        ids = torch.stack([torch.tensor(example["input_ids"]) for example in examples])
        return {"input_ids": ids, "labels": ids}

    whole = frozen_prefix_model(tiny_config, "untied", dropout=0.3)
    Trainer(
        model=WholeModelTrainee(whole),
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": input_ids.tolist()}),
        data_collator=full_batch,
    ).train()
    tailed = frozen_prefix_model(tiny_config, "untied", dropout=0.3)
    tail, dataset = tail_training(tailed, input_ids, bf16=False, cache_dir=tmp_path / "cache", batch_size=4)
    Trainer(model=tail, args=args, train_dataset=dataset).train()
    for (name, expected), actual in zip(whole.state_dict().items(), tailed.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name


@pytest.mark.parametrize(
    ("model_type", "config"),
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True}),  # SmolLM2's and Llama-3.2-1B's tied head
        ("mistral", {"sliding_window": 4}),  # a sliding-window mask
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),  # per-layer masks
        ("qwen3", {}),  # q and k norms
        ("gpt_neox", {"hidden_dropout": 0.3, "attention_dropout": 0.3}),  # rotary on a quarter of each head
    ],
)
@pytest.mark.parametrize("head", ["untied", "frozen"])
def test_cached_and_uncached_paths_agree_on_every_family(tiny_lm, model_type, config, head):
    """Bitwise: the tail's blocks get the rotary cos/sin, masks and positions the model's own forward gives them."""
    model = tiny_lm(model_type, num_hidden_layers=3, **config)
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=True, head=head))
    model.train()
    assert_cached_equals_uncached(model, torch.randint(0, 100, (6, 16), generator=torch.Generator().manual_seed(1)))
