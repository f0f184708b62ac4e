"""Ctrl-C and SIGTERM: stop within seconds, keep what finished, say how to continue.

SLURM (and `kill`, Kubernetes, systemd) send SIGTERM before SIGKILL. Left to Ray, a SIGTERM
runs Ray's own handler (`sys.exit` in the middle of whatever the driver does), which ended a
search with exit 134, a C++ stack dump, no resume hint and runs marked FAILED. Here SIGTERM is
handled as Ctrl-C is:

- inside `Tuner.fit()` it calls Ray Tune's SIGINT handler: Tune saves the experiment state one
  last time and `fit()` returns, and the caller sees unfinished trials;
- anywhere else it raises `Stopped`, a `KeyboardInterrupt`, so every `except KeyboardInterrupt`
  and `finally` on the way out runs (MLflow runs are closed KILLED).

Ray Tune installs its SIGINT handler in `fit()` and leaves it installed after (it restores the
previous one only once it has fired): a Ctrl-C during the post-search scoring printed "Stop
signal received" and scoring went on. It does the same with SIGUSR1. `tune_fit` restores the
caller's handlers of both.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from search.errors import ArgumentError
from search.lazy import LazyModule

ray = LazyModule("ray")  # imported after local_ray_on_loopback has set Ray's switch

_received: list[int] = []
_reasons: list[str] = []
TUNE_SIGNALS = (signal.SIGINT, signal.SIGUSR1)  # the handlers Ray Tune's fit() installs


class Interrupted(Exception):
    """A search or its jobs stopped before they finished (Ctrl-C, SIGTERM); the message says
    how to continue."""


class Stopped(KeyboardInterrupt):
    """A stop signal arrived outside Ray Tune's run loop."""


def received() -> int | None:
    """The first stop signal this process got (SIGINT or SIGTERM), or None."""
    return _received[0] if _received else None


def exit_code(default: int = 130) -> int:
    """128 + the signal, as a shell reports a process ended by it: 130 for Ctrl-C, 143 for
    SIGTERM."""
    sig = received()
    return 128 + sig if sig else default


def _tune_handler():
    """Ray Tune's SIGINT handler while `fit()` runs (its graceful stop), else None."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler not in (signal.default_int_handler, _on_sigint):
        return handler
    return None


def _on_sigterm(signum: int, frame: Any) -> None:
    _received.append(signum)
    handler = _tune_handler()
    if handler is None:
        raise Stopped(f"signal {signum}")
    handler(signal.SIGINT, frame)


def _on_sigint(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGTERM as Ctrl-C in this (main) thread. Call it again after `ray.init`, which
    installs Ray's own SIGTERM handler."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)  # the same, but remembers that it came


def check() -> None:
    """Raise `Stopped` if a stop signal came whose KeyboardInterrupt never reached this code:
    a SIGTERM that Ray Tune's handler took as `fit()` was ending with every trial finished,
    or an interrupt a library caught. The steps after the search (scoring, soups) call it
    between steps, so such a signal stops them before their results are published."""
    if _received:
        raise Stopped(f"signal {_received[0]}")


def stop_search(reason: str) -> None:
    """Stop Ray Tune's run loop from a driver-side callback as Ctrl-C does: Tune saves the
    experiment state and `fit()` returns with the unfinished trials resumable. `reason` is
    kept for the caller (`stop_reason`)."""
    _reasons.append(reason)
    handler = _tune_handler()
    if handler is not None:
        tune_log = logging.getLogger("ray.tune.tune")
        level = tune_log.level
        tune_log.setLevel(logging.ERROR)  # its "Stop signal received (e.g. via SIGINT)"
        try:
            handler(signal.SIGINT, None)
        finally:
            tune_log.setLevel(level)


USER_ERROR = "user error: "  # a stop reason: this prefix, then the trial and its cause


def stop_reason() -> str | None:
    """Why a callback stopped the search (`stop_search`), or None."""
    return _reasons[0] if _reasons else None


def tune_fit(fit: Callable[[], Any]) -> Any:
    """Run `Tuner.fit` and give SIGINT and SIGUSR1 back to the caller's handlers afterwards.
    A stop reason is this run's own: one left by an earlier search of the same process is
    forgotten."""
    _reasons.clear()
    before = {sig: signal.getsignal(sig) for sig in TUNE_SIGNALS}
    try:
        return fit()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def local_ray_on_loopback(address: str | None) -> None:
    """A Ray started by this process for itself listens on 127.0.0.1 only. Ray's GCS, raylet,
    workers and agents otherwise listen on every interface (Ray does so for Linux only: on
    macOS and Windows a local Ray uses the loopback address, through this same switch). Must
    run before `ray` is imported; a cluster run (`--address`, `RAY_ADDRESS`) keeps Ray's
    settings, except one on this machine's loopback (`127.0.0.1:PORT`, `localhost:PORT`):
    Ray would turn that address into the machine's own, where nothing listens, and retry for
    minutes without a word."""
    given = address or os.environ.get("RAY_ADDRESS")
    host = (given or "").removeprefix("ray://").rpartition(":")[0].strip("[]")
    if given and not (host == "localhost" or host.startswith("127.") or host == "::1"):
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


GCS_PROBE_TIMEOUT_S = 5.0
# An HTTP/2 client's opening (the connection preface and an empty SETTINGS frame): a Ray GCS,
# a gRPC server, answers with a SETTINGS frame of its own (frame type 4, RFC 9113 3.4).
_H2_OPENING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check_address(address: str | None, what: str) -> None:
    """Refuse, within seconds and before anything is written, a HOST:PORT where no Ray head
    answers: Ray itself would retry for minutes without a word. A Ray GCS is recognised by
    its gRPC (HTTP/2) answer. `auto`, `local` and `ray://` addresses are left to Ray."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    where = f"{what} {address}"
    rule = ("start the cluster's head (ray start --head) or give its HOST:PORT (the GCS port, "
            "6379 by default)")
    try:
        with socket.create_connection((host, int(port)), timeout=GCS_PROBE_TIMEOUT_S) as sock:
            sock.settimeout(GCS_PROBE_TIMEOUT_S)
            sock.sendall(_H2_OPENING)
            answer = sock.recv(9)
    except (OSError, ValueError) as err:
        reason = (f"no answer within {GCS_PROBE_TIMEOUT_S:g} s" if isinstance(err, TimeoutError)
                  else getattr(err, "strerror", None) or str(err))
        raise ArgumentError(f"{where}: no Ray cluster answers there ({reason}); {rule}") \
            from None
    if len(answer) < 4 or answer[3] != 4:
        raise ArgumentError(f"{where}: something answers there, but not a Ray head (its GCS "
                            f"speaks gRPC); {rule}")


def start_ray(address: str | None = None, job_name: str | None = None, **options: Any):
    """`ray.init` for a command: on `address`, else `RAY_ADDRESS`, else a new Ray of this
    process's own. Ray's own default would join the newest cluster started on this machine
    (`/tmp/ray/ray_current_cluster`): a `ray start` left running, or another user's search,
    whose resources, storage and exposure are not the ones this command was asked for. The
    dashboard's jobs page names the job `job_name`. Then SIGTERM is handled as Ctrl-C
    (`ray.init` installs its own handler)."""
    given = address or os.environ.get("RAY_ADDRESS")
    check_address(given, "--address" if address else "RAY_ADDRESS")
    if quiet_ray():
        options.setdefault("logging_level", logging.WARNING)  # ray.init sets it again
    if job_name:
        options["job_config"] = ray.job_config.JobConfig(metadata={"job_name": job_name})
    try:
        context = ray.init(address=given or "local", **options)
    except SystemExit as exit_:  # Ray's own SIGTERM handler while it starts: sys.exit(15)
        if exit_.code != signal.SIGTERM:
            raise
        _received.append(signal.SIGTERM)
        raise Stopped(f"signal {signal.SIGTERM} while Ray started") from None
    install()
    return context


def tune_env_defaults() -> None:
    """Ray Tune's environment for a search or a job grid (a value the user set is kept): no
    warning for the experiment-state snapshot each epoch's checkpoint forces (milliseconds
    here); no Ray tables or TensorBoard hint (a folder in Ray's temporary session, gone after
    the run), since segtune prints its own trial and status lines; and, unless --debug, no
    traceback per failed trial (segtune logs one line; the traceback stays in its error file)."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not logging.getLogger(__name__).isEnabledFor(logging.DEBUG):
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")


def quiet_ray() -> bool:
    """Ray's INFO lines (its start-up banner, Ray Tune's "Wrote the latest version of all
    result files") and its token-authentication notice stay off the terminal (segtune says
    where the dashboard is, and how to get its token); its warnings stay. Ray sets its
    loggers' levels when it is imported, so this runs after the import. Colour codes in the
    trials' log prefixes only where stderr is a terminal. False under --debug (Ray says
    everything)."""
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return False
    ray.is_initialized()  # imports Ray, which configures its loggers
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    return True
