"""SIGINT/SIGTERM become `Interrupted` (a KeyboardInterrupt) with exit code 128 + signal; train defers the first one
to a safe point. The signals are real (os.kill on this process); the handlers are put back after each test."""

import os
import signal

import pytest

from pipeline.tracking.signals import Interrupted, deferred_signals, signals_raise


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_raises_interrupted_with_the_shell_exit_code(signum, exit_code):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as caught, signals_raise():
        os.kill(os.getpid(), signum)
    assert isinstance(caught.value, KeyboardInterrupt)  # so stage_run ends the run KILLED, not FAILED
    assert caught.value.exit_code == exit_code
    assert str(caught.value) == f"stopped by {signal.Signals(signum).name}"
    assert signal.getsignal(signum) is before


def test_deferred_first_signal_lets_the_work_reach_its_safe_point_then_raises():
    reached_safe_point = False
    with pytest.raises(Interrupted, match="SIGTERM"), deferred_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        reached_safe_point = True
    assert reached_safe_point


def test_deferred_second_signal_stops_at_once():
    with pytest.raises(Interrupted, match="SIGINT"), deferred_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("the second signal should have raised")


def test_deferred_without_a_signal_changes_nothing():
    with deferred_signals() as stop:
        pass
    assert not stop.requested
