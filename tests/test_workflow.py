"""The team's CI (.github/workflows/ci.yml) runs what the README tells a contributor to run, so the two cannot drift
apart: the set-up and test commands of the README's first code block are the workflow's install and test steps."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def readme_commands() -> dict[str, str]:
    """The README's first code block as {comment: command}: each command follows the comment that says what it is."""
    block = re.search(r"```\w*\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL).group(1)
    commands, comment = {}, None
    for line in block.splitlines():
        if line.startswith("#"):
            comment = line.lstrip("# ")
        elif line.strip():
            commands[comment] = line.strip()
    return commands


def readme_command(purpose: str) -> str:
    matching = [command for comment, command in readme_commands().items() if comment.startswith(purpose)]
    assert len(matching) == 1, f"the README's first code block has no single command under '# {purpose}'"
    return matching[0]


def workflow_steps() -> dict[str, dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    return {step.get("name", step.get("uses")): step for step in job["steps"]}


def test_install_and_test_steps_are_the_readme_commands():
    steps = workflow_steps()
    assert steps["Install"]["run"].strip() == readme_command("set up")
    assert steps["Test"]["run"].strip() == readme_command("run the tests")


def test_the_readme_block_is_read_as_commands_under_their_comments():
    # Guards the parser above: were it to return nothing useful, the test before would compare nothing.
    assert readme_command("set up").startswith("pip install -r requirements.txt")
    assert readme_command("run the tests") == "python -m pytest"


def test_python_version_and_history_are_what_the_steps_need():
    steps = workflow_steps()
    python = steps["actions/setup-python@v5"]["with"]["python-version"]
    (set_up,) = [comment for comment in readme_commands() if comment.startswith("set up")]
    assert f"Python {python}" in set_up  # the version the README promises, e.g. "set up (Python 3.11; ...)"
    assert steps["actions/checkout@v4"]["with"]["fetch-depth"] == 0  # `dvc metrics diff` reads the base branch
    compare = steps["Compare metrics and plots with the base branch"]
    assert "dvc metrics diff --md" in compare["run"] and "$GITHUB_STEP_SUMMARY" in compare["run"]
    assert compare["if"] == "github.event_name == 'pull_request'"
