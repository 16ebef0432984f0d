import json

import pytest

from pipeline.errors import UserError
from pipeline.evaluate import base_scores, summary_table
from pipeline.params import EvaluateParams, Params

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
