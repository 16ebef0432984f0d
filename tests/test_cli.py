"""Stage exits (pipeline/tracking/cli.py): a stop signal ends the run KILLED with exit 128 + signal, a user error
ends it FAILED with its message and exit 2, and neither shows a traceback."""

import os
import signal

import pytest

from pipeline.errors import UserError
from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.runs import stage_run

pytestmark = pytest.mark.usefixtures("tracking_env")


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_ends_the_stage_run_killed_and_exits_128_plus_the_signal(client, make_params, signum, exit_code):
    with (
        pytest.raises(SystemExit) as exited,
        exit_on_user_error(),
        stage_run("evaluate", make_params(), ("evaluate",), closes_group=True) as run,
    ):
        os.kill(os.getpid(), signum)
    assert exited.value.code == exit_code
    assert client.get_run(run.run_id).info.status == client.get_run(run.group_run_id).info.status == "KILLED"
    assert client.get_run(run.run_id).data.tags["error"] == f"Interrupted: stopped by {signal.Signals(signum).name}"


def test_a_user_error_ends_the_run_failed_with_its_message_and_exits_2(client, make_params, capsys):
    with (
        pytest.raises(SystemExit) as exited,
        exit_on_user_error(),
        stage_run("prepare", make_params(), ("data",)) as run,
    ):
        raise UserError("local/corpus/train.txt: no text in it")
    assert exited.value.code == 2
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert client.get_run(run.run_id).data.tags["error"] == "UserError: local/corpus/train.txt: no text in it"
    assert "Traceback" not in capsys.readouterr().err
