"""What stages read and write: models, tokenizers and hub datasets (loaded with errors a user can act on), the
split files between stages, token blocks, and deterministic, atomic writes."""
