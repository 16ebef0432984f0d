import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from pipeline.data.blocks import tokenize_text
from pipeline.evaluation import lm_metrics
from pipeline.evaluation.lm_metrics import TokenScores, Window, plan_windows, score_stream


def scored_targets(windows: list[Window]) -> list[int]:
    """Stream indices of the tokens the windows score: a window feeding [start, start+length) predicts the token
    after each of them, and its last `scored` predictions count."""
    end = lambda w: w.start + w.length  # noqa: E731
    return [target for w in windows for target in range(end(w) - w.scored + 1, end(w) + 1)]


@pytest.mark.parametrize(
    ("n_tokens", "context", "stride"),
    [(49, 16, 16), (50, 16, 16), (100, 16, 5), (100, 16, 1), (1000, 64, 48), (37, 8, 3), (5, 16, 4), (17, 16, 16)],
)
def test_every_token_but_the_first_is_scored_exactly_once(n_tokens, context, stride):
    windows = list(plan_windows(n_tokens, context, stride))
    assert scored_targets(windows) == list(range(1, n_tokens))
    assert all(w.length == min(context, n_tokens - 1) and w.start >= 0 for w in windows)
    assert all(0 < w.scored <= stride for w in windows[1:])
    # every scored prediction sees at least context - stride earlier tokens besides its own
    assert all(w.length - w.scored >= context - stride for w in windows[1:])


def test_windows_worked_out_by_hand():
    # 10 tokens, targets 1..9: the first window scores 1..4, the next 5..7, the last (a full window) 8..9
    assert list(plan_windows(10, context=4, stride=3)) == [Window(0, 4, 4), Window(3, 4, 3), Window(5, 4, 2)]


def test_scores_count_loss_and_correct_predictions():
    vocab = 5
    logits = torch.full((3, vocab), -1e4)
    logits[0, 2] = logits[1, 3] = logits[2, 0] = 0.0
    scores = TokenScores()
    scores.update(logits, torch.tensor([2, 3, 4]))
    assert (scores.tokens, scores.correct) == (3, 2)
    assert scores.loss == pytest.approx(1e4 / 3)


def test_stride_equal_to_context_is_disjoint_windows_scored_in_full(tiny_config):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config)
    stream = torch.randint(0, tiny_config.vocab_size, (3 * 16 + 1,))
    scores = score_stream(model, stream, context=16, stride=16, batch_size=2)
    with torch.no_grad():  # independent: full logits of three disjoint 16-token inputs, each predicting the next 16
        logits = model(input_ids=stream[:-1].view(3, 16)).logits
    losses = F.cross_entropy(logits.reshape(-1, tiny_config.vocab_size), stream[1:], reduction="none")
    assert scores.tokens == 48
    assert scores.loss == pytest.approx(losses.mean().item(), rel=1e-5)
    assert scores.correct == (logits.argmax(-1).flatten() == stream[1:]).sum().item()
    assert scores.perplexity == pytest.approx(math.exp(losses.mean().item()), rel=1e-5)


def test_batch_size_does_not_change_the_scores(tiny_config):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config)
    stream = torch.randint(0, tiny_config.vocab_size, (203,), dtype=torch.int32)  # stride 12 does not divide it
    one = score_stream(model, stream, context=32, stride=12, batch_size=1)
    many = score_stream(model, stream, context=32, stride=12, batch_size=7)
    assert one.tokens == many.tokens == 202
    assert (one.correct, one.loss) == (many.correct, pytest.approx(many.loss, rel=1e-6))


class PeriodicCopyLM(nn.Module):
    """A model that context helps, exactly: on a stream repeating every `period` tokens it predicts the token
    `period` back when its window holds it (logit 10 on it), and is uniform (loss ln V) where it does not."""

    def __init__(self, vocab: int, period: int) -> None:
        super().__init__()
        self.vocab, self.period = vocab, period
        self.head = nn.Linear(vocab, vocab, bias=False)
        nn.init.eye_(self.head.weight)
        self.head.weight.data *= 10
        self.base_model = self._hidden_states

    def _hidden_states(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        # use_cache: the scorer turns transformers' key/value cache off (it scores each window once); nothing to keep
        hidden = torch.zeros(*input_ids.shape, self.vocab)
        lag = self.period - 1  # position p predicts token p+1, equal to token p+1-period
        hidden[:, lag:] = F.one_hot(input_ids[:, : input_ids.shape[1] - lag], self.vocab).float()
        return SimpleNamespace(last_hidden_state=hidden)

    def get_output_embeddings(self) -> nn.Module:
        return self.head


def test_a_sliding_window_scores_lower_than_disjoint_windows_where_context_helps():
    vocab, period, context = 11, 7, 16
    model = PeriodicCopyLM(vocab, period)
    stream = torch.randint(0, vocab, (period,), generator=torch.Generator().manual_seed(0)).repeat(8)[: 3 * 16 + 1]
    uniform, copied = math.log(vocab), math.log(1 + (vocab - 1) * math.exp(-10))
    disjoint = score_stream(model, stream, context, stride=context, batch_size=2)
    sliding = score_stream(model, stream, context, stride=4, batch_size=2)
    # Disjoint: the first period-1 = 6 positions of each of the 3 windows cannot see a period back. Sliding by 4:
    # only the first window's 6 (later windows score positions 12..15, which all can).
    assert disjoint.tokens == sliding.tokens == 48
    assert disjoint.loss == pytest.approx((18 * uniform + 30 * copied) / 48, rel=1e-6)
    assert sliding.loss == pytest.approx((6 * uniform + 42 * copied) / 48, rel=1e-6)
    assert sliding.loss < disjoint.loss


def test_scoring_turns_dropout_off(tiny_config):
    config = type(tiny_config)(**{**tiny_config.to_dict(), "resid_pdrop": 0.5, "embd_pdrop": 0.5})
    model = GPT2LMHeadModel(config).train()
    stream = torch.randint(0, config.vocab_size, (70,), generator=torch.Generator().manual_seed(1))
    assert score_stream(model, stream, 16, 8, 2).loss == score_stream(model, stream, 16, 8, 2).loss


def test_bf16_scoring_casts_each_weight_once_per_stream_whatever_the_batches(tiny_config):
    """Autocast keeps its casts of parameters only within one region (and not under inference_mode), so scoring
    opens one region for the whole stream: a block's weight is cast to bf16 once, not once per batch."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config)
    stream = torch.randint(0, tiny_config.vocab_size, (16 * 6 + 1,))
    qkv_shape = [tiny_config.n_embd, 3 * tiny_config.n_embd]  # the shape of each block's c_attn weight, and no other
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        scores = score_stream(model, stream, context=16, stride=16, batch_size=2, bf16=True)  # 3 batches
    casts = [e for e in profiler.key_averages(group_by_input_shape=True) if e.key == "aten::_to_copy"]
    assert sum(e.count for e in casts if e.input_shapes and e.input_shapes[0] == qkv_shape) == tiny_config.n_layer
    # the same numbers as a region per batch: each batch's two disjoint windows scored as a stream of their own
    parts = [score_stream(model, stream[32 * i : 32 * i + 33], 16, 16, batch_size=2, bf16=True) for i in range(3)]
    assert (scores.loss_sum, scores.correct, scores.tokens) == (
        parts[0].loss_sum + parts[1].loss_sum + parts[2].loss_sum,
        sum(p.correct for p in parts),
        16 * 6,
    )


def test_accuracy_counts_a_tie_as_argmax_does_for_the_first_maximal_word_only():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 5.0]], dtype=torch.bfloat16)
    for targets, correct in (([1, 0, 3], 3), ([2, 1, 3], 1)):
        scores = TokenScores()
        scores.update(logits, torch.tensor(targets))
        assert scores.correct == correct == (logits.float().argmax(-1) == torch.tensor(targets)).sum().item()


def test_bf16_scoring_keeps_a_trained_models_loss_within_1e_4_of_fp32(tiny_model_dir, offline_corpus):
    """The pretrained tiny GPT-2 (logits up to about 15) at the offline profile's protocol. With the head in bf16 the
    logits are rounded to 8 significant bits, errors of up to 0.03 that moved this loss by 0.9-2.5e-4 nats
    depending on the kernels' summation order (threads); with the head in fp32 only the body's rounding is left."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lines = offline_corpus["validation"].read_text(encoding="utf-8").splitlines(keepends=True)
    stream = torch.from_numpy(tokenize_text(lines, AutoTokenizer.from_pretrained(tiny_model_dir))).long()
    fp32 = score_stream(model, stream, 64, 32, batch_size=32).loss
    assert abs(score_stream(model, stream, 64, 32, batch_size=32, bf16=True).loss - fp32) < 1e-4

    head = model.get_output_embeddings()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.base_model(input_ids=stream[:64][None]).last_hidden_state[0]
        rounded, ours = head(hidden).float(), lm_metrics.head_logits(head, hidden)
    with torch.no_grad():
        exact = head(hidden.float())  # outside autocast, which would round it again
    assert torch.equal(ours, exact)
    assert (rounded - exact).abs().max() > 1e-2


def test_head_logits_are_the_fp32_heads_under_autocast():
    torch.manual_seed(0)
    head = nn.Linear(16, 40)
    hidden = torch.randn(5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lm_metrics.head_logits(head, hidden.to(torch.bfloat16))
    assert logits.dtype == torch.float32
    assert torch.equal(logits, head(hidden.to(torch.bfloat16).float()))
