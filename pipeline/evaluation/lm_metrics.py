"""Streaming language-model metrics over a split's whole token stream: mean token cross-entropy, perplexity and
next-token accuracy, scored in (possibly overlapping) windows of `context` tokens.

A window feeds `context` tokens and is scored only at its last `stride` positions (the first window at all of
them), so every token of the stream but the very first is predicted exactly once, each with at least
`context - stride` tokens before it (the sliding window of HF's "Perplexity of fixed-length models" guide;
`stride = context` is disjoint windows). Each batch is reduced to three numbers before the next one is computed,
so memory does not grow with the split; the LM head runs only at scored positions, in chunks, since the head over
GPT-2's 50,257 words costs as much as a third of the body and its full logits are the largest tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

HEAD_CHUNK_ROWS = 1_024
"""Scored positions per LM-head call: 1,024 x 50,257 fp32 logits are 206 MB, whatever the batch and window."""


@dataclass(frozen=True)
class Window:
    start: int
    """First stream index fed to the model; it feeds `length` tokens and predicts the token after each."""
    length: int
    scored: int
    """How many of its last predictions are scored (the targets no earlier window scored)."""


def plan_windows(n_tokens: int, context: int, stride: int) -> Iterator[Window]:
    """The windows that score stream targets 1..n_tokens-1 once each; all `context` long unless the stream is shorter.

    Window k's last target is `context + (k-1) * stride` (the last one: the stream's end); it starts `context`
    tokens before that, so the final window keeps a full context even when it scores fewer than `stride` tokens.
    """
    scored_through = 0  # the last target scored so far
    while scored_through < n_tokens - 1:
        last_target = min(scored_through + (context if scored_through == 0 else stride), n_tokens - 1)
        start = max(0, last_target - context)
        yield Window(start=start, length=last_target - start, scored=last_target - scored_through)
        scored_through = last_target


@dataclass
class TokenScores:
    loss_sum: float = 0.0
    correct: int = 0
    tokens: int = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add scored predictions: logits (n, vocab) and the n tokens they predict."""
        logits = logits.float()
        self.loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        # max(dim).indices is argmax, the first maximal index included, in about half argmax's time on a CPU
        # (35 against 61 ms over 1,024 x 50,257 floats; docs/performance.md).
        self.correct += (logits.max(dim=-1).indices == targets).sum().item()
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


def head_logits(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head's logits in fp32, whatever precision the body ran in.

    A bf16 matmul rounds its result to 8 significant bits: on a trained model's logits (up to 15 on the offline tiny
    GPT-2) that alone moved the mean loss by 1.4e-4 nats, over the 1e-4 that bf16 scoring keeps to, while the bf16
    body moved it by 6e-5 (docs/performance.md). So under bf16 autocast the head alone runs in fp32: 14% more time
    per bf16 window at GPT-2 small's shapes, still 2.6x faster than fp32 scoring. Ways to keep the head in bf16
    were measured and dropped there: shifting each row by its largest logit before rounding fails on flat
    distributions, and a second bf16 pass for the rounding residual costs as much as the fp32 matmul."""
    with torch.autocast(hidden.device.type, enabled=False):
        return head(hidden.float())


@torch.no_grad()  # not inference_mode, under which autocast would recast every weight for every batch
def score_stream(
    model: nn.Module, tokens: torch.Tensor, context: int, stride: int, batch_size: int, bf16: bool = False
) -> TokenScores:
    """Score a 1-D token stream window by window, `batch_size` windows per forward; the model is put in eval mode
    (no dropout). `model` is a transformers causal LM (`base_model` gives hidden states, the output embeddings the
    head). In bf16, one autocast region spans the stream, so each weight is cast once (autocast caches the casts of
    parameters that require grad until its region ends), not once per batch: the same casts, fewer of them; the
    head runs in fp32 (`head_logits`), which keeps bf16 scores within 1e-4 nats of fp32 ones."""
    model.eval()
    device = next(model.parameters()).device
    body, head = model.base_model, model.get_output_embeddings()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    windows = list(plan_windows(len(tokens), context, stride))
    scores = TokenScores()
    with autocast:
        for first in tqdm(range(0, len(windows), batch_size), desc="scoring", unit="batch", leave=False):
            batch = windows[first : first + batch_size]
            inputs = torch.stack([tokens[w.start : w.start + w.length] for w in batch]).long().to(device)
            following = torch.stack([tokens[w.start + 1 : w.start + w.length + 1] for w in batch]).long().to(device)
            positions = torch.arange(inputs.shape[1], device=device)
            scored = positions >= torch.tensor([w.length - w.scored for w in batch], device=device)[:, None]
            targets = following[scored]
            hidden = body(input_ids=inputs, use_cache=False).last_hidden_state[scored]
            for row in range(0, len(hidden), HEAD_CHUNK_ROWS):
                logits = head_logits(head, hidden[row : row + HEAD_CHUNK_ROWS])
                scores.update(logits, targets[row : row + HEAD_CHUNK_ROWS])
    return scores
