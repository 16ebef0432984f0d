"""The LM head and the causal-LM cross-entropy in one autograd function, for training.

`ForCausalLMLoss` (transformers) computes the head's logits, upcasts them to fp32, takes their log-softmax and, in
backward, fills a zero gradient, scatters into it, runs the log-softmax backward and casts the result back for the
head's matmul. With GPT-2's 50,257-word vocabulary, each of those is a pass over B·T·V floats (206 MB at the default
8 × 128 block) through main memory, a large share of a CPU step (docs/performance.md). Here the softmax and its
gradient are computed once, in the forward pass, a few rows at a time so that the fp32 temporaries stay in cache,
and the gradient overwrites the logits' own buffer; backward is then the head's two matmuls. The loss is the same
function, shift and `ignore_index` included; its gradient differs from the unfused one only in rounding (in bf16,
the 1/N scaling is applied to the other operand of each matmul). A trainable head is padded to a multiple of 64 rows
for its matmuls (see VOCAB_MULTIPLE); the padding gets no probability.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""Label of a position that is not scored (transformers' convention)."""
VOCAB_MULTIPLE = 64
"""A trainable head is padded to a multiple of this many rows (50,304 for GPT-2, as nanoGPT pads it): the
weight-gradient matmul of the 50,257-row head runs markedly slower unpadded (docs/performance.md)."""
ROWS_PER_CHUNK = 8
"""Tokens whose softmax is computed at once on a CPU: 8 × 50,257 fp32 values (1.6 MB) stay in a 2 MB L2 cache per
core; larger chunks were slower (docs/performance.md)."""


def cast_head(weight: torch.Tensor, dtype: torch.dtype, vocab_multiple: int = VOCAB_MULTIPLE) -> torch.Tensor:
    """`weight` in `dtype`; a trainable one padded with zero rows to a multiple of `vocab_multiple`."""
    vocab_size, width = weight.shape
    if not weight.requires_grad or vocab_size % vocab_multiple == 0:
        return weight.to(dtype)
    padded = torch.empty(-(-vocab_size // vocab_multiple) * vocab_multiple, width, dtype=dtype, device=weight.device)
    padded[:vocab_size] = weight
    padded[vocab_size:] = 0
    return padded


def loss_and_logit_gradient_(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Each row's cross-entropy against `targets` (0 where it is IGNORE_INDEX); overwrites `logits` with the
    gradient of their sum, softmax - one_hot(target), in the logits' dtype. Columns past `vocab_size` are padding."""
    logits[:, vocab_size:] = float("-inf")  # no probability: they add nothing to the softmax and get no gradient
    scored = targets != IGNORE_INDEX
    safe_targets = torch.where(scored, targets, 0).unsqueeze(1)
    losses = torch.empty(len(targets), dtype=torch.float32, device=logits.device)
    # On a GPU, bandwidth is ample and every op is a kernel launch: one chunk.
    rows_per_chunk = ROWS_PER_CHUNK if logits.device.type == "cpu" else len(targets)
    for start in range(0, len(targets), rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        log_probs = torch.log_softmax(logits[rows], dim=-1, dtype=torch.float32)
        losses[rows] = -log_probs.gather(1, safe_targets[rows]).squeeze(1)
        grad = log_probs.exp_()
        grad.scatter_add_(1, safe_targets[rows], grad.new_full(safe_targets[rows].shape, -1.0))
        logits[rows] = grad
    if not bool(scored.all()):
        logits.mul_(scored.unsqueeze(1))
    return torch.where(scored, losses, 0.0)


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`; see the module docstring."""

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_multiple: int
    ) -> torch.Tensor:
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        with torch.autocast(device_type, enabled=False):
            weight_cast = cast_head(weight, dtype, vocab_multiple)
            logits = hidden.to(dtype) @ weight_cast.T
            losses = loss_and_logit_gradient_(logits, targets, vocab_size=len(weight))
        ctx.save_for_backward(logits, hidden, weight_cast)
        ctx.input_dtypes, ctx.vocab_size = (hidden.dtype, weight.dtype), len(weight)
        return losses.sum()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_logits, hidden, weight_cast = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.input_dtypes
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (grad_logits @ weight_cast).to(hidden_dtype) * grad_loss
        if ctx.needs_input_grad[1]:
            # Scaled on the small side (tokens x n_embd), not on the vocabulary-sized result.
            scaled_hidden = (hidden * grad_loss).to(grad_logits.dtype)
            grad_weight = (grad_logits.T @ scaled_hidden)[: ctx.vocab_size].to(weight_dtype)
        return grad_hidden, grad_weight, None, None


def causal_lm_loss(
    hidden_states: torch.Tensor,
    head_weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    vocab_multiple: int = VOCAB_MULTIPLE,
) -> torch.Tensor:
    """What `GPT2LMHeadModel(...).loss` is for the last hidden states (after ln_f): the mean cross-entropy of each
    position's prediction of the next label, skipping `IGNORE_INDEX`; divided by `num_items_in_batch` instead of
    the number scored when the Trainer passes it (the scored positions of the whole accumulated batch).

    Under autocast the matmuls run in its dtype and the softmax in fp32, as the unfused loss does.
    """
    hidden = hidden_states[:, :-1].reshape(-1, hidden_states.shape[-1])  # the last position predicts nothing
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    total = _LinearCrossEntropy.apply(hidden, head_weight, targets, vocab_multiple)
    if num_items_in_batch is None:
        return total / (targets != IGNORE_INDEX).sum()
    return total / num_items_in_batch
