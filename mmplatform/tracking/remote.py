"""Keeping a dead or hung Aim server from stalling training.

Measured with aim 3.29.1 (see tests/test_tracking.py for the cases that guard it):

- Port closed at open: ``Run(repo="aim://...")`` raises ``RuntimeError`` within milliseconds.
- Port open but silent (a hung or SIGSTOPped server): the constructor blocks about 30 s
  (three HTTP requests with Aim's fixed 10 s timeout) before raising.
- Server gone mid-run: ``run.track`` and ``run[...] = ...`` still return at once, because
  writes are only queued to a background thread, which then retries forever. Every read
  (``run.metrics()``, ``run[...]`` lookups), ``run.close()`` and Aim's interpreter-exit
  cleanup wait for that queue to drain, i.e. forever: the training process would hang in
  its last line, or at exit.
- Interpreter exit after any remote use: Aim's exit hook waits forever if one remote
  finalizer raises (server gone) or blocks (server hung), even for runs closed cleanly.

So every remote Aim call goes through :class:`DeadlineCaller` (one daemon thread; the
caller waits at most a deadline and then abandons the thread), a cheap HTTP probe with a
short timeout runs before opening, at each new step and before closing (both held by a
tracker's :class:`ServerLink`), an abandoned server's objects are unhooked from Aim's
cleanup (:func:`forget_remote`), and :func:`install_exit_guard` bounds the exit cleanup of
all remote resources.
"""

from __future__ import annotations

import atexit
import http.client
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

AIM_URL_SCHEME = "aim://"


class RemoteUnavailable(RuntimeError):
    """The Aim server did not answer, or answered with an error, within the deadline."""


def is_remote(repo: object) -> bool:
    return isinstance(repo, str) and repo.startswith(AIM_URL_SCHEME)


def host_port(url: str) -> tuple[str, int]:
    """``aim://host:port[/...]`` -> ``(host, port)``; the port defaults to Aim's 53800."""
    address = url[len(AIM_URL_SCHEME) :].split("/", 1)[0]
    host, _, port = address.rpartition(":")
    if not host:
        return address, 53800
    return host, int(port)


def probe(url: str, timeout_s: float) -> str | None:
    """Ask the server's ``/status/`` endpoint; return None if it answered, else why not.

    ``http.client`` rather than Aim's ``requests`` client: it takes our timeout, ignores
    proxy variables, and costs a millisecond on a healthy server. Any HTTP answer counts
    as alive (the endpoint answers 200 on 3.29.1); a TLS-only server is tried over HTTPS.
    """
    host, port = host_port(url)
    reason = None
    for connection_class in (http.client.HTTPConnection, http.client.HTTPSConnection):
        connection = connection_class(host, port, timeout=timeout_s)
        try:
            connection.request("GET", "/status/")
            connection.getresponse().read()
            return None
        except (OSError, http.client.HTTPException) as error:
            reason = f"{type(error).__name__}: {error}"
            # A refused or timed-out connection will not get better over TLS; a garbled
            # answer (plain HTTP spoken to a TLS port) might.
            if isinstance(error, (ConnectionRefusedError, TimeoutError)):
                break
        finally:
            connection.close()
    return reason


class DeadlineCaller:
    """Runs callables on one daemon thread and waits for each at most ``timeout_s``.

    One thread, in order, because Aim's remote client batches writes per thread
    (thread-local instruction batches) and a run's calls must not interleave. After a
    timeout the thread may stay blocked forever inside Aim; it is a daemon, so it
    cannot keep the interpreter alive, and the caller must stop using this object
    (:attr:`abandoned`). ``concurrent.futures`` is not used because its worker threads
    are joined at interpreter exit, which is exactly the hang this avoids.
    """

    def __init__(self, name: str):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self.abandoned = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            function, args, kwargs, outcome, done = request
            try:
                outcome["value"] = function(*args, **kwargs)
            except BaseException as error:  # handed to the waiting caller
                outcome["error"] = error
            done.set()

    def call(self, timeout_s: float, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.abandoned:
            raise RemoteUnavailable("remote caller was abandoned after an earlier failure")
        outcome: dict[str, Any] = {}
        done = threading.Event()
        self._requests.put((function, args, kwargs, outcome, done))
        if not done.wait(timeout_s):
            self.abandoned = True
            raise RemoteUnavailable(f"{getattr(function, '__name__', function)} took over {timeout_s:g} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def stop(self) -> None:
        """End the thread once it is idle; a thread stuck in Aim is left to die with the process."""
        if not self.abandoned:
            self._requests.put(None)


class ServerLink:
    """One tracker's line to an ``aim://`` server: each call under a deadline, a liveness
    probe, and, once the tracker gives the server up, no call ever again.

    Giving up lasts for the rest of the training, so one slow probe answer from a busy
    server is not enough: :meth:`check` asks twice (a refused port fails both in
    microseconds, a silent one costs ``2 * probe_timeout_s``).
    """

    def __init__(self, url: str, *, timeout_s: float, probe_timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s
        self.probe_timeout_s = probe_timeout_s
        install_exit_guard()
        self._caller = DeadlineCaller(name=f"aim-remote-{url}")

    @property
    def abandoned(self) -> bool:
        return self._caller.abandoned

    def check(self) -> str | None:
        """None if the server answers its status endpoint, else why not."""
        reason = probe(self.url, self.probe_timeout_s)
        if reason is not None:
            reason = probe(self.url, self.probe_timeout_s)
        return reason

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on the link's thread; :class:`RemoteUnavailable` past the
        deadline (and for every call after that), the function's own error otherwise."""
        return self._caller.call(self.timeout_s, function, *args)

    def abandon(self, *objects: Any) -> None:
        """Stop using the server: no further calls, and ``objects`` (the run, its repo) are
        kept from Aim's cleanup, which would wait on the dead server forever."""
        self._caller.abandoned = True
        forget_remote(self.url, *objects)

    def close(self) -> None:
        self._caller.stop()


# Objects of abandoned servers: kept referenced so that garbage collection never runs
# their Aim finalizers (which would block the collecting thread on the dead queue).
_ABANDONED: list[Any] = []
_DEAD_ADDRESSES: set[str] = set()
_exit_guard_lock = threading.Lock()
_exit_guard_installed = False
EXIT_CLEANUP_TIMEOUT_S = 10.0


def forget_remote(url: str, *objects: Any) -> None:
    """Make sure nothing tied to the server at ``url`` is cleaned up, now or at exit.

    Aim registers a finalizer per remote resource (run, repo, proxy trees, locks); each
    flushes the client's request queue first, which for a dead server never ends. This
    detaches those finalizers now, and the exit guard skips any that an abandoned call
    registers later (the abandoned thread may still be inside ``Run(...)``).
    """
    host, port = host_port(url)
    _DEAD_ADDRESSES.add(f"{host}:{port}")
    _ABANDONED.extend(objects)
    try:
        from aim.sdk.repo import Repo

        # A later Tracker for the same URL (server restarted) must get a fresh client.
        Repo._pool.pop(url, None)
    except Exception:  # aim internals moved: nothing pooled to drop
        logger.debug("could not drop %s from Aim's repo pool", url, exc_info=True)
    for _, finalizer, address in _remote_finalizers():
        if address in _DEAD_ADDRESSES:
            finalizer.detach()
    install_exit_guard()


def install_exit_guard() -> None:
    """Bound Aim's interpreter-exit cleanup of remote resources.

    Aim closes everything from one ``atexit`` hook that waits, without a timeout, for a
    thread running every finalizer in turn; a finalizer that raises (a server that went
    away: ``requests.ConnectionError``) kills that thread and the wait never ends, and one
    that blocks (a hung server) never returns. Measured: a process that only queried a
    server which was stopped before the process ended hangs at exit for good. This hook
    runs first and closes the remote resources itself, on a deadline thread, logging
    errors; Aim's hook is left with the local ones.
    """
    global _exit_guard_installed
    with _exit_guard_lock:
        if _exit_guard_installed:
            return
        from aim.ext.cleanup import AutoClean

        # atexit runs hooks last-in first-out: make sure Aim's cleanup is registered
        # before ours, so ours runs first.
        if not AutoClean._registered_with_atexit:
            atexit.register(AutoClean.cleanup)
            AutoClean._registered_with_atexit = True
        atexit.register(_close_remote_resources)
        _exit_guard_installed = True


def _remote_finalizers() -> list[tuple[int, Any, str]]:
    """(priority, finalizer, "host:port") of Aim's pending finalizers that talk to a server,
    in the order Aim would run them (higher priority first, then last registered first)."""
    try:
        from aim.ext.cleanup import AutoClean
    except Exception:
        return []
    ordered = sorted(AutoClean._finalizers.items(), key=lambda item: item[1][0])
    found = []
    for _, (priority, finalizer) in reversed(ordered):
        info = finalizer.peek()
        if info is None:
            continue
        address = _client_address(getattr(info[1], "__self__", None))  # the AutoClean owning _close
        if address is not None:
            found.append((priority, finalizer, address))
    return found


def _close_remote_resources() -> None:
    caller = DeadlineCaller(name="aim-exit-cleanup")
    for _, finalizer, address in _remote_finalizers():
        detached = finalizer.detach()  # Aim's own hook will find nothing left to run
        if detached is None or address in _DEAD_ADDRESSES:
            continue
        _, close, args, kwargs = detached
        try:
            caller.call(EXIT_CLEANUP_TIMEOUT_S, close, *args, **(kwargs or {}))
        except RemoteUnavailable:
            logger.warning("Aim server %s did not answer at exit; skipping its cleanup", address)
            _DEAD_ADDRESSES.add(address)
            caller = DeadlineCaller(name="aim-exit-cleanup")
        except Exception as error:  # the server went away: nothing left to release there
            logger.debug("Aim cleanup for %s failed: %s", address, error)
    caller.stop()


def _client_address(auto_clean: Any) -> str | None:
    """The ``host:port`` of the Aim client an AutoClean would talk to while closing."""
    client = (
        getattr(auto_clean, "rpc_client", None)  # remote trees, locks, file managers
        or getattr(auto_clean, "_client", None)  # the remote Repo
        or getattr(getattr(auto_clean, "repo", None), "_client", None)  # the Run
    )
    return getattr(client, "remote_path", None)
