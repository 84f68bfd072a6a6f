"""Collapsing across processes: one origin fetch for a URL among every worker sharing the cache directory.

``SharedCollapser`` has the ``Collapser``'s interface (``join``, ``release``, ``release_all``) and puts a
fetch lease (``accel.cache.lease``) behind it. Within a process, requests for a URL still wait for the local
leader; the local leader then takes the URL's lease, or — when another process holds it — waits for that
process's fetch too, and its whole local group looks the URL up again when it ends:

- the owner releases the lease (stored: the group is answered from the shared store; not storable: each
  request fetches on its own, and other processes skip collapsing for ``hit_for_miss_ttl``);
- the owner's process is gone (checked once a second while waiting: no disk access);
- ``collapse_timeout`` passes.

The wake-up is a datagram: each process binds a unix datagram socket in Linux's abstract namespace (no file)
and registers its name as a waiter on the lease; the owner sends the URL key to each waiter when it releases
the lease. Nobody polls the lease table.
"""

from __future__ import annotations

import os
import secrets
import socket
import time

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from accel.cache.collapse import Collapser
from accel.cache.lease import LeaseTable, Lead, Skip, process_alive

LIVENESS_CHECK_EVERY = 1.0  # seconds between checks that a lease owner's process still runs


@implementer(IReadDescriptor)
class WakeSocket:
    """This process's wake-up address: receives the keys of released leases."""

    def __init__(self, reactor, on_wake):
        self.reactor, self.on_wake = reactor, on_wake
        self.token = f"accel-{os.getpid()}-{secrets.token_hex(6)}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.token)
        self.socket.setblocking(False)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.socket.fileno()

    def doRead(self) -> None:
        keys = []
        while True:  # read every pending datagram first: a wake-up may end in closing this socket
            try:
                keys.append(self.socket.recv(65536).decode("utf-8", "surrogatepass"))
            except (BlockingIOError, InterruptedError):
                break
        for key in keys:
            self.on_wake(key)

    def send(self, tokens: list[str], key: str) -> None:
        data = key.encode("utf-8", "surrogatepass")
        for token in tokens:
            try:
                self.socket.sendto(data, "\0" + token)
            except OSError:
                pass  # that waiter's process is gone (or its queue is full: its timer wakes it)

    def connectionLost(self, reason) -> None:
        self.close()

    def logPrefix(self) -> str:
        return "accel-wake"

    def close(self) -> None:
        if self.socket.fileno() >= 0:
            self.reactor.removeReader(self)
            self.socket.close()


class SharedCollapser:
    def __init__(self, local: Collapser, leases: LeaseTable, reactor, hit_for_miss_ttl: float,
                 clock=time.time, alive=process_alive):
        self.local = local
        self.leases = leases
        self.reactor = reactor
        self.hit_for_miss_ttl = hit_for_miss_ttl
        self.clock = clock
        self.alive = alive
        self.wake = WakeSocket(reactor, self._woken)
        self.held: set[str] = set()  # keys whose lease this process holds
        self.remote: dict[str, tuple[Deferred, object, LoopingCall]] = {}  # keys another process fetches

    def join(self, key: str) -> Deferred | None:
        """As ``Collapser.join``, across processes: None when this request fetches (and must ``release``)."""
        waiting = self.local.join(key)
        if waiting is not None:
            return waiting
        outcome = self.leases.acquire(key, self.wake.token, self.clock(), self.local.timeout)
        if isinstance(outcome, Lead):
            self.held.add(key)
            return None
        if isinstance(outcome, Skip):
            self.local.release(key)  # not storable lately: nobody queues behind this fetch
            return None
        return self._wait_for(key, outcome.pid)

    def has_waiters(self, key: str) -> bool:
        """Whether requests of this process or of others wait for this process's fetch of ``key``."""
        return self.local.has_waiters(key) or (key in self.held and self.leases.has_waiters(key, self.wake.token))

    def _wait_for(self, key: str, pid: int) -> Deferred:
        woken: Deferred = Deferred()
        timer = self.reactor.callLater(self.local.timeout, self._woken, key)
        watch = LoopingCall(lambda: self.alive(pid) or self._woken(key))
        watch.clock = self.reactor
        watch.start(LIVENESS_CHECK_EVERY, now=False)
        self.remote[key] = (woken, timer, watch)
        return woken

    def _woken(self, key: str) -> None:
        """The other process's fetch ended (or it died, or the wait timed out): the group looks again."""
        found = self.remote.pop(key, None)
        if found is None:
            return
        woken, timer, watch = found
        if timer.active():
            timer.cancel()
        if watch.running:
            watch.stop()
        self.local.release(key)
        woken.callback(None)

    def release(self, key: str, storable: bool = True) -> None:
        """The fetch is done: wake the waiters of every process. ``storable=False`` leaves a hit-for-miss
        marker, so other processes fetch on their own for ``hit_for_miss_ttl``."""
        if key in self.held:
            self.held.discard(key)
            until = None if storable else self.clock() + self.hit_for_miss_ttl
            self.wake.send(self.leases.release(key, self.wake.token, until), key)
        self.local.release(key)

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)
        for key in list(self.remote):
            self._woken(key)
        self.local.release_all()

    def close(self) -> None:
        self.release_all()
        self.wake.close()
