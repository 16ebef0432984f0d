"""`reproduce reference`: a profile's metrics, committed as JSON, and a fresh run's compared with them.

Another machine (CPU model, instruction set, thread count, bf16 or not) sums in another order, so the last bits of
every float differ: floats are compared within a relative tolerance, stored in the file beside the metrics
(docs/reproducibility.md says how it was measured). Integers (tokens, blocks, parameter counts) depend on the data
and the model alone and must be equal, as must anything that is not a number.

lm-eval's accuracies count examples: with `harness.limit` examples a task's accuracy moves in steps of 1/limit, and
a last-bit difference that flips one answer moves it by a whole step, which no relative tolerance near zero allows
(a retention of 0.0 would have to stay exactly 0.0). Those scores, their differences and retention are allowed one
example's worth instead, absolute (`example_tolerances`).
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE_DIR = Path("reference")
DEFAULT_TOLERANCE = 2e-2
"""Relative tolerance on float metrics when the reference file names none: 5x the largest spread measured between
this machine's run and runs with one thread, fp32 and AVX2 kernels (docs/reproducibility.md)."""


COUNTED_METRICS = ("acc", "acc_norm", "exact_match")
"""lm-eval metrics that are a share of examples answered right."""


def reference_path(profile: str) -> Path:
    return REFERENCE_DIR / f"{profile}_metrics.json"


def read_reference(path: Path) -> tuple[dict[str, object], float]:
    """(metrics, tolerance) of a reference file."""
    reference = json.loads(path.read_text(encoding="utf-8"))
    return reference["metrics"], float(reference["tolerance"])


def write_reference(path: Path, profile: str, metrics: dict[str, object], tolerance: float) -> None:
    reference = {
        "profile": profile,
        "made_by": f"python -m pipeline.reproduce reference --profile {profile} --update",
        "tolerance": tolerance,
        "tolerance_is": "relative, on float metrics, but one example's worth (absolute) on lm-eval accuracies and "
        "retention; integers and text must be equal (docs/reproducibility.md)",
        "metrics": dict(sorted(metrics.items())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")


def within(expected: object, actual: object, tolerance: float, absolute: float = 0.0) -> bool:
    """Floats within `tolerance` relative to the larger magnitude, or within `absolute`; anything else (ints, bools,
    text) equal."""
    if isinstance(expected, float) or isinstance(actual, float):
        if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in (expected, actual)):
            return False
        return abs(expected - actual) <= max(absolute, tolerance * max(abs(expected), abs(actual)))
    return type(expected) is type(actual) and expected == actual


def example_tolerances(metrics: dict[str, object]) -> dict[str, float]:
    """One example's worth, 1 / the task's examples, for each lm-eval score that counts examples (`<file>:<section>
    .<task>.acc`, fine-tuned, base or their difference; `retention.<task>`), and the coarsest of those steps for
    `retention_mean`. Tasks and their example counts come from the harness files' `examples.<task>`."""
    examples = {key.split(":examples.", 1)[1]: value for key, value in metrics.items()
                if ":examples." in key and isinstance(value, int) and value > 0}  # fmt: skip
    tolerances = {}
    for key in metrics:
        parts = key.partition(":")[2].split(".")
        score = len(parts) == 3 and parts[2] in COUNTED_METRICS  # <section>.<task>.acc
        retention = len(parts) == 2 and parts[0] == "retention"  # retention.<task>
        counted = score or retention
        if counted and parts[1] in examples:
            tolerances[key] = (1 + 1e-9) / examples[parts[1]]  # the slack: k/n - (k-1)/n rounds either way
    for key in [key for key in metrics if key.endswith(":retention_mean")]:
        steps = [step for name, step in tolerances.items() if name.startswith(key.replace("_mean", "."))]
        if steps:
            tolerances[key] = max(steps)
    return tolerances


def compare_with_reference(
    expected: dict[str, object], actual: dict[str, object], tolerance: float
) -> list[tuple[str, object, object, bool]]:
    """(metric, reference, fresh, within tolerance) for every metric on either side, sorted by name; lm-eval's
    counted scores within one example (`example_tolerances` of the reference)."""
    absolute = example_tolerances(expected)
    return [
        (key, expected.get(key), actual.get(key), key in expected and key in actual
         and within(expected[key], actual[key], tolerance, absolute.get(key, 0.0)))
        for key in sorted(expected.keys() | actual.keys())
    ]  # fmt: skip


def relative_change(expected: object, actual: object) -> float | None:
    if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in (expected, actual)):
        return None
    scale = max(abs(expected), abs(actual))
    return 0.0 if scale == 0 else abs(expected - actual) / scale


def reference_report(rows: list[tuple[str, object, object, bool]], tolerance: float) -> str:
    lines = [f"{'metric':<44} {'reference':>14} {'this run':>14} {'rel. diff':>10} verdict (tolerance {tolerance:g})"]
    for key, expected, actual, ok in rows:
        change = relative_change(expected, actual)
        lines.append(
            f"{key:<44} {fmt(expected):>14} {fmt(actual):>14} {'-' if change is None else f'{change:.2e}':>10} "
            f"{'within' if ok else 'OUTSIDE'}"
        )
    return "\n".join(lines)


def fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
