import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from pipeline.evaluation.lm_metrics import TokenScores, score_blocks


def test_prediction_at_t_is_scored_against_token_t_plus_1():
    vocab = 5
    input_ids = torch.tensor([[1, 2, 3, 4]])
    # Logits that put all mass on the *next* token at positions 0 and 1, and on a wrong token at position 2.
    logits = torch.full((1, 4, vocab), -1e4)
    logits[0, 0, 2] = logits[0, 1, 3] = logits[0, 2, 0] = 0.0
    logits[0, 3, 4] = 0.0  # the last position predicts past the block and must not be scored
    scores = TokenScores()
    scores.update(logits, input_ids)
    assert scores.tokens == 3
    assert scores.correct == 2
    assert scores.accuracy == pytest.approx(2 / 3)


def test_perplexity_is_exp_of_mean_token_loss():
    torch.manual_seed(0)
    logits, input_ids = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    scores = TokenScores()
    scores.update(logits, input_ids)
    expected_loss = F.cross_entropy(logits[:, :-1].reshape(-1, 11), input_ids[:, 1:].reshape(-1)).item()
    assert scores.loss == pytest.approx(expected_loss, rel=1e-6)
    assert scores.perplexity == pytest.approx(math.exp(expected_loss), rel=1e-6)


def test_streaming_equals_all_at_once_and_matches_the_models_own_loss(tiny_config):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config)
    blocks = torch.randint(0, tiny_config.vocab_size, (7, 16))  # 7 blocks: batches of 3 leave a short last one
    streamed = score_blocks(model, blocks, batch_size=3)
    at_once = score_blocks(model, blocks, batch_size=len(blocks))
    assert streamed.tokens == at_once.tokens == 7 * 15
    assert streamed.correct == at_once.correct
    assert streamed.loss == pytest.approx(at_once.loss, rel=1e-6)
    with torch.no_grad():
        model_loss = model(input_ids=blocks, labels=blocks).loss.item()  # HF shifts labels the same way
    assert streamed.loss == pytest.approx(model_loss, rel=1e-5)


def test_scoring_turns_dropout_off(tiny_config):
    config = type(tiny_config)(**{**tiny_config.to_dict(), "resid_pdrop": 0.5, "embd_pdrop": 0.5})
    model = GPT2LMHeadModel(config).train()
    blocks = torch.randint(0, config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(1))
    assert score_blocks(model, blocks, 2).loss == score_blocks(model, blocks, 2).loss
