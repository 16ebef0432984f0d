"""`python -m pipeline.generate --model <folder | runs:/… | models:/…> "prompt"`: continue a prompt, streamed."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.errors import UserError
from pipeline.tracking.cli import exit_on_user_error

log = logging.getLogger(__name__)

MLFLOW_SCHEMES = ("runs:/", "models:/")


def load(model: str):
    """(model, tokenizer) from a save_pretrained folder or an MLflow model URI."""
    if model.startswith(MLFLOW_SCHEMES):
        return _load_from_mlflow(model)
    if not Path(model).is_dir():
        raise UserError(
            f"--model {model}: no such model folder. Give the fine-tuned model's folder (models/finetuned, written by "
            "`dvc repro train`), or an MLflow model URI such as models:/<registered name>/<version> or "
            "runs:/<train run id>/finetuned (the train run's page shows its logged model)."
        )
    from pipeline.data.loading import load_model, load_tokenizer

    return load_model(model), load_tokenizer(model)


def _load_from_mlflow(uri: str):
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        components = mlflow.transformers.load_model(uri, return_type="components")
    except (MlflowException, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"--model {uri}: MLflow could not load it from {tracking_uri()}: {message} "
            "Check the URI against the MLflow UI (a run's Logged models, or the registry's versions), and set "
            "MLFLOW_TRACKING_URI if the store is not this repo's mlruns/."
        ) from None
    return components["model"], components["tokenizer"]


def generate(model, tokenizer, prompt: str, args: argparse.Namespace) -> str:
    """Continue `prompt`, printing tokens to stdout as they come; returns the new text."""
    import torch
    from transformers import TextStreamer, set_seed

    set_seed(args.seed)
    encoded = tokenizer(prompt, return_tensors="pt")
    sampling = args.temperature > 0
    options = {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    model.eval()
    with torch.no_grad():
        generated = model.generate(
            **encoded,
            max_new_tokens=args.max_new_tokens,
            pad_token_id=tokenizer.eos_token_id,
            streamer=TextStreamer(tokenizer),
            **(options if sampling else {"do_sample": False}),
        )
    return tokenizer.decode(generated[0, encoded["input_ids"].shape[1] :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder, runs:/<run id>/finetuned or models:/<name>/<v>")
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default 50)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding (default 0.8)")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default 50)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same text (default 0)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        problems = _argument_problems(args)
        if problems:
            raise UserError("; ".join(problems))
        model, tokenizer = load(args.model)
        generate(model, tokenizer, args.prompt, args)


def _argument_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if not args.prompt.strip():
        problems.append('the prompt is empty: give some text to continue, e.g. "The river"')
    if args.max_new_tokens <= 0:
        problems.append(f"--max-new-tokens must be > 0, got {args.max_new_tokens}")
    if args.temperature < 0:
        problems.append(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    if args.top_k <= 0:
        problems.append(f"--top-k must be > 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top-p must be in (0, 1], got {args.top_p}")
    return problems


if __name__ == "__main__":
    main()
