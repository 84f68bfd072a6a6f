"""Each server process's own figures, where ``accel cache stats`` and the status page can sum them.

The memory tier, its hit and miss counts and the traffic figures (``accel.http.traffic``) live inside each
server process (every worker of ``twistd accel --workers N`` has its own). A process using a cache directory
publishes them about once a second to ``<cache-dir>/processes/<pid>.json`` (written to a temporary name, then
renamed, so a reader never sees half a file) and removes its file when it closes. Readers skip the files of
processes that are gone (a process killed with SIGKILL leaves its file behind).

When the status page is asked for, figures a second old would not do: ``FiguresExchange.refresh`` asks every
other process to publish now (a datagram to its address in Linux's abstract namespace,
``accel-figures-<pid>``) and fires once each has answered that it did (or after ``REFRESH_TIMEOUT``; then the
files as they are). A request a process has answered is in its figures before it reads such a datagram.
The same exchange carries other requests to every process (``FiguresExchange.ask``): the balancer manager's
"read the record of changes again" (``accel.proxy.manager_record``) is one.
"""

from __future__ import annotations

import json
import os
import secrets
import socket

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from accel.cache.lease import process_alive

log = Logger()

PROCESSES_DIR = "processes"
SUMMED = ("objects", "bytes", "hits", "misses", "evictions")


class ProcessFigures:
    """This process's published figures."""

    def __init__(self, cache_dir: str, pid: int | None = None):
        self.pid = os.getpid() if pid is None else pid
        directory = os.path.join(cache_dir, PROCESSES_DIR)
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{self.pid}.json")

    def publish(self, figures: dict) -> None:
        """Write the figures (``SUMMED`` and any others); a cache directory removed under a running server is
        not this method's concern."""
        temporary = f"{self.path}.tmp"
        try:
            with open(temporary, "w") as f:
                json.dump({"pid": self.pid, **figures}, f)
            os.replace(temporary, self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def live_pids(cache_dir: str, alive=process_alive) -> list[int]:
    """The live processes publishing for ``cache_dir``."""
    try:
        names = os.listdir(os.path.join(cache_dir, PROCESSES_DIR))
    except FileNotFoundError:
        return []
    pids = []
    for name in sorted(names):
        stem, _, extension = name.partition(".")
        if extension == "json" and stem.isdigit() and alive(int(stem)):
            pids.append(int(stem))
    return pids


def live_figures(cache_dir: str, alive=process_alive) -> list[dict]:
    """The figures of every live process publishing for ``cache_dir``."""
    directory = os.path.join(cache_dir, PROCESSES_DIR)
    found = []
    for pid in live_pids(cache_dir, alive):
        try:
            with open(os.path.join(directory, f"{pid}.json")) as f:
                found.append(json.load(f))
        except (OSError, ValueError):
            continue  # it closed meanwhile
    return found


REFRESH_TIMEOUT = 1.0  # seconds a refresh waits for the other processes' answers


def _address(pid: int) -> str:
    return f"\0accel-figures-{pid}"


PUBLISH = b"publish"


@implementer(IReadDescriptor)
class FiguresExchange:
    """Asks the other processes publishing in a cache directory to do something now (publish their figures,
    or what ``handle`` adds), and does it when asked.

    Datagrams: ``KIND NONCE PID`` (do KIND, then answer PID) and ``done NONCE PID``.
    """

    def __init__(self, reactor, cache_dir: str, publish, pid: int | None = None):
        """``publish()`` writes this process's figures (``ProcessFigures.publish`` with them)."""
        self.reactor, self.cache_dir, self.publish = reactor, cache_dir, publish
        self.pid = os.getpid() if pid is None else pid
        self.handlers = {PUBLISH: publish}
        self.waiting: dict[bytes, tuple[Deferred, set[int], object]] = {}
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(_address(self.pid))
        self.socket.setblocking(False)
        reactor.addReader(self)

    def handle(self, kind: bytes, handler) -> None:
        """Run ``handler()`` when another process asks for ``kind`` (one word)."""
        self.handlers[kind] = handler

    def refresh(self, timeout: float = REFRESH_TIMEOUT) -> Deferred:
        """Publish this process's figures and have every other live process publish its own; fires (with
        None) when all have, or after ``timeout``."""
        self.publish()
        return self.ask(PUBLISH, timeout)

    def ask(self, kind: bytes, timeout: float = REFRESH_TIMEOUT) -> Deferred:
        """Have every other live process run its handler of ``kind``; fires (with None) when all have, or after
        ``timeout`` (a process still starting answers once its reactor runs; one not listening is not waited for)."""
        nonce = secrets.token_hex(8).encode("ascii")
        asked = set()
        for pid in live_pids(self.cache_dir):
            if pid != self.pid and self._send(pid, b"%s %s %d" % (kind, nonce, self.pid)):
                asked.add(pid)
        if not asked:
            return succeed(None)
        d = Deferred()
        self.waiting[nonce] = (d, asked, self.reactor.callLater(timeout, self._done, nonce))
        return d

    def _send(self, pid: int, data: bytes) -> bool:
        try:
            self.socket.sendto(data, _address(pid))
            return True
        except OSError:
            return False  # gone, or not listening (an older process): its file as it is

    def _done(self, nonce: bytes) -> None:
        d, _, timer = self.waiting.pop(nonce)
        if timer.active():
            timer.cancel()
        d.callback(None)

    def fileno(self) -> int:
        return self.socket.fileno()

    def doRead(self) -> None:
        messages = []
        while True:
            try:
                messages.append(self.socket.recv(256).split())
            except (BlockingIOError, InterruptedError):
                break
        done = set()  # each kind runs once for all the requests read together
        for message in messages:
            if len(message) != 3 or not message[2].isdigit():
                continue
            kind, nonce, pid = message[0], message[1], int(message[2])
            if kind in self.handlers:
                if kind not in done:
                    done.add(kind)
                    try:
                        self.handlers[kind]()
                    except Exception:  # the exchange goes on serving the other requests
                        log.failure("{kind} asked by process {pid} failed", kind=kind.decode("ascii", "replace"), pid=pid)
                self._send(pid, b"done %s %d" % (nonce, self.pid))
            elif kind == b"done" and nonce in self.waiting:
                asked = self.waiting[nonce][1]
                asked.discard(pid)
                if not asked:
                    self._done(nonce)

    def connectionLost(self, reason) -> None:
        self.close()

    def logPrefix(self) -> str:
        return "accel-figures"

    def close(self) -> None:
        if self.socket.fileno() >= 0:
            self.reactor.removeReader(self)
            self.socket.close()
        for nonce in list(self.waiting):
            self._done(nonce)


def summed(figures: list[dict]) -> dict:
    return {key: sum(f.get(key, 0) for f in figures) for key in SUMMED}
