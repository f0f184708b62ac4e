"""No silent hangs (issue 30, item 7): a cluster address where no Ray head answers, and a
tracking server that answers but not as MLflow (503, a 404 page), are one line naming them,
exit code 2, within seconds, before Ray starts or anything is written. Real sockets and a
real HTTP server in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import ROOT

from search.cli import main

SMOKE = str(ROOT / "spaces" / "smoke.yaml")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server():
    """A real HTTP server on loopback answering every GET with `server.answer` (status,
    content type, body)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.server.paths.append(self.path)  # before the answer: the client may be done
            status, kind, body = self.server.answer
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.answer, server.paths = (200, "text/plain", b"OK"), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _refused(tmp_path, capsys, monkeypatch, args, env=None) -> str:
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    code = main(["run", SMOKE, "--storage", str(tmp_path / "runs"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert time.monotonic() - start < 60
    lines = [ln for ln in err.splitlines() if ln.startswith("segtune:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()  # nothing written, not even the lock
    return lines[0]


def test_an_address_where_nothing_listens(tmp_path, capsys, monkeypatch):
    address = f"127.0.0.1:{_closed_port()}"
    line = _refused(tmp_path, capsys, monkeypatch, ["--address", address])
    assert line == (f"segtune: error: --address {address}: no Ray cluster answers there "
                    "(Connection refused); start the cluster's head (ray start --head) or "
                    "give its HOST:PORT (the GCS port, 6379 by default)")


def test_ray_address_of_something_else_is_named(tmp_path, capsys, monkeypatch, http_server):
    address = f"127.0.0.1:{http_server.server_address[1]}"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    line = _refused(tmp_path, capsys, monkeypatch, [], env={"RAY_ADDRESS": address})
    assert line.startswith(f"segtune: error: RAY_ADDRESS {address}: something answers there, "
                           "but not a Ray head (its GCS speaks gRPC)")


@pytest.mark.parametrize("status, kind, body, why", [
    (503, "text/plain", b"busy", "the server is unavailable (starting, overloaded or down)"),
    (404, "text/html", b"<html>no such page</html>", "not an MLflow tracking server's answer"),
    (200, "text/html", b"<html>a web site</html>", "not an MLflow tracking server's answer"),
    (401, "text/plain", b"login", "a login is needed: set MLFLOW_TRACKING_USERNAME"),
])
def test_a_tracking_server_that_is_not_mlflow(tmp_path, capsys, monkeypatch, http_server,
                                              status, kind, body, why):
    http_server.answer = (status, kind, body)
    uri = f"http://127.0.0.1:{http_server.server_address[1]}"
    line = _refused(tmp_path, capsys, monkeypatch, ["--tracking-uri", uri])
    endpoint = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert line == (f"segtune: error: --tracking-uri {uri}: answers HTTP {status} at "
                    f"{endpoint} ({why}" + line.split(why, 1)[1]), line
    assert why in line and "start the MLflow server, or pick another tracking URI" in line


def test_an_mlflow_answer_passes_with_the_clients_credentials(http_server, monkeypatch):
    from search.tracking import check_tracking

    http_server.answer = (200, "application/json", json.dumps({"experiments": []}).encode())
    seen = []

    def record(self, *args):
        seen.append(self.headers.get("Authorization"))

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret")
    monkeypatch.setattr(http_server.RequestHandlerClass, "log_message", record)
    check_tracking(f"http://127.0.0.1:{http_server.server_address[1]}", "--tracking-uri")
    assert http_server.paths == ["/api/2.0/mlflow/experiments/search?max_results=1"]
    assert seen == ["Bearer secret"]


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:6379", True), ("localhost:6379", True), ("[::1]:6379", True),
    ("ray://127.0.0.1:10001", True), (None, True), ("10.0.0.5:6379", False),
    ("auto", False),
])
def test_a_loopback_cluster_address_keeps_rays_loopback_switch(monkeypatch, address,
                                                                loopback):
    """Ray turns 127.0.0.1 into the machine's address unless its loopback switch is set, then
    retries for minutes where nothing listens: set for a loopback --address too."""
    import os

    from search import stopping

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    stopping.local_ray_on_loopback(address)
    assert (os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0") == loopback
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    if address:  # the same from RAY_ADDRESS
        monkeypatch.setenv("RAY_ADDRESS", address)
        stopping.local_ray_on_loopback(None)
        assert (os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0") == loopback


TERM_IN_RAY_INIT = """
import os, signal, sys
import ray._private.utils as utils
from search.cli import main

set_handler = utils.set_sigterm_handler

def set_then_term(handler):  # a SIGTERM arriving while Ray's own handler is in place
    set_handler(handler)
    os.kill(os.getpid(), signal.SIGTERM)

utils.set_sigterm_handler = set_then_term
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_ray_starts_is_said_and_exits_143(tmp_path):
    """Ray's ray.init installs a SIGTERM handler of its own (sys.exit(15)): a SIGTERM while
    Ray starts ended the CLI with exit 15 and no word. It is a stop like any other: one line,
    exit 143, no run folder or lock left (issue 30, item 9)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", TERM_IN_RAY_INIT, "run", SMOKE, "--storage",
                           str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**env, "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "segtune: interrupted"
    assert not (tmp_path / "runs").exists()
