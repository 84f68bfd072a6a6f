"""Listening sockets: the accept backlog, and accepting in batches.

Twisted listens with a backlog of 50. When more clients than that connect at once, the kernel drops
their SYNs and each waits for a retransmission (a second or more): accel listens with nginx's 511
unless the endpoint description sets ``backlog=`` itself (the kernel caps it at net.core.somaxconn).

Twisted's TCP port accepts, per readable event, as many connections as it accepted the time before
(plus 20): after a quiet spell that is one, so a burst is accepted one connection per turn of the event
loop while the queue overflows. accel's ports accept up to ``ACCEPT_BATCH`` each time.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints, tcp
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

DEFAULT_BACKLOG = 511
ACCEPT_BATCH = 512
SHARED_ACCEPT_BATCH = 1
"""Accepted per readable event on a socket worker processes share. Each worker takes one connection and
goes back to its loop, so whichever is least busy comes back first for the next (nginx's default,
``multi_accept off``): a worker accepting a whole burst would keep all those keep-alive connections to
itself while the others idle."""
_TAKES_BACKLOG = ("tcp:", "tcp6:", "ssl:", "unix:")


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """``description`` (a Twisted server endpoint string) with ``backlog=`` added when it takes one and
    does not set it."""
    if not description.startswith(_TAKES_BACKLOG) or ":backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


class _Fixed:
    """A class attribute that instances cannot change (tcp.Port re-sets ``numberAccepts`` after each batch)."""

    def __init__(self, value: int):
        self.value = value

    def __get__(self, instance, owner=None) -> int:
        return self.value

    def __set__(self, instance, value) -> None:
        pass


class BatchAcceptingPort(tcp.Port):
    numberAccepts = _Fixed(ACCEPT_BATCH)


class SharingPort(tcp.Port):
    numberAccepts = _Fixed(SHARED_ACCEPT_BATCH)


def accept_in_batches(port):
    """Make a listening TCP port accept up to ``ACCEPT_BATCH`` connections per readable event."""
    if type(port) is tcp.Port:
        port.__class__ = BatchAcceptingPort
    return port


def accept_sharing(port):
    """Make a listening TCP port that other processes accept on too take ``SHARED_ACCEPT_BATCH`` connections
    per readable event."""
    if type(port) is tcp.Port:
        port.__class__ = SharingPort
    return port


@implementer(IStreamServerEndpoint)
class _BatchAccepting:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    def listen(self, factory):
        return self.endpoint.listen(factory).addCallback(accept_in_batches)


def listening_service(description: str, factory, reactor) -> StreamServerEndpointService:
    """A service listening on ``description`` (with the default backlog), accepting in batches; a port
    that cannot be bound stops the start, as with ``strports.service``."""
    endpoint = endpoints.serverFromString(reactor, with_backlog(description))
    service = StreamServerEndpointService(_BatchAccepting(endpoint), factory)
    service._raiseSynchronously = True
    return service
