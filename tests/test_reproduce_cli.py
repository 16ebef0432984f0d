"""`python -m pipeline.reproduce`'s command line: the profile options, and `--offline` kept as an alias."""

import pytest

from pipeline.reproduce.__main__ import parse_args


def test_offline_is_an_alias_of_profile_offline_and_ci_is_the_default_elsewhere():
    assert parse_args(["twice", "--offline"]).profile == "offline"
    assert parse_args(["twice", "--profile", "ci"]).profile == "ci"
    assert parse_args(["twice"]).profile is None  # params.yaml as it is
    assert parse_args(["reference"]).profile == "ci"
    compare = parse_args(["compare", "--base", "origin/main", "--summary", "s.md", "--plots", "curves"])
    assert (compare.base, compare.profile, str(compare.plots)) == ("origin/main", "ci", "curves")


def test_an_unknown_profile_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["twice", "--profile", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err
