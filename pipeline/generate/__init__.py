"""`python -m pipeline.generate --model <folder | runs:/… | models:/…> "prompt"`: continue a prompt with the
fine-tuned model, from its DVC output folder or from MLflow, streaming the text as it is generated."""
