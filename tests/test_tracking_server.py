"""The line to a remote Aim server (mmplatform.tracking.remote.ServerLink) on its own: a liveness
probe bounded for a closed port, a silent listener and a healthy HTTP server (all real sockets on
loopback), and calls that give up at their deadline and stay given up."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from mmplatform.tracking.remote import RemoteUnavailable, ServerLink
from tests.aim_fixtures import free_port

PROBE_TIMEOUT_S = 0.5
HANG_GUARD_S = 10.0
"""Only catches hangs, not a speed target."""


@pytest.fixture
def status_server():
    """A plain HTTP server that answers ``/status/`` as Aim's does (200)."""

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/status/" else 404)
            self.end_headers()
            self.wfile.write(b'{"status": "OK"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"aim://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port():
    """Accepts connections (the kernel's backlog) and never answers: a hung server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def link(url: str, timeout_s: float = 1.0) -> ServerLink:
    return ServerLink(url, timeout_s=timeout_s, probe_timeout_s=PROBE_TIMEOUT_S)


def test_a_healthy_server_passes_the_probe(status_server):
    assert link(status_server).check() is None


def test_a_closed_port_fails_the_probe_at_once():
    start = time.monotonic()
    reason = link(f"aim://127.0.0.1:{free_port()}").check()
    assert reason is not None and "ConnectionRefusedError" in reason
    assert time.monotonic() - start < HANG_GUARD_S


def test_a_silent_server_fails_the_probe_after_two_timeouts(silent_port):
    start = time.monotonic()
    reason = link(f"aim://127.0.0.1:{silent_port}").check()
    elapsed = time.monotonic() - start
    assert reason is not None and "timed out" in reason
    # Asked twice before giving up: one slow answer from a busy server is not enough.
    assert 2 * PROBE_TIMEOUT_S * 0.9 <= elapsed < HANG_GUARD_S


def test_calls_run_in_order_on_one_thread_and_return_their_values(status_server):
    server_link = link(status_server)
    threads = [server_link.call(lambda: threading.current_thread().name) for _ in range(3)]
    assert len(set(threads)) == 1 and threads[0] != threading.current_thread().name
    with pytest.raises(ZeroDivisionError):
        server_link.call(lambda: 1 / 0)
    assert server_link.call(lambda a, b: a + b, 2, 3) == 5  # an error does not end the link
    server_link.close()


def test_a_call_past_its_deadline_gives_up_and_every_later_call_fails_at_once(status_server):
    server_link = link(status_server, timeout_s=0.3)
    release = threading.Event()
    start = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="took over 0.3 s"):
        server_link.call(release.wait)  # blocks like a write to a hung server
    assert time.monotonic() - start < HANG_GUARD_S
    assert server_link.abandoned
    ran = []
    with pytest.raises(RemoteUnavailable, match="abandoned"):
        server_link.call(ran.append, "queued behind the hung call")
    release.set()  # the hung call returns at last; nothing was queued behind it
    time.sleep(0.2)
    assert ran == []


def test_abandon_stops_all_calls(status_server):
    server_link = link(status_server)
    assert server_link.call(lambda: 1) == 1
    server_link.abandon()
    with pytest.raises(RemoteUnavailable):
        server_link.call(lambda: 1)
