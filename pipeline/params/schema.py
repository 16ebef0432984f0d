"""The shape of params.yaml: the whole `Params`, and the type checks every section and profile goes through."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import UserError
from pipeline.params.sections import (
    DataParams,
    EvaluateParams,
    HarnessParams,
    ModelParams,
    SamplesParams,
    TokenizeParams,
    TrackingParams,
)
from pipeline.params.training import FinetuneParams, FreezeParams, LoraParams, TrainParams


class ParamsError(UserError):
    """params.yaml is unreadable or invalid; the message lists every problem found."""


@dataclass(frozen=True)
class Params:
    mlflow: TrackingParams
    data: DataParams
    model: ModelParams
    tokenize: TokenizeParams
    finetune: FinetuneParams
    freeze: FreezeParams
    lora: LoraParams
    train: TrainParams
    evaluate: EvaluateParams
    samples: SamplesParams
    harness: HarnessParams

    @classmethod
    def defaults(cls) -> Params:
        """Every section at its documented defaults (params.yaml's values), for code that builds params itself."""
        return cls(**{name: section() for name, section in typing.get_type_hints(cls).items()})

    def flat(self) -> dict[str, Any]:
        """`{"train.learning_rate": 5e-05, ...}`: the form MLflow params and `dvc exp show` columns take."""
        return {
            f"{section}.{key}": value
            for section, values in dataclasses.asdict(self).items()
            for key, value in values.items()
        }

    def digest(self) -> str:
        """A short, stable hash of every param value: names one configuration in MLflow tags."""
        canonical = json.dumps(self.flat(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the repo root, where params.yaml lives") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections (mlflow, data, model, ...), got {type(raw).__name__}")
    return raw


DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
"""A number written in decimal, with or without a dot: YAML 1.1 (PyYAML) reads `5e-05` as a string, because its
float needs a dot, and that is how DVC writes a swept or `-S` 5e-5 back into params.yaml."""


def with_floats(values: dict[str, Any], section_type: type) -> dict[str, Any]:
    """A section's values with each decimal string in a float field (`5e-05`) made the float it means; everything
    else as it was, to be checked by `section_issues`."""
    fields = typing.get_type_hints(section_type)
    return {key: as_float(value, fields[key]) if key in fields else value for key, value in values.items()}


def as_float(value: Any, annotation: Any) -> Any:
    if matches(value, annotation):  # a string where text is allowed stays text
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and isinstance(value, list):
        return [as_float(item, args[0]) for item in value]
    takes_float = annotation is float or (origin in (typing.Union, types.UnionType) and float in args)
    if takes_float and isinstance(value, str) and DECIMAL.fullmatch(value):
        return float(value)
    return value


def section_issues(section: str, values: dict[str, Any], section_type: type) -> list[str]:
    fields = typing.get_type_hints(section_type)
    issues = [f"{section}.{key}: unknown key (known: {', '.join(fields)})" for key in values.keys() - fields.keys()]
    for key, annotation in fields.items():
        if key not in values:
            issues.append(f"{section}.{key}: missing (default would be {default(section_type, key)!r})")
        elif not matches(values[key], annotation):
            issues.append(f"{section}.{key}: expected {describe(annotation)}, got {values[key]!r}")
    return issues


def default(section_type: type, key: str) -> Any:
    field = next(f for f in dataclasses.fields(section_type) if f.name == key)
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def matches(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(matches(item, args[0]) for item in value)
    if annotation is type(None):
        return value is None
    if annotation is float:  # YAML writes 1 for 1.0; `bool` is an int subclass but never a number here
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is list:
        return f"a list of {describe(args[0])}"
    return "null" if annotation is type(None) else annotation.__name__
