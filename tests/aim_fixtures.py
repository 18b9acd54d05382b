"""A real ``aim server`` on a free loopback port, for tests (import the fixtures in conftest).

``aim_server`` is session-scoped (a server takes several seconds to start on these
2 cores); tests that must stop or freeze a server get their own through
``aim_server_factory``. Other people's Aim servers may run on this machine, so a server
binds a free port on 127.0.0.1 and is stopped through the process group it was started
in, never by name.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mmplatform.tracking.query import aim_executable
from mmplatform.tracking.remote import forget_remote

STARTUP_TIMEOUT_S = 90.0


def free_port() -> int:
    """A port nobody listens on right now (the kernel picks it; the socket is closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/status/")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


@dataclass
class AimServer:
    repo_path: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    frozen: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"aim://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def _signal_group(self, signum: int) -> None:
        # `aim server` runs uvicorn as a child process; both live in the session started
        # for them (start_new_session), whose group id is the `aim server` PID.
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Crash the server (SIGKILL, no goodbye to clients) and reap it."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reap_group()
        self._forget()

    def _forget(self) -> None:
        # Aim clients of this process that still point at the server (query helpers, closed
        # runs) must not try to say goodbye to it at exit, nor be reused if the port is.
        forget_remote(self.url)

    def freeze(self) -> None:
        """Stop the server without closing its port: connections open, nothing answers."""
        self._signal_group(signal.SIGSTOP)
        self.frozen = True

    def stop(self) -> None:
        if self.frozen:
            self._signal_group(signal.SIGCONT)
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=15)
        self._reap_group()
        self._forget()

    def _reap_group(self) -> None:
        # uvicorn (the child holding the port) can outlive its parent for a moment; wait
        # until the port refuses connections, so the server is really gone on return.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)


def start_aim_server(repo_path: Path, attempts: int = 3, port: int | None = None) -> AimServer:
    """Start ``aim server`` for ``repo_path`` on a free port; return once it answers.

    ``aim server -y`` initialises a missing repo itself (what ``aim init`` would do, without
    paying a second interpreter start-up). Retries on another port if the chosen one was
    taken between choosing and binding. ``port``: that port only (a server restarted where its
    clients expect it), retried on the same port.
    """
    repo_path = Path(repo_path)
    repo_path.mkdir(parents=True, exist_ok=True)
    last_log = ""
    chosen = port
    for attempt in range(attempts):
        port = chosen or free_port()
        log_path = repo_path.parent / f"aim-server-{port}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [aim_executable(), "server", "--host", "127.0.0.1", "--port", str(port), "--repo", str(repo_path), "-y"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = AimServer(repo_path=repo_path, port=port, process=process, log_path=log_path)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(port):
                return server
            time.sleep(0.2)
        server.stop()
        last_log = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"aim server did not come up in {attempts} attempts; last log:\n{last_log}")


@pytest.fixture(scope="session")
def aim_server(tmp_path_factory) -> AimServer:
    """One server for the session; tests must not stop it. ``.url`` is ``aim://127.0.0.1:P``."""
    server = start_aim_server(tmp_path_factory.mktemp("aim_server") / "repo")
    yield server
    server.stop()


@pytest.fixture
def aim_server_factory(tmp_path):
    """``start(repo_path=None, port=None)`` -> a server of this test's own (``port``: restart one
    where its clients expect it); all are stopped afterwards."""
    servers: list[AimServer] = []

    def start(repo_path: Path | None = None, port: int | None = None) -> AimServer:
        server = start_aim_server(repo_path or tmp_path / f"aim_repo_{len(servers)}", port=port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
