"""Reading params.yaml and params profiles: every problem found at once, in one `ParamsError`, so a user fixes the
file once."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.params.checks import model_config_issues, value_issues
from pipeline.params.schema import (
    Params,
    ParamsError,
    describe,
    matches,
    read_yaml,
    section_issues,
    with_floats,
)


def load_params(path: str | Path, load_model_config: Callable[[str], Any] | None = None) -> Params:
    """Read and validate params.yaml; with `load_model_config`, also check the params against the model's config.

    Raises ParamsError naming every problem at once.
    """
    raw = read_yaml(Path(path))
    issues: list[str] = []
    sections: dict[str, Any] = {}
    section_types = typing.get_type_hints(Params)
    for name in raw.keys() - section_types.keys():
        issues.append(f"{name}: unknown section (known: {', '.join(section_types)})")
    for name, section_type in section_types.items():
        if name not in raw:
            issues.append(f"{name}: missing section")
        elif not isinstance(raw[name], dict):
            issues.append(f"{name}: must be a mapping of keys, got {type(raw[name]).__name__}")
        else:
            values = with_floats(raw[name], section_type)
            found = section_issues(name, values, section_type)
            issues.extend(found)
            if not found:
                sections[name] = section_type(**values)
    if not issues:
        params = Params(**sections)
        issues.extend(value_issues(params))
        if load_model_config is not None:
            issues.extend(model_config_issues(params, load_model_config))
    if issues:
        raise ParamsError(f"{path} has {len(issues)} problem(s):\n" + "\n".join(f"  - {i}" for i in issues))
    return params


def read_overrides(path: str | Path) -> dict[str, Any]:
    """A params profile (profiles/*.yaml): sections of params.yaml holding only the keys that differ, returned as
    dotted keys (`{"train.batch_size": 16}`), the form `dvc exp run -S` takes. Unknown keys and wrong types are
    refused, all at once, as in `load_params`."""
    raw = read_yaml(Path(path))
    section_types = typing.get_type_hints(Params)
    overrides, issues = {}, []
    for section, values in raw.items():
        if section not in section_types or not isinstance(values, dict):
            issues.append(f"{section}: not a section of params.yaml with keys under it")
            continue
        fields = typing.get_type_hints(section_types[section])
        for key, value in with_floats(values, section_types[section]).items():
            if key not in fields:
                issues.append(f"{section}.{key}: unknown key (known: {', '.join(fields)})")
            elif not matches(value, fields[key]):
                issues.append(f"{section}.{key}: expected {describe(fields[key])}, got {value!r}")
            overrides[f"{section}.{key}"] = value
    if issues:
        raise ParamsError(f"{path} has {len(issues)} problem(s):\n" + "\n".join(f"  - {i}" for i in issues))
    return overrides


def hydra_overrides(overrides: dict[str, Any]) -> list[str]:
    """`key=value` strings in the override grammar of `dvc exp run -S` (YAML's null and lower-case booleans)."""

    def text(value: Any) -> str:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    return [f"{key}={text(value)}" for key, value in overrides.items()]
