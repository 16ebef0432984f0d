import json

import pytest
import torch
from datasets import Dataset
from transformers import GPT2LMHeadModel
from transformers.activations import NewGELUActivation

from pipeline.data.corpus import write_splits
from pipeline.errors import UserError
from pipeline.evaluate import base_scores, evaluate, summary_table
from pipeline.params import EvaluateParams, Params

SCORES = {"perplexity": 12.0, "accuracy": 0.4, "loss": 2.4849, "tokens": 10_331}


def params_with(context: int, stride: int, bf16: bool = False) -> Params:
    defaults = Params.defaults()
    return Params(**{**vars(defaults), "evaluate": EvaluateParams(context=context, stride=stride, bf16=bf16)})


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


def test_bf16_evaluation_runs_gelu_in_one_kernel_and_fp32_as_the_config_builds_it(tmp_path, tiny_config):
    stream = Dataset.from_dict({"input_ids": torch.randint(0, 100, (80,)).tolist()})
    write_splits(tmp_path, {"validation": stream, "test": stream})
    scores = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(tiny_config)
        scores[bf16] = evaluate(model, tmp_path, params_with(32, 16, bf16))["validation"]["loss"]
        assert isinstance(model.transformer.h[0].mlp.act, NewGELUActivation) != bf16
    assert scores[True] == pytest.approx(scores[False], abs=1e-2)  # bf16 rounding, on a tiny random model
