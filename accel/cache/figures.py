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
"""

from __future__ import annotations

import json
import os
import secrets
import socket

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from accel.cache.lease import process_alive

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


@implementer(IReadDescriptor)
class FiguresExchange:
    """Asks the other processes publishing in a cache directory to publish now, and does so when asked.

    Datagrams: ``publish NONCE PID`` (publish, then answer PID) and ``published NONCE PID``.
    """

    def __init__(self, reactor, cache_dir: str, publish, pid: int | None = None):
        """``publish()`` writes this process's figures (``ProcessFigures.publish`` with them)."""
        self.reactor, self.cache_dir, self.publish = reactor, cache_dir, publish
        self.pid = os.getpid() if pid is None else pid
        self.waiting: dict[bytes, tuple[Deferred, set[int], object]] = {}
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(_address(self.pid))
        self.socket.setblocking(False)
        reactor.addReader(self)

    def refresh(self, timeout: float = REFRESH_TIMEOUT) -> Deferred:
        """Publish this process's figures and have every other live process publish its own; fires (with
        None) when all have, or after ``timeout``."""
        self.publish()
        nonce = secrets.token_hex(8).encode("ascii")
        asked = set()
        for pid in live_pids(self.cache_dir):
            if pid != self.pid and self._send(pid, b"publish %s %d" % (nonce, self.pid)):
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
        published = False
        for message in messages:
            if len(message) != 3 or not message[2].isdigit():
                continue
            kind, nonce, pid = message[0], message[1], int(message[2])
            if kind == b"publish":
                if not published:
                    self.publish()
                    published = True
                self._send(pid, b"published %s %d" % (nonce, self.pid))
            elif kind == b"published" and nonce in self.waiting:
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
