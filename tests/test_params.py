from pathlib import Path

import pytest
import yaml
from transformers import GPT2Config

from pipeline.errors import UserError
from pipeline.params import ParamsError, hydra_overrides, load_params, read_overrides

REPO_PARAMS = Path(__file__).parents[1] / "params.yaml"


def write_params(folder: Path, overrides: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """The repo's params.yaml with dotted-key overrides applied (and dotted keys or sections dropped)."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        raw.setdefault(section, {})[key] = value
    for dotted in drop:
        section, _, key = dotted.partition(".")
        if key:
            del raw[section][key]
        else:
            del raw[section]
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def problems(path: Path, **kwargs) -> str:
    with pytest.raises(ParamsError) as caught:
        load_params(path, **kwargs)
    return str(caught.value)


def test_repo_params_load_with_documented_defaults():
    params = load_params(REPO_PARAMS)
    assert params.model.name_or_path == "gpt2"
    assert (params.data.source, params.data.hub_config) == ("hub", "wikitext-2-raw-v1")
    assert (params.freeze.trainable_blocks, params.freeze.train_ln_f, params.freeze.head) == (1, False, "tied")
    assert params.train.learning_rate == pytest.approx(5e-5)
    assert params.flat()["freeze.head"] == "tied"
    assert (params.evaluate.context, params.evaluate.stride) == (1024, 512)  # HF's sliding window on GPT-2's context


def test_digest_changes_with_any_value_and_only_then(tmp_path):
    same = load_params(write_params(tmp_path)).digest()
    assert same == load_params(REPO_PARAMS).digest()
    assert load_params(write_params(tmp_path, {"train.seed": 43})).digest() != same


def test_every_problem_is_reported_at_once(tmp_path):
    path = write_params(
        tmp_path,
        {"train.learnin_rate": 0.1, "train.batch_size": "8", "evaluate.batch_size": 0, "freeze.head": "both"},
        drop=("tokenize", "data.split_seed"),
    )
    message = problems(path)
    assert "5 problem(s)" in message
    assert "train.learnin_rate: unknown key" in message
    assert "train.batch_size: expected int, got '8'" in message
    assert "freeze.head: expected one of 'tied', 'untied', 'frozen', got 'both'" in message
    assert "tokenize: missing section" in message
    assert "data.split_seed: missing" in message
    # Range checks run once the types are right, so this one waits for the next load.
    assert "evaluate.batch_size" not in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"train.learning_rate": 0.0}, "train.learning_rate: must be > 0, got 0.0"),
        ({"train.batch_size": -1}, "train.batch_size: must be > 0, got -1"),
        ({"tokenize.block_size": 0}, "tokenize.block_size: must be > 0"),
        ({"train.max_steps": 0}, "train.max_steps: must be > 0 or null"),
        ({"train.processes": 0}, "train.processes: must be > 0, got 0"),
        ({"data.max_test_lines": -5}, "data.max_test_lines: must be > 0 or null"),
        ({"freeze.trainable_blocks": -1}, "freeze.trainable_blocks: must be >= 0"),
        ({"evaluate.context": 0, "evaluate.stride": 0}, "evaluate.context: must be > 0, got 0"),
        ({"evaluate.stride": 0}, "evaluate.stride: must be > 0, got 0"),
        ({"evaluate.context": 256, "evaluate.stride": 257}, "evaluate.stride: 257 exceeds evaluate.context (256)"),
        ({"data.source": "local"}, "data.source is local: set data.single_file, or every split's file"),
        (
            {"data.source": "local", "data.single_file": "a.txt", "data.split_fractions": [0.5, 0.5]},
            "data.split_fractions: three positive",
        ),
        (
            {"data.source": "local", "data.single_file": "a.txt", "data.train_file": "b.txt"},
            "both set",
        ),
    ],
)
def test_out_of_range_values_are_refused(tmp_path, overrides, expected):
    assert expected in problems(write_params(tmp_path, overrides))


def test_a_freeze_policy_that_trains_nothing_is_refused_and_each_way_out_is_accepted(tmp_path):
    nothing = {"freeze.trainable_blocks": 0, "freeze.head": "frozen", "freeze.train_ln_f": False}
    message = problems(write_params(tmp_path, nothing))
    assert "freeze: trainable_blocks 0, head frozen and train_ln_f false train nothing" in message
    for way_out in ({"freeze.trainable_blocks": 1}, {"freeze.head": "untied"}, {"freeze.train_ln_f": True}):
        load_params(write_params(tmp_path, nothing | way_out))


def test_booleans_are_not_numbers_and_ints_are_floats(tmp_path):
    assert "train.batch_size: expected int, got True" in problems(write_params(tmp_path, {"train.batch_size": True}))
    assert load_params(write_params(tmp_path, {"train.epochs": 2})).train.epochs == 2


def test_a_decimal_string_in_a_float_field_is_the_float_it_means_and_other_text_is_refused(tmp_path):
    # `5e-05` is how DVC writes a swept 5e-5 back into params.yaml; YAML 1.1 needs a dot to read it as a float.
    path = write_params(tmp_path)
    path.write_text(path.read_text().replace("learning_rate: 5.0e-05", "learning_rate: 5e-05"))
    assert yaml.safe_load(path.read_text())["train"]["learning_rate"] == "5e-05"
    assert load_params(path).train.learning_rate == 5e-5
    fractions = load_params(write_params(tmp_path, {"data.split_fractions": ["8e-1", 0.1, "1E-1"]})).data
    assert fractions.split_fractions == [0.8, 0.1, 0.1]
    message = problems(write_params(tmp_path, {"train.learning_rate": "fast", "train.batch_size": "16"}))
    assert "train.learning_rate: expected float, got 'fast'" in message
    assert "train.batch_size: expected int, got '16'" in message  # only float fields read text as numbers


def test_a_profile_may_give_a_float_as_dvc_writes_it(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("train:\n  learning_rate: 5e-05\n")
    assert read_overrides(profile) == {"train.learning_rate": 5e-5}


@pytest.mark.parametrize(
    ("content", "expected"),
    [("train: [unclosed", "not valid YAML"), ("- a\n- b\n", "must be a mapping of sections"), ("", "got NoneType")],
)
def test_unreadable_yaml_is_one_clear_error(tmp_path, content, expected):
    path = tmp_path / "params.yaml"
    path.write_text(content)
    assert expected in problems(path)


def test_missing_file_says_where_to_run(tmp_path):
    assert "not found" in problems(tmp_path / "nope.yaml")


def test_model_config_checks_join_the_same_report(tmp_path, tiny_config):
    path = write_params(tmp_path, {"tokenize.block_size": 65, "freeze.trainable_blocks": 3, "evaluate.stride": 32})
    message = problems(path, load_model_config=lambda name: tiny_config)
    assert "3 problem(s)" in message
    assert "block_size: 65 exceeds the model's n_positions (64)" in message
    assert "trainable_blocks: 3 exceeds the model's n_layer (2)" in message
    assert "evaluate.context: 1024 exceeds the model's n_positions (64)" in message
    at_limits = {"tokenize.block_size": 64, "freeze.trainable_blocks": 2, "evaluate.context": 64, "evaluate.stride": 64}
    params = load_params(write_params(tmp_path, at_limits), load_model_config=lambda name: tiny_config)
    assert (params.tokenize.block_size, params.evaluate.context, params.evaluate.stride) == (64, 64, 64)


def test_unloadable_model_config_is_reported_as_a_problem(tmp_path):
    def unreachable(name):
        raise UserError(f"model.name_or_path={name!r}: could not load")

    assert "model.name_or_path='gpt2': could not load" in problems(
        write_params(tmp_path), load_model_config=unreachable
    )


def test_real_gpt2_shapes_accept_the_defaults():
    assert load_params(REPO_PARAMS, load_model_config=lambda name: GPT2Config()).tokenize.block_size == 128


def test_checkpoint_params_take_null_and_refuse_what_would_never_save(tmp_path):
    assert load_params(write_params(tmp_path, {"train.checkpoint_steps": None})).train.checkpoint_steps is None
    message = problems(write_params(tmp_path, {"train.checkpoint_steps": 0, "train.keep_checkpoints": 0}))
    assert "train.checkpoint_steps: must be > 0 or null, got 0" in message
    assert "train.keep_checkpoints: must be > 0, got 0" in message


def test_a_profile_is_read_as_the_dotted_overrides_dvc_takes(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("train:\n  batch_size: 16\n  bf16: false\n  max_steps: null\nmodel:\n  name_or_path: local/m\n")
    overrides = read_overrides(profile)
    assert overrides == {
        "train.batch_size": 16,
        "train.bf16": False,
        "train.max_steps": None,
        "model.name_or_path": "local/m",
    }
    assert hydra_overrides(overrides) == [
        "train.batch_size=16", "train.bf16=false", "train.max_steps=null", "model.name_or_path=local/m"
    ]  # fmt: skip


def test_a_profile_with_unknown_keys_or_wrong_types_is_refused_with_every_problem(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("train:\n  learnin_rate: 0.1\n  batch_size: '8'\nnope:\n  key: 1\n")
    with pytest.raises(ParamsError) as error:
        read_overrides(profile)
    message = str(error.value)
    assert "has 3 problem(s)" in message
    assert "train.learnin_rate: unknown key" in message and "train.batch_size: expected int, got '8'" in message
    assert "nope: not a section of params.yaml" in message


def test_method_defaults_to_freeze_and_lora_to_every_matrix_of_every_block():
    params = load_params(REPO_PARAMS)
    assert params.finetune.method == "freeze"
    lora = params.lora
    assert (lora.rank, lora.alpha, lora.dropout, lora.adapted_blocks) == (8, 16.0, 0.1, None)
    assert lora.target_modules == ["attn_qkv", "attn_out", "mlp_in", "mlp_out"]


def test_bad_lora_params_are_refused_at_once_each_named(tmp_path):
    bad = {
        "finetune.method": "lora", "lora.rank": 0, "lora.alpha": -1.0, "lora.dropout": 1.0,
        "lora.target_modules": ["attn_qkv", "attn_qkv"], "lora.adapted_blocks": 0,
    }  # fmt: skip
    message = problems(write_params(tmp_path, bad))
    assert "5 problem(s)" in message
    assert "lora.rank: must be > 0, got 0" in message
    assert "lora.alpha: must be > 0, got -1.0" in message
    assert "lora.dropout: must be in [0, 1), got 1.0" in message
    assert "lora.target_modules: one or more of attn_qkv, attn_out, mlp_in, mlp_out, each once" in message
    assert "lora.adapted_blocks: must be > 0 or null (every block), got 0" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"finetune.method": "adapters"}, "finetune.method: expected one of 'freeze', 'lora', 'full', got 'adapters'"),
        ({"lora.target_modules": ["attn.c_attn"]}, "lora.target_modules: expected a list of one of 'attn_qkv'"),
        ({"lora.target_modules": []}, "lora.target_modules: one or more of"),
        ({"lora.rank": 4.0}, "lora.rank: expected int, got 4.0"),
        ({"lora.lr": 1.0}, "lora.lr: unknown key"),
    ],
)
def test_lora_types_and_names_are_checked(tmp_path, overrides, expected):
    assert expected in problems(write_params(tmp_path, overrides))


def test_under_lora_the_freeze_section_is_not_read_so_it_cannot_conflict(tmp_path, tiny_config):
    """A freeze policy that trains nothing, or more blocks than the model has, is refused under method freeze and
    no error under lora (its rule: every pretrained weight stays frozen, whatever the freeze section says); there
    the lora section's own depth is checked against the model instead."""
    fits_tiny = {"tokenize.block_size": 64, "evaluate.context": 64, "evaluate.stride": 64}
    model_config = {"load_model_config": lambda name: tiny_config}
    trains_nothing = {"freeze.trainable_blocks": 0, "freeze.head": "frozen", "freeze.train_ln_f": False}
    too_deep = {"freeze.trainable_blocks": 3}
    for freeze, refusal in ((trains_nothing, "train nothing"), (too_deep, "trainable_blocks: 3 exceeds")):
        assert refusal in problems(write_params(tmp_path, {**fits_tiny, **freeze}), **model_config)
        lora = write_params(tmp_path, {**fits_tiny, **freeze, "finetune.method": "lora"})
        assert load_params(lora, **model_config).finetune.method == "lora"
    path = write_params(tmp_path, {**fits_tiny, "finetune.method": "lora", "lora.adapted_blocks": 3})
    assert "lora.adapted_blocks: 3 exceeds the model's n_layer (2)" in problems(path, **model_config)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"train.learning_rate": float("inf")}, "train.learning_rate: must be a finite number, got inf"),
        ({"train.learning_rate": float("nan")}, "train.learning_rate: must be a finite number, got nan"),
        ({"lora.alpha": float("-inf")}, "lora.alpha: must be a finite number, got -inf"),
        ({"data.split_fractions": [float("nan"), 0.5, 0.5]}, "data.split_fractions: must be a finite number"),
        ({"tokenize.block_size": 1}, "tokenize.block_size: must be >= 2 (a block of 1 token has no next token"),
        ({"evaluate.context": 1, "evaluate.stride": 1}, "evaluate.context: must be >= 2"),
    ],
)
def test_non_finite_floats_and_one_token_blocks_are_refused(tmp_path, overrides, expected):
    assert expected in problems(write_params(tmp_path, overrides))


def test_yaml_inf_and_nan_are_refused_with_the_other_problems(tmp_path):
    path = write_params(tmp_path, {"tokenize.block_size": 1})
    path.write_text(path.read_text().replace("learning_rate: 5.0e-05", "learning_rate: .inf"))
    message = problems(path)
    assert "2 problem(s)" in message and "train.learning_rate: must be a finite number, got inf" in message
    assert load_params(write_params(tmp_path, {"tokenize.block_size": 2})).tokenize.block_size == 2
