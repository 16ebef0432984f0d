import copy
import json

import pytest
import torch
from datasets import Dataset
from transformers import GPT2LMHeadModel
from transformers.activations import ACT2FN, NewGELUActivation

from pipeline.data.corpus import split_path
from pipeline.errors import UserError
from pipeline.evaluate import base_scores, evaluate, summary_table
from pipeline.evaluation.lm_metrics import score_stream
from pipeline.params import EVAL_SPLITS, EvaluateParams, Params

SCORES = {"perplexity": 12.0, "accuracy": 0.4, "loss": 2.4849, "tokens": 10_331}


def params_with(context: int, stride: int) -> Params:
    defaults = Params.defaults()
    return Params(**{**vars(defaults), "evaluate": EvaluateParams(context=context, stride=stride)})


def test_base_scores_measured_under_another_protocol_are_refused(tmp_path):
    path = tmp_path / "base.json"
    path.write_text(json.dumps({"validation": SCORES, "test": SCORES, "protocol": {"context": 64, "stride": 64}}))
    assert base_scores(path, params_with(64, 64)) == {"validation": SCORES, "test": SCORES}
    with pytest.raises(UserError, match=r"scored with \{'context': 64, 'stride': 64\}, not evaluate\.\*"):
        base_scores(path, params_with(64, 32))


def test_summary_table_names_the_protocol_and_the_tokens_scored():
    table = summary_table({"base": {"validation": SCORES, "test": SCORES}, "protocol": {"context": 64, "stride": 32}})
    lines = table.splitlines()
    assert lines[0].startswith("windows of 64 tokens, 32 scored per window")
    assert lines[2].split() == ["base", "validation", "2.4849", "12.00", "0.4000", "10,331"]


def test_evaluate_scores_the_activation_the_model_was_trained_with(tiny_config, tmp_path):
    """The train stage trains and validates with GPT-2's `gelu_new` in one kernel (pipeline/activations.py); evaluate
    scores that same function: bitwise the loss of the swapped model, within float32 rounding of the config's own."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config)
    as_configured, swapped = copy.deepcopy(model), copy.deepcopy(model)
    for block in swapped.transformer.h:
        block.mlp.act = ACT2FN["gelu_pytorch_tanh"]
    streams = {split: torch.randint(0, tiny_config.vocab_size, (300,)) for split in EVAL_SPLITS}
    for split, tokens in streams.items():
        split_path(tmp_path, split).parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict({"input_ids": tokens.tolist()}).to_parquet(split_path(tmp_path, split))

    scores = evaluate(model, tmp_path, params_with(32, 16))

    assert not any(isinstance(module, NewGELUActivation) for module in model.modules())
    for split, tokens in streams.items():
        assert scores[split]["loss"] == score_stream(swapped, tokens, 32, 16, batch_size=8).loss
        assert scores[split]["loss"] == pytest.approx(score_stream(as_configured, tokens, 32, 16, 8).loss, abs=1e-5)
