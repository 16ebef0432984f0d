"""Fixtures shared by the test modules, grouped by what they provide; add a new group under its own heading."""

import os
import tempfile

# Tests run offline against an empty, throwaway Hugging Face cache: a hub call must fail at once (not after a minute
# of retries) and nothing a developer has cached may leak in. Set before transformers is imported, which reads them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf-home-")
# Under pytest-xdist a worker runs per core: one torch thread each keeps the cores from being oversubscribed, where
# torch's threads would spin waiting on each other (docs/performance.md). Comparisons within the suite are between
# runs with the same thread count either way; an explicit OMP_NUM_THREADS wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import GPT2Config

REPO = Path(__file__).parents[1]

# ---------------------------------------------------------------------------------------------------------------
# Tiny models and data. The offline corpus and the tiny pretrained GPT-2 come from pipeline/offline/, built once
# per session (the model takes about 10 s); tests read them and must not change them.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_config() -> GPT2Config:
    """A random-weights GPT-2 small enough to count by hand; bos/eos set, or transformers warns they are missing."""
    return GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)


# Each supported family at the tiny config's size (d=32, 2 blocks, vocab 100; 4 heads of 8, 2 key/value heads in the
# Llama family, MLP 64 wide), counted by hand in tests/test_layout.py. Untied, as the families' own defaults are.
TINY_FAMILY_CONFIGS = {
    "gpt2": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64},
    "llama": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 64},
    "gpt_neox": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
                 "max_position_embeddings": 64},
}  # fmt: skip
TINY_FAMILY_CONFIGS |= dict.fromkeys(("mistral", "qwen2", "qwen3"), TINY_FAMILY_CONFIGS["llama"])


@pytest.fixture
def tiny_lm():
    """`tiny_lm(model_type, **config)`: a random-weights causal LM of any supported model_type (seed 0)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    def make(model_type: str, **config):
        special = {"vocab_size": 100, "bos_token_id": 0, "eos_token_id": 0}
        settings = {**special, **TINY_FAMILY_CONFIGS[model_type], **config}
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))

    return make


@pytest.fixture(scope="session")
def offline_corpus(tmp_path_factory) -> dict[str, Path]:
    """Split name -> generated Wikitext-shaped text file (`train`, `validation`, `test`), default sizes and seed."""
    from pipeline.offline.corpus import write_corpus  # imported here, so a broken offline module fails only its users

    return write_corpus(tmp_path_factory.mktemp("offline") / "corpus")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, offline_corpus) -> Path:
    """Folder of the tiny pretrained GPT-2 and its tokenizer (trained on `offline_corpus`'s train split)."""
    from pipeline.offline.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("offline") / "tiny-gpt2", [offline_corpus["train"]])


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, offline_corpus) -> Path:
    """Folder of the offline profile's tiny Llama (pipeline/offline/tiny_model.py's TINY_LLAMA: untied, grouped-query
    attention) with its tokenizer, at random weights: pretraining it would cost a minute of CI for nothing a test of
    the pipeline's plumbing needs."""
    from pipeline.offline.tiny_model import seeded_and_deterministic, tiny_model, train_tokenizer

    tokenizer = train_tokenizer([offline_corpus["train"]])
    with seeded_and_deterministic(0):
        model = tiny_model("llama", tokenizer)
    folder = tmp_path_factory.mktemp("offline") / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def offline_tasks(tmp_path_factory, offline_corpus) -> Path:
    """Folder of the offline lm-eval tasks (pipeline/offline/tasks.py): YAMLs naming their data by absolute path."""
    from pipeline.offline.tasks import write_tasks

    return write_tasks(tmp_path_factory.mktemp("offline") / "tasks", offline_corpus["test"])


# ---------------------------------------------------------------------------------------------------------------
# Whole-pipeline runs. A throwaway copy of the project (code, dvc.yaml, params.yaml) in its own git repo, switched
# to the offline profile, where tests run the real `dvc repro` and read dvc.lock, metrics/ and mlruns/.
# ---------------------------------------------------------------------------------------------------------------

PROJECT_FILES = (
    "pipeline",
    "dvc.yaml",
    "params.yaml",
    "profiles",
    "studies",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "local/README.md",
    "local/corpus/.gitkeep",
    "local/models/.gitkeep",
    "local/tasks/.gitkeep",
    "mlruns/.gitkeep",
)
# Fixed identity: CI machines may have none, and commits in the copies should not depend on the developer's.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "tests",
    "GIT_AUTHOR_EMAIL": "tests@localhost",
    "GIT_COMMITTER_NAME": "tests",
    "GIT_COMMITTER_EMAIL": "tests@localhost",
}


def stage_command(dvc_yaml: Path, stage: str) -> str:
    """A stage's `cmd` with dvc.yaml's `${var}`s filled in from its top-level `vars`, as DVC runs it."""
    from pipeline.tracking.lineage import interpolate

    pipeline = yaml.safe_load(dvc_yaml.read_text())
    return interpolate(pipeline["stages"][stage]["cmd"], pipeline)


class PipelineRepo:
    def __init__(self, root: Path, tracking_uri: str | None = None) -> None:
        self.root = root
        self.tracking_uri = tracking_uri
        """MLFLOW_TRACKING_URI for the commands run here (a tracking server); None: the copy's own mlruns/."""

    @property
    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set_params(self, overrides: dict) -> None:
        """Apply dotted-key overrides to params.yaml, as `dvc exp run -S` would."""
        raw = self.params
        for dotted, value in overrides.items():
            section, key = dotted.split(".")
            raw[section][key] = value
        (self.root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    def metrics(self, name: str) -> dict:
        return yaml.safe_load((self.root / "metrics" / f"{name}.json").read_text())

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, **GIT_IDENTITY}
        env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own mlruns/, resolved from its root, unless told
        if self.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        result = subprocess.run(command, cwd=self.root, env=env, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def stage_argv(self, stage: str, **options: object) -> list[str]:
        """The stage's command from dvc.yaml as an argv for this interpreter (no DVC involved), with the values
        of the named options replaced: `stage_argv("train", out="models/other")`."""
        argv = shlex.split(stage_command(self.root / "dvc.yaml", stage))
        argv[0] = sys.executable
        for name, value in options.items():
            argv[argv.index("--" + name.replace("_", "-")) + 1] = str(value)
        return argv

    def dvc(self, *args: str) -> str:
        result = self.run(sys.executable, "-m", "dvc", *args)
        return result.stdout + result.stderr

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)


@pytest.fixture(scope="session")
def pipeline_repo_factory(tmp_path_factory, offline_corpus, tiny_model_dir):
    """Make a fresh offline-profile copy of the project, committed, with the session's tiny model and corpus and
    the lm-eval tasks over them versioned by DVC (their .dvc files committed), as `python -m pipeline.offline`
    leaves them."""
    from pipeline.offline.profile import load_profile
    from pipeline.offline.tasks import write_tasks

    profile = load_profile(REPO)

    def make(name: str) -> PipelineRepo:
        root = tmp_path_factory.mktemp(name)
        for relative in PROJECT_FILES:
            source, target = REPO / relative, root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target)
        shutil.copytree(offline_corpus["train"].parent, root / profile.corpus_dir)
        shutil.copytree(tiny_model_dir, root / profile.model_dir)
        test_text = root / profile.corpus_dir / "test.txt"
        write_tasks(root / profile.task_dir, test_text, data_dir=profile.task_dir.as_posix())  # paths from the root
        repo = PipelineRepo(root)
        repo.set_params(profile.overrides)
        repo.run("git", "init", "-q")
        folders = (profile.corpus_dir, profile.model_dir, profile.task_dir)
        repo.dvc("add", "--quiet", *map(str, folders))  # as `python -m pipeline.offline`
        repo.commit("offline profile")
        return repo

    return make


# ---------------------------------------------------------------------------------------------------------------
# MLflow tracking. One SQLite store and one clean git repo per test module (a new store costs seconds of
# migrations); each test logs to an experiment of its own (`make_params`). Modules that use them say
# `pytestmark = pytest.mark.usefixtures("tracking_env")`.
# ---------------------------------------------------------------------------------------------------------------

DVC_ENV = ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI")


def git_in(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run([*command, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def init_git_repo(repo: Path) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / ".gitignore").write_text("/data/\n/mlruns/\n")
    git_in(repo, "init", "-q")
    git_in(repo, "add", ".gitignore")
    git_in(repo, "commit", "-qm", "init")
    return repo


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The module's SQLite store URI (`uri`) and clean git repo (`repo`)."""
    base = tmp_path_factory.mktemp("tracking")
    return {"uri": f"sqlite:///{base}/mlflow.db", "repo": init_git_repo(base / "repo")}


@pytest.fixture
def tracking_env(store, monkeypatch):
    for name in DVC_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setenv("DVC_ROOT", str(store["repo"]))
    monkeypatch.chdir(store["repo"])


@pytest.fixture
def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store["uri"])


@pytest.fixture
def make_params(request, tmp_path):
    """Params from the project's params.yaml, in an experiment of this test's own, with dotted-key overrides."""

    def make(overrides=None, name="params.yaml"):
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["mlflow"]["experiment"] = request.node.name
        for dotted, value in (overrides or {}).items():
            section, key = dotted.split(".")
            raw[section][key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        from pipeline.params import load_params

        return load_params(path)

    return make


@pytest.fixture
def git_repo():
    """`git_repo(path)`: a fresh git repo at `path` with one commit (a .gitignore); returns the path."""
    return init_git_repo


@pytest.fixture
def git():
    """`git(repo, *args)`: stdout of a git command run in `repo`, with a fixed identity."""
    return git_in


def reproduce(repo: PipelineRepo, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.reproduce --repo <repo> ...`, its exit code left to the caller."""
    return repo.run(sys.executable, "-m", "pipeline.reproduce", "--repo", str(repo.root), *args, check=False)


def verdict_lines(output: str) -> dict[str, str]:
    """`output path -> same/DIFFERS` from the check's table."""
    rows = [line.split() for line in output.splitlines() if line.endswith(("same", "DIFFERS"))]
    return {row[1]: row[-1] for row in rows}
