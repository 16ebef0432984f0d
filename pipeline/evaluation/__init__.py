"""How a language model is scored: streaming loss, perplexity and next-token accuracy."""
