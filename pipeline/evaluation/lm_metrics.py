"""Streaming language-model metrics: mean token cross-entropy, perplexity and next-token accuracy.

Each batch is reduced to three numbers (summed loss, correct predictions, scored tokens) before the next one is
computed, so memory does not grow with the eval set (the original script kept every logit of the whole set).
The prediction at position t is scored against token t+1; blocks are packed text with no padding, so every
scored token is real text. The first token of each block has no prediction inside the block and is not scored.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class TokenScores:
    loss_sum: float = 0.0
    correct: int = 0
    tokens: int = 0

    def update(self, logits: torch.Tensor, input_ids: torch.Tensor) -> None:
        """Add one batch: logits (batch, seq, vocab) from the model, input_ids (batch, seq) it was given."""
        predictions = logits[:, :-1].float()
        targets = input_ids[:, 1:]
        self.loss_sum += F.cross_entropy(predictions.flatten(0, 1), targets.flatten(), reduction="sum").item()
        self.correct += (predictions.argmax(dim=-1) == targets).sum().item()
        self.tokens += targets.numel()

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens

    def as_dict(self) -> dict[str, float]:
        return {"perplexity": self.perplexity, "accuracy": self.accuracy, "loss": self.loss, "tokens": self.tokens}


@torch.inference_mode()
def score_blocks(model: nn.Module, blocks: torch.Tensor, batch_size: int, bf16: bool = False) -> TokenScores:
    """Score packed blocks (n_blocks, block_size) batch by batch; the model is put in eval mode (no dropout)."""
    model.eval()
    device = next(model.parameters()).device
    scores = TokenScores()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for start in tqdm(range(0, len(blocks), batch_size), desc="scoring", unit="batch", leave=False):
        batch = blocks[start : start + batch_size].to(device)
        with autocast:
            logits = model(input_ids=batch).logits
        scores.update(logits, batch)
    return scores
