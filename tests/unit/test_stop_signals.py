"""`search.stopping` in this process: SIGTERM handled as Ctrl-C, a callback's stop passed to
Ray Tune's handler, `tune_fit` giving the caller's handlers back, the loopback switch. (The
real CLI under real signals: tests/e2e/test_stopping.py.)"""

from __future__ import annotations

import os
import signal

import pytest

from search import stopping


@pytest.fixture(autouse=True)
def clean_state():
    """Each test starts with no signal received, no stop reason and the process's handlers,
    and leaves them so."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    stopping._received.clear()
    stopping._reasons.clear()
    yield
    stopping._received.clear()
    stopping._reasons.clear()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_sigterm_outside_tune_raises_stopped_and_exits_143():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stopping.install()
    with pytest.raises(stopping.Stopped, match=f"signal {int(signal.SIGTERM)}"):
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopping.received() == signal.SIGTERM
    assert stopping.exit_code() == 143
    with pytest.raises(stopping.Stopped):  # the steps after the search stop too
        stopping.check()


def test_ctrl_c_is_remembered_and_exits_130():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stopping.install()
    assert signal.getsignal(signal.SIGINT) is stopping._on_sigint
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert stopping.exit_code() == 130


def test_no_signal_keeps_the_default_exit_code_and_check_passes():
    assert stopping.received() is None
    assert stopping.exit_code(default=1) == 1
    stopping.check()


def test_sigterm_inside_tune_goes_to_tunes_handler_as_sigint():
    calls = []
    signal.signal(signal.SIGINT, lambda sig, frame: calls.append(sig))  # as Tune's fit() does
    stopping.install()
    os.kill(os.getpid(), signal.SIGTERM)
    assert calls == [signal.SIGINT]
    assert stopping.received() == signal.SIGTERM


def test_stop_search_calls_tunes_handler_and_keeps_the_first_reason():
    calls = []
    signal.signal(signal.SIGINT, lambda sig, frame: calls.append((sig, frame)))
    stopping.stop_search("disk full")
    stopping.stop_search("time limit")
    assert calls == [(signal.SIGINT, None)] * 2
    assert stopping.stop_reason() == "disk full"


def test_stop_search_outside_tune_only_records_the_reason():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stopping.stop_search("disk full")  # no KeyboardInterrupt: nothing runs to stop
    assert stopping.stop_reason() == "disk full"


def test_tune_fit_gives_back_the_callers_handlers_and_forgets_an_old_reason():
    mine = {sig: (lambda s, f: None) for sig in stopping.TUNE_SIGNALS}
    for sig, handler in mine.items():
        signal.signal(sig, handler)
    stopping._reasons.append("disk full")  # an earlier search's

    def fit():
        for sig in stopping.TUNE_SIGNALS:  # Tune's fit() installs its own and keeps them
            signal.signal(sig, signal.SIG_IGN)
        return stopping.stop_reason()

    assert stopping.tune_fit(fit) is None
    assert {sig: signal.getsignal(sig) for sig in stopping.TUNE_SIGNALS} == mine


@pytest.mark.parametrize("address, ray_address, expected", [
    (None, None, "0"),
    ("10.0.0.1:6379", None, None),
    (None, "10.0.0.1:6379", None),
])
def test_a_local_ray_only_is_put_on_loopback(monkeypatch, address, ray_address, expected):
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    if ray_address:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    stopping.local_ray_on_loopback(address)
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == expected


TUNE_ENV = ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "RAY_AIR_NEW_OUTPUT",
            "TUNE_PRINT_ALL_TRIAL_ERRORS")


@pytest.mark.parametrize("debug, printed", [(False, "0"), (True, None)])
def test_ray_tunes_environment_is_set_once_for_searches_and_jobs(monkeypatch, caplog, debug,
                                                                printed):
    """Ray Tune's defaults for a search (`search.api`) and a job grid (`search.retrain`): a
    value the user set stays; under --debug Ray prints each trial's traceback."""
    import logging

    for name in TUNE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    caplog.set_level(logging.DEBUG if debug else logging.INFO)
    stopping.tune_env_defaults()
    assert [os.environ.get(name) for name in TUNE_ENV] == ["0", "1", printed]
