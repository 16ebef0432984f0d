"""How often the train stage gives the same bytes: many runs in fresh processes, some beside a competing CPU load.

    python -m bench.rerun_determinism [--runs 20] [--loaded 6] [--other-runs 4] [--only NAME ...]

A scratch clone of HEAD gets the offline corpus, the tiny offline GPT-2 and a 4-block GPT-2 with the real 50,257-word
vocabulary (random weights: no hub), is prepared and tokenized once per model, then runs the train stage's own
command line (dvc.yaml's, with each run's outputs in a folder of its own) once per run, each a new process. A run's
result is the sha256 of everything the stage writes: the model folder, the curves and metrics/train.json. The table
gives, per configuration, the runs, how many had a busy loop on every core beside them, the distinct results (1 is
reproducible) and the distinct numerics canaries (pipeline/training/numerics.py: 2 or more means the kernels
themselves computed differently, not the pipeline). The kill configuration kill -9s the stage's process group at a
random moment after its first checkpoint, reruns it and compares with unbroken runs of the same configuration.
Figures from a run are in docs/reproducibility.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from dvc.utils.hydra import apply_overrides

from pipeline.offline.corpus import write_corpus
from pipeline.offline.profile import load_profile
from pipeline.offline.tiny_model import write_tiny_model
from pipeline.params import hydra_overrides
from pipeline.reproduce.checks import fresh_clone

PROJECT_ROOT = Path(__file__).parents[1]
"""The checkout this module is in (its dvc.yaml)."""
GPT2_4BLOCK = Path("local/models/gpt2-4block")
NOT_LOGGED = {"mlflow.log_model": False, "mlflow.registered_model": None}
"""Each run would otherwise log its model to MLflow: time and disk that say nothing about the bytes."""
TINY_STEPS = {"train.max_steps": 60, "train.checkpoint_steps": 10, "train.eval_steps": 20}


@dataclass(frozen=True)
class Config:
    name: str
    overrides: dict[str, object]
    model: str = "tiny"
    """`tiny`: the offline profile's model; `gpt2-4block`: GPT2Config(n_layer=4), real vocabulary."""
    kill: bool = False


CONFIGS = (
    Config(
        "defaults (bf16 autocast, 4-block GPT-2)",
        {"train.max_steps": 10, "train.checkpoint_steps": 5},
        model="gpt2-4block",
    ),
    Config("offline profile (fp32)", TINY_STEPS),
    Config("offline, bf16", TINY_STEPS | {"train.bf16": True}),
    Config("head untied, bf16", TINY_STEPS | {"train.bf16": True, "freeze.head": "untied"}),
    Config(
        "head frozen, cached prefix, bf16",
        TINY_STEPS | {"train.bf16": True, "freeze.head": "frozen", "train.cache_frozen_prefix": True},
    ),
    Config("lora, bf16", TINY_STEPS | {"train.bf16": True, "finetune.method": "lora"}),
    Config("full, bf16", TINY_STEPS | {"train.bf16": True, "finetune.method": "full"}),
    Config("2 processes, bf16", TINY_STEPS | {"train.bf16": True, "train.processes": 2}),
    Config("kill -9 at a random moment, rerun, bf16", TINY_STEPS | {"train.bf16": True}, kill=True),
)


@dataclass
class Tally:
    results: list[str] = field(default_factory=list)
    canaries: list[str] = field(default_factory=list)
    loaded: int = 0
    seconds: list[float] = field(default_factory=list)


def write_models(root: Path) -> None:
    """The offline corpus and tiny model, and a 4-block GPT-2 of real width and vocabulary with their tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, set_seed

    profile = load_profile(root)
    corpus = write_corpus(root / profile.corpus_dir)
    write_tiny_model(root / profile.model_dir, [corpus["train"]])
    set_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=4)).save_pretrained(root / GPT2_4BLOCK)
    AutoTokenizer.from_pretrained(root / profile.model_dir).save_pretrained(root / GPT2_4BLOCK)


def model_overrides(root: Path, model: str) -> dict[str, object]:
    """The tiny model runs the whole offline profile; the 4-block GPT-2 the defaults, on the offline corpus."""
    profile = load_profile(root).overrides
    if model == "tiny":
        return dict(profile)
    return {key: value for key, value in profile.items() if key.startswith("data.")} | {
        "model.name_or_path": str(GPT2_4BLOCK)
    }


def write_params(root: Path, name: str, model: str, overrides: dict[str, object]) -> Path:
    """params.yaml with `model`'s overrides, then `overrides`, as `dvc exp run -S` would set them."""
    path = root / "bench-params" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text((root / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    apply_overrides(path, hydra_overrides(model_overrides(root, model) | NOT_LOGGED | overrides))
    return path


def slug(name: str) -> str:
    return re.sub(r"\W+", "-", name).strip("-")


def stage_command(root: Path, stage: str, params: Path, paths: dict[str, str]) -> list[str]:
    """dvc.yaml's command of `stage`, its `${var}` paths replaced by `paths` where given, reading `params`."""
    document = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    variables = {name: value for entry in document["vars"] for name, value in entry.items()} | paths
    command = re.sub(r"\$\{(\w+)\}", lambda match: str(variables[match.group(1)]), document["stages"][stage]["cmd"])
    return [sys.executable if word == "python" else word for word in shlex.split(command)] + ["--params", str(params)]


def prepare_model_data(root: Path, model: str, params: Path) -> dict[str, str]:
    """Prepare and tokenize once for `model`; the folder variables its train runs read."""
    paths = {"prepared": f"bench-data/{model}/prepared", "tokenized": f"bench-data/{model}/tokenized",
             "streams": f"bench-data/{model}/streams", "prepare_metrics": f"bench-data/{model}/prepare.json",
             "tokenize_metrics": f"bench-data/{model}/tokenize.json"}  # fmt: skip
    for stage in ("prepare", "tokenize"):
        subprocess.run(stage_command(root, stage, params, paths), cwd=root, check=True, capture_output=True)
    return paths


def run_paths(run_dir: str, prefix_cache: str) -> dict[str, str]:
    return {"finetuned": f"{run_dir}/model", "checkpoints": f"{run_dir}/checkpoints", "prefix_cache": prefix_cache,
            "train_metrics": f"{run_dir}/train.json", "train_curve": f"{run_dir}/train_curve.csv",
            "validation_curve": f"{run_dir}/validation_curve.csv",
            "train_throughput": f"{run_dir}/throughput.csv"}  # fmt: skip


def result_hash(run_dir: Path) -> str:
    """sha256 over the stage's outputs (not the throughput timings), file names included."""
    digest = hashlib.sha256()
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir).as_posix()
        if path.is_file() and not relative.startswith(("checkpoints", "throughput")):
            digest.update(relative.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def run_stage(command: list[str], root: Path, env: dict[str, str], kill_after_checkpoint: Path | None) -> str:
    """Run the train stage to the end (killing it once first, if asked); its numerics canary from the log."""
    if kill_after_checkpoint is not None:
        process = subprocess.Popen(command, cwd=root, env=env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        while process.poll() is None and not any(kill_after_checkpoint.glob("*/checkpoint-*")):
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 3.0))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"train failed:\n{finished.stderr[-3000:]}")
    canary = re.search(r"canary (\w+)", finished.stderr)
    return canary.group(1) if canary else "resumed"


@contextmanager
def competing_load(enabled: bool):
    """A busy loop per core while the run goes on."""
    cores = os.cpu_count() or 1
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores if enabled else 0)]
    try:
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


def measure(root: Path, config: Config, runs: int, loaded: int, data: dict[str, str], env: dict[str, str]) -> Tally:
    params = write_params(root, slug(config.name), config.model, config.overrides)
    tally = Tally()
    for index in range(runs):
        run_dir = f"bench-runs/{slug(config.name)}/{index}"
        paths = data | run_paths(run_dir, f"bench-runs/{slug(config.name)}/prefix-cache")
        under_load = index >= runs - loaded
        kill = config.kill and index > 0  # run 0 unbroken: the reference the killed ones must equal
        start = time.perf_counter()
        with competing_load(under_load):
            canary = run_stage(stage_command(root, "train", params, paths), root, env,
                               root / paths["checkpoints"] if kill else None)  # fmt: skip
        tally.seconds.append(time.perf_counter() - start)
        tally.results.append(result_hash(root / run_dir))
        tally.canaries.append(canary)
        tally.loaded += under_load
        print(f"  {config.name} run {index + 1}/{runs}{' (loaded)' if under_load else ''}: "
              f"{tally.results[-1]} canary {canary} {tally.seconds[-1]:.0f} s", flush=True)  # fmt: skip
    return tally


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of the defaults")
    parser.add_argument("--loaded", type=int, default=6, help="of those, runs beside a busy loop on every core")
    parser.add_argument("--other-runs", type=int, default=4, help="runs of each other configuration (1 loaded)")
    parser.add_argument("--only", nargs="*", help="configurations whose name starts with one of these")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="determinism-"))
    root = fresh_clone(Path.cwd(), scratch / "work")
    write_models(root)
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db", "HF_HUB_OFFLINE": "1"}
    configs = [c for c in CONFIGS if not args.only or c.name.startswith(tuple(args.only))]
    models = sorted({config.model for config in configs})
    data = {model: prepare_model_data(root, model, write_params(root, f"data-{model}", model, {})) for model in models}
    rows = []
    for config in configs:
        runs, loaded = (args.runs, args.loaded) if config.model == "gpt2-4block" else (args.other_runs, 1)
        tally = measure(root, config, runs, loaded, data[config.model], env)
        canaries = len(set(tally.canaries) - {"resumed"})
        median_seconds = sorted(tally.seconds)[len(tally.seconds) // 2]
        rows.append((config.name, runs, tally.loaded, len(set(tally.results)), canaries, median_seconds))
    print(f"\nscratch: {scratch}\n")
    print("| configuration | runs | under load | distinct results | distinct canaries | median s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs, loaded, results, canaries, seconds in rows:
        print(f"| {name} | {runs} | {loaded} | {results} | {canaries} | {seconds:.0f} |")
    sys.exit(0 if all(row[3] == 1 for row in rows) else 1)


if __name__ == "__main__":
    main()
