"""The harness stage: lm-evaluation-harness's real code path on the offline tasks (local files, no hub), the
project's window scorer held to lm-eval's rolling log-likelihood, the report's differences and retention, and a
hub task without network as one paragraph and exit 2."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.errors import UserError
from pipeline.evaluation.harness import load_tasks, metrics, run_harness
from pipeline.evaluation.lm_metrics import score_stream
from pipeline.harness import base_report, finetuned_report, main
from pipeline.params import HarnessParams

REPO = Path(__file__).parents[1]
OFFLINE_TASKS = ["offline_wikitext", "offline_choice", "offline_last_word"]
AGREEMENT_NATS = 1e-5


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True, dtype="float32")
    return model.eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def offline_scores(tiny, offline_tasks):
    """lm-eval's scores of the tiny model on the first 5 examples of each offline task."""
    return run_harness(*tiny, load_tasks(OFFLINE_TASKS, str(offline_tasks)), limit=5, batch_size=4)


def pages(offline_tasks, count: int) -> list[str]:
    lines = (offline_tasks / "wikitext.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["page"] for line in lines[:count]]


def project_nll(model, tokenizer, text: str, context: int) -> tuple[float, int]:
    """The project's scorer on `[BOS] + tokens` with stride = context: total NLL (nats) and tokens scored."""
    stream = torch.tensor([tokenizer.bos_token_id, *tokenizer(text)["input_ids"]])
    scores = score_stream(model, stream, context=context, stride=context, batch_size=4)
    return scores.loss_sum, scores.tokens


def test_offline_tasks_run_through_lm_eval_with_their_metrics(offline_scores):
    assert offline_scores.examples == dict.fromkeys(sorted(OFFLINE_TASKS), 5)
    assert set(offline_scores.scores["offline_wikitext"]) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert set(offline_scores.scores["offline_choice"]) == {"acc", "acc_norm"}
    assert set(offline_scores.scores["offline_last_word"]) == {"perplexity", "acc"}
    assert offline_scores.lm_eval_version == "0.4.13"
    assert offline_scores.task_versions == dict.fromkeys(sorted(OFFLINE_TASKS), 1.0)


def test_project_scorer_agrees_with_lm_eval_rolling_loglikelihood_per_page(tiny, offline_tasks):
    """lm-eval's loglikelihood_rolling (HFLM, disjoint windows of max_length, the first token after the prefix
    token) against score_stream on [BOS] + tokens with stride = context: the same protocol, so the same nats."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = tiny
    context = 64  # several windows per page, so the window edges are compared too
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=context)
    texts = pages(offline_tasks, 3)
    requests = [Instance("loglikelihood_rolling", {}, (text,), index) for index, text in enumerate(texts)]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    for text, their_loglikelihood in zip(texts, theirs, strict=True):
        nll, tokens = project_nll(model, tokenizer, text, context)
        assert tokens == len(tokenizer(text)["input_ids"]) > 3 * context
        assert abs(nll / tokens - (-their_loglikelihood) / tokens) < AGREEMENT_NATS


def test_the_wikitext_task_bits_per_byte_is_the_project_scorers_nll_over_bytes(tiny, offline_tasks, offline_scores):
    """The whole task path (YAML, data, aggregation) at the model's full 256 positions: lm-eval's corpus bits per
    byte times ln 2 times bytes, per token, against the project's nats per token on the same five pages."""
    model, tokenizer = tiny
    texts = pages(offline_tasks, 5)
    totals = [project_nll(model, tokenizer, text, model.config.n_positions) for text in texts]
    nll, tokens = sum(t[0] for t in totals), sum(t[1] for t in totals)
    byte_count = sum(len(text.encode("utf-8")) for text in texts)
    their_nll = offline_scores.scores["offline_wikitext"]["bits_per_byte"] * math.log(2) * byte_count
    assert abs(nll / tokens - their_nll / tokens) < AGREEMENT_NATS
    words = sum(len(re.split(r"\s+", text)) for text in texts)  # lm-eval's count_words: a leading space counts one
    word_perplexity = offline_scores.scores["offline_wikitext"]["word_perplexity"]
    assert word_perplexity == pytest.approx(math.exp(nll / words), rel=1e-5)


def test_metric_keys_drop_the_default_filter_stderrs_and_labels():
    found = metrics({"alias": "x", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact_match,strict": 0.25, "name": 1})
    assert found == {"acc": 0.5, "exact_match_strict": 0.25}


HARNESS = HarnessParams(target_tasks=["wiki"], retention_tasks=["mc", "cloze"], limit=10, batch_size=2)


def scores(wiki_bpb: float, mc_acc: float, cloze_acc: float):
    from pipeline.evaluation.harness import HarnessScores

    return HarnessScores(
        scores={
            "cloze": {"acc": cloze_acc, "perplexity": 30.0},
            "mc": {"acc": mc_acc},
            "wiki": {"bits_per_byte": wiki_bpb},
        },
        examples={"cloze": 10, "mc": 10, "wiki": 4},
        task_versions={"cloze": 1.0, "mc": 1.0, "wiki": 2.0},
        lm_eval_version="0.4.13",
    )


def test_report_holds_differences_and_a_flat_retention_per_task():
    base = json.loads(json.dumps(base_report(scores(1.5, 0.5, 0.25), HARNESS)))  # as read back from the file
    report = finetuned_report(scores(1.25, 0.375, 0.5), base, HARNESS)
    assert report["retention"] == {"mc": -0.125, "cloze": 0.25}
    assert report["retention_mean"] == 0.0625
    assert report["difference"]["wiki"] == {"bits_per_byte": -0.25}
    assert report["difference"]["cloze"] == {"acc": 0.25, "perplexity": 0.0}
    assert report["base"]["mc"] == {"acc": 0.5} and report["finetuned"]["mc"] == {"acc": 0.375}
    assert report["lm_eval"] == {"version": "0.4.13", "task_versions": {"cloze": 1.0, "mc": 1.0, "wiki": 2.0}}


def test_base_scores_under_other_settings_or_without_accuracy_are_refused():
    base = base_report(scores(1.5, 0.5, 0.25), HARNESS)
    other = HarnessParams(target_tasks=["wiki"], retention_tasks=["mc", "cloze"], limit=20)
    with pytest.raises(UserError, match="rerun the harness_base stage"):
        finetuned_report(scores(1.5, 0.5, 0.25), base, other)
    no_accuracy = HarnessParams(target_tasks=[], retention_tasks=["wiki"], limit=10)
    with pytest.raises(UserError, match="wiki report no `acc`"):
        finetuned_report(scores(1.5, 0.5, 0.25), base_report(scores(1.5, 0.5, 0.25), no_accuracy), no_accuracy)


@pytest.mark.usefixtures("tracking_env")
def test_a_hub_task_offline_is_one_paragraph_and_exit_2(tmp_path, store, tiny_model_dir, capsys):
    """A task whose data is on the Hub, with HF_HUB_OFFLINE=1 (tests/conftest.py) and an empty cache: the stage
    names what to set instead of a traceback from `datasets`."""
    import yaml

    root = store["repo"]
    shutil.copytree(tiny_model_dir, root / "local/models/tiny", dirs_exist_ok=True)
    task_dir = root / "local/tasks/hub"
    task_dir.mkdir(parents=True, exist_ok=True)
    hub_task = {"task": "hub_cloze", "dataset_path": "EleutherAI/lambada_openai", "output_type": "loglikelihood",
                "test_split": "test", "doc_to_text": "{{text}}", "doc_to_target": "{{text}}",
                "metric_list": [{"metric": "acc"}]}  # fmt: skip
    (task_dir / "hub_cloze.yaml").write_text(yaml.safe_dump(hub_task))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["name_or_path"] = "local/models/tiny"
    raw["evaluate"] |= {"context": 64, "stride": 32}
    raw["tokenize"]["block_size"] = 64
    raw["harness"] |= {"target_tasks": [], "retention_tasks": ["hub_cloze"], "task_dir": "local/tasks/hub"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))

    with pytest.raises(SystemExit) as exited:
        main(["--params", str(params), "--model", "base", "--metrics", str(tmp_path / "harness_base.json")])

    assert exited.value.code == 2
    stderr = capsys.readouterr().err  # the stage's logging goes there (pipeline/tracking/cli.py)
    [message] = [line for line in stderr.splitlines() if " ERROR " in line]  # one line: a paragraph, no traceback
    assert "hub_cloze" in message and "HF_DATASETS_OFFLINE=1" in message and "python -m pipeline.offline" in message
    assert "Traceback" not in stderr
    assert not (tmp_path / "harness_base.json").exists()
