"""GPT-2 fine-tuning with selective layer freezing, as DVC stages tracked in MLflow."""
