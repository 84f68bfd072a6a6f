"""Listening sockets shared by processes: opened once by the supervisor, adopted by every worker.

The supervisor opens each listener with its Twisted endpoint string (``tcp:``, ``unix:``, ``systemd:``, with
the backlog the string asks for, or ``accel.http.listening``'s default) and then stops reading from it: it never accepts a connection itself. A worker
receives the descriptors through ``spawnProcess``'s ``childFDs`` and adopts them (accepting in batches, as a
single process does), so every worker accepts on the same sockets and the kernel hands each new connection
to one of them.

An adopted socket belongs to several processes, so a worker closing its copy must not shut the socket down
(which would stop it for everyone) nor remove a unix socket's file: ``_AdoptedUNIXPort`` does neither, and
Twisted's TCP port already skips the shutdown for adopted sockets.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from twisted.internet import endpoints, tcp, unix
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from accel.http.listening import accept_sharing, with_backlog


@dataclass(frozen=True)
class Inherited:
    """One listening socket as a worker receives it: its descriptor number in the worker, its address family,
    the endpoint string it was opened from (which the worker's configuration names) and its listen backlog."""

    fd: int
    family: int
    description: str
    backlog: int


class _NeverAccepts(Factory):
    """The supervisor's listeners never read, so no protocol is ever built."""

    def logPrefix(self) -> str:
        return "accel listener"


class ListenerSet:
    """The supervisor's open listeners by endpoint string."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.ports: dict[str, object] = {}

    def open(self, description: str) -> None:
        """Listen on ``description`` (if not already) without accepting; raises what the endpoint raises."""
        if description in self.ports:
            return
        endpoint = endpoints.serverFromString(self.reactor, with_backlog(description))
        outcome = []
        endpoint.listen(_NeverAccepts()).addBoth(outcome.append)  # stream endpoints listen synchronously
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        port = outcome[0]
        port.stopReading()
        self.ports[description] = port

    def address(self, description: str) -> str:
        host = self.ports[description].getHost()
        return str(getattr(host, "port", None) or getattr(host, "name", host))

    def descriptors(self, descriptions, first_fd: int) -> tuple[dict[int, int], list[Inherited]]:
        """``childFDs`` entries and what the worker is told, numbering the worker's descriptors from
        ``first_fd``."""
        child_fds: dict[int, int] = {}
        inherited: list[Inherited] = []
        for number, description in enumerate(descriptions, first_fd):
            port = self.ports[description]
            child_fds[number] = port.fileno()
            inherited.append(Inherited(number, port.addressFamily, description, port.backlog))
        return child_fds, inherited

    def close_except(self, keep) -> None:
        for description in [d for d in self.ports if d not in keep]:
            self.ports.pop(description).stopListening()

    def close(self) -> None:
        self.close_except(())


class _AdoptedUNIXPort(unix.Port):
    """A unix listening socket shared with other processes: closing this process's copy neither shuts the
    socket down nor removes its file."""

    _shouldShutdown = False

    def connectionLost(self, reason) -> None:
        tcp.Port.connectionLost(self, reason)


def adopt(reactor, listener: Inherited, factory):
    """Accept connections for ``factory`` on an inherited listening socket; returns the listening port.

    The port works on a duplicate of the descriptor, so the inherited one is closed here."""
    if listener.family == socket.AF_UNIX:
        port = _AdoptedUNIXPort._fromListeningDescriptor(reactor, listener.fd, factory)
        port.backlog = listener.backlog  # it listens again: keep the backlog the endpoint asked for
        port.startListening()
    else:
        port = accept_sharing(reactor.adoptStreamPort(listener.fd, listener.family, factory))
    os.close(listener.fd)
    return port
