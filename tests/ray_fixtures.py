"""One real local Ray cluster per test session, started like a user would (``ray start --head``).

Tests connect their driver to it through ``RAY_ADDRESS`` and submit jobs to its dashboard,
so training, sweeps and ``ray job submit`` all run against the same cluster. Every port is a
free loopback port (other Ray instances may run on this machine) and ``RAY_ADDRESS`` is
exported to the cluster's own processes, so Train's placement-group cleaner finds this
cluster and not another. At the end the processes of this cluster, and only those, are
stopped by PID (never ``ray stop``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.aim_fixtures import free_port

LOOPBACK_ENV = {
    # Ray replaces 127.0.0.1 by the machine's network address unless it runs in its
    # single-host mode; tests must only ever talk to loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def session_env() -> dict[str, str]:
    """What Ray must see before it is first imported in the test process: loopback only, and
    token auth as on a real cluster with one token for the session (Ray reads both at import)."""
    return {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

LOGICAL_CPUS = 8
"""More logical CPUs than the 2 cores: a Tune driver, a Train controller and each worker all
ask for one while mostly waiting on each other."""


_WORKER_RANGES: list[range] = []
"""Every worker port range handed out in this session: no single port is drawn inside one."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, none inside a worker port range handed out before. The kernel
    may give out a port of a range picked a moment earlier, and ``ray start`` refuses two of its
    components on one port (seen: the object manager's port inside the same node's worker range)."""
    ports: list[int] = []
    for _ in range(100 * count):
        port = free_port()
        if port not in ports and not any(port in taken for taken in _WORKER_RANGES):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} distinct free ports outside the Ray worker ranges")


def free_port_range(width: int) -> tuple[int, int]:
    """A run of ``width`` consecutive free ports (Ray's worker ports), kept out of :func:`free_ports`."""
    for _ in range(50):
        start = free_port()
        if start + width > 65000:
            continue
        ports = range(start, start + width)
        try:
            sockets = []
            for port in ports:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        _WORKER_RANGES.append(ports)
        return start, start + width - 1
    raise RuntimeError("no free port range for Ray workers")


@dataclass
class LocalRayCluster:
    address: str
    dashboard_url: str
    temp_dir: Path
    env: dict[str, str]
    """The environment a client of this cluster needs (address, auth token, loopback mode)."""

    def client_env(self) -> dict[str, str]:
        keys = ("RAY_ADDRESS", *session_env())
        return {key: self.env[key] for key in keys}

    def processes(self) -> list[psutil.Process]:
        """The processes of this cluster: every process whose command line names its temp dir
        (except this process and its ancestors, whose command lines may quote it)."""
        mine = []
        marker = str(self.temp_dir)
        ourselves = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
        for process in psutil.process_iter(["cmdline"]):
            try:
                if process.pid in ourselves:
                    continue
                if any(marker in part for part in process.info["cmdline"] or ()):
                    mine.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return mine

    def worker_processes(self, title: str) -> list[psutil.Process]:
        """Live worker processes of this cluster whose (Ray-set) title contains ``title``,
        e.g. ``RayTrainWorker``: descendants of this cluster's raylet."""
        found = []
        for process in self.processes():
            try:
                if "raylet" not in process.name():
                    continue
                for child in process.children(recursive=True):
                    if title in " ".join(child.cmdline()):
                        found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def _processes_and_children(self) -> dict[int, psutil.Process]:
        processes = self.processes()
        children = []
        for process in processes:
            try:
                children.extend(process.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return {p.pid: p for p in processes + children}

    def kill(self) -> list[int]:
        """Crash this cluster's (or node's) processes: SIGKILL by PID, no goodbye to the GCS.
        Returns the PIDs killed."""
        everything = self._processes_and_children()
        for process in everything.values():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(everything.values()), timeout=15)
        return sorted(everything)

    def stop(self) -> None:
        everything = self._processes_and_children()
        for process in everything.values():
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(list(everything.values()), timeout=15)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def machine_address() -> str:
    """This machine's own (non-loopback) IPv4 address: what the nodes of a multi-node cluster on
    one machine must use. Connecting a UDP socket only picks the route; nothing is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: any routable address picks the interface
        return probe.getsockname()[0]


def start_local_cluster(num_cpus: int = LOGICAL_CPUS, node_ip: str = "127.0.0.1") -> LocalRayCluster:
    """A head node. ``node_ip`` other than loopback (:func:`machine_address`) starts it in Ray's
    multi-node mode, which other nodes can join (:func:`start_worker_node`): Ray's single-host
    mode, which keeps every address on loopback, refuses a second node."""
    # Ray's socket paths must stay short: a pytest tmp_path is too long.
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    min_worker, max_worker = free_port_range(40)
    gcs_port, dashboard_port, *ports = free_ports(9)
    address = f"{node_ip}:{gcs_port}"
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    for key, value in session_env().items():
        env.setdefault(key, value)  # keep the test session's token when it set one
    if node_ip != "127.0.0.1":
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
    env.update(
        RAY_ADDRESS=address,
        # `ray job submit` entrypoints run `python` from the cluster's PATH: the venv's.
        PATH=f"{venv_bin}:{env.get('PATH', '')}",
    )
    command = [
        str(Path(venv_bin) / "ray"), "start", "--head",
        f"--port={gcs_port}", f"--node-ip-address={node_ip}", f"--num-cpus={num_cpus}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--temp-dir={temp_dir}", f"--ray-client-server-port={ports[0]}",
        f"--node-manager-port={ports[1]}", f"--object-manager-port={ports[2]}",
        f"--dashboard-agent-listen-port={ports[3]}", f"--dashboard-agent-grpc-port={ports[4]}",
        f"--runtime-env-agent-port={ports[5]}", f"--metrics-export-port={ports[6]}",
        f"--min-worker-port={min_worker}", f"--max-worker-port={max_worker}",
        "--disable-usage-stats",
    ]
    cluster = LocalRayCluster(address, f"http://127.0.0.1:{dashboard_port}", temp_dir, env)
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
        _wait_for_dashboard(cluster.dashboard_url)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_worker_node(head: LocalRayCluster, num_cpus: int = 1) -> LocalRayCluster:
    """Another node joined to ``head`` (``ray start --address``; the head must be in multi-node
    mode, see :func:`start_local_cluster`), with its own temp dir so that its processes, and only
    those, can be found and killed by PID (``.kill()``, ``.stop()``). It takes the head's auth
    token (token auth: a node without it is refused)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
    min_worker, max_worker = free_port_range(20)
    ports = free_ports(6)
    node_ip = head.address.rsplit(":", 1)[0]
    env = dict(head.env)
    command = [
        str(Path(sys.executable).parent / "ray"), "start", f"--address={head.address}",
        f"--node-ip-address={node_ip}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
        f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
        f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
        f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}",
        f"--min-worker-port={min_worker}", f"--max-worker-port={max_worker}",
        "--disable-usage-stats",
    ]
    node = LocalRayCluster(head.address, head.dashboard_url, temp_dir, env)
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        if started.returncode != 0:
            raise RuntimeError(f"ray start --address failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
    except BaseException:
        node.stop()
        raise
    return node


def _wait_for_dashboard(url: str, timeout_s: float = 120.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5):
                return
        except urllib.error.HTTPError:  # answering at all (e.g. 401 under token auth) means it is up
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise TimeoutError(f"Ray dashboard at {url} did not answer within {timeout_s:.0f} s")
