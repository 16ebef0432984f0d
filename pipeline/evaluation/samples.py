"""Fixed-prompt continuations of the base and the fine-tuned model, side by side: what a drop in perplexity reads
like. Greedy decoding, so a rerun writes the same bytes."""

from __future__ import annotations

import torch

HEADER = "| prompt | base | fine-tuned |\n|---|---|---|\n"


@torch.no_grad()
def continue_prompts(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The greedy continuation of each prompt (the new text only), one prompt at a time: no padding to get wrong."""
    model.eval()
    continuations = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt")
        generated = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,  # GPT-2 has no pad token; one prompt needs none, but generate asks
        )
        continuations.append(tokenizer.decode(generated[0, encoded["input_ids"].shape[1] :]))
    return continuations


def samples_markdown(prompts: list[str], base: list[str], finetuned: list[str], max_new_tokens: int) -> str:
    """A Markdown table, one row per prompt; line breaks shown as ↵ and pipes escaped so each cell stays one cell."""
    rows = [f"| {_cell(p)} | {_cell(b)} | {_cell(f)} |\n" for p, b, f in zip(prompts, base, finetuned, strict=True)]
    intro = f"# Samples\n\nGreedy continuations, {max_new_tokens} new tokens per prompt.\n\n"
    return intro + HEADER + "".join(rows)


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", " ↵ ").strip() or "∅"


def side_by_side(base_model, finetuned_model, tokenizer, prompts: list[str], max_new_tokens: int) -> str:
    """The samples file's text for these two models (the fine-tuned folder's tokenizer serves both)."""
    base = continue_prompts(base_model, tokenizer, prompts, max_new_tokens)
    finetuned = continue_prompts(finetuned_model, tokenizer, prompts, max_new_tokens)
    return samples_markdown(prompts, base, finetuned, max_new_tokens)
