"""Loading models, tokenizers and hub datasets, with errors a user can act on.

The loading calls are the real ones (`from_pretrained("gpt2")`, `load_dataset("wikitext", ...)`); only their
failures are translated: offline with an empty cache, transformers and datasets raise OSError after a minute of
retries and a long traceback, where the user needs one line saying what to point params.yaml at instead.

Every call passes `trust_remote_code=False` rather than leaving the default (None): with None, a folder or hub
repo whose config names custom code makes transformers *ask* on an interactive terminal whether to run it.
"""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict, load_dataset
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from pipeline.errors import UserError

_OFFLINE_HINT = (
    "Offline? Run `python -m pipeline.offline` for a generated tiny model and corpus, or save a model with "
    "`save_pretrained` under local/models/ and set model.name_or_path to that folder (see docs/operations.md)."
)
_LOCAL_HINT = (
    "The folder must hold config.json, model.safetensors and the tokenizer files as `save_pretrained` writes them "
    "(pickled .bin weights are refused: loading them can run code); restore it or save the model again."
)


def load_config(name_or_path: str) -> PretrainedConfig:
    _check_local_folder(name_or_path, "config")
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise _model_error(name_or_path, "config", error) from None


def load_tokenizer(name_or_path: str):
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as error:
        raise _model_error(name_or_path, "tokenizer", error) from None


def load_model(name_or_path: str) -> PreTrainedModel:
    """fp32 weights from safetensors only: a pickle-based checkpoint can run code when loaded."""
    _check_local_folder(name_or_path, "weights")
    try:
        return AutoModelForCausalLM.from_pretrained(
            name_or_path, use_safetensors=True, dtype="float32", trust_remote_code=False
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # the last: a truncated or garbled file
        raise _model_error(name_or_path, "weights", error) from None


def load_hub_dataset(dataset: str, config: str | None) -> DatasetDict:
    try:
        return load_dataset(dataset, config)
    except (OSError, ValueError) as error:
        raise UserError(
            f"data.hub_dataset={dataset!r} (config {config!r}) could not be loaded: {_first_line(error)}\n"
            "Offline? Set data.source: local and point data.train_file/validation_file/test_file (or "
            "data.single_file) at UTF-8 text under local/corpus/, or run `python -m pipeline.offline`."
        ) from None


def _check_local_folder(name_or_path: str, what: str) -> None:
    """Without config.json transformers says "Unrecognized model ... should have a `model_type` key", which hides
    that the file is simply not there."""
    folder = Path(name_or_path)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise _model_error(name_or_path, what, FileNotFoundError(f"there is no config.json in {folder}"))


def _model_error(name_or_path: str, what: str, error: Exception) -> UserError:
    local = Path(name_or_path).exists()
    where = "local folder" if local else "Hugging Face Hub id (or its local cache)"
    return UserError(
        f"model.name_or_path={name_or_path!r}: could not load its {what} from the {where}: "
        f"{_first_line(error)}\n{_LOCAL_HINT if local else _OFFLINE_HINT}"
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
