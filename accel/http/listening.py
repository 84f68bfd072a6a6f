"""Listening sockets: the accept backlog, and accepting in batches.

Twisted listens with a backlog of 50. When more clients than that connect at once, the kernel drops
their SYNs and each waits for a retransmission (a second or more): accel listens with nginx's 511
unless the endpoint description sets ``backlog=`` itself (the kernel caps it at net.core.somaxconn).

Twisted's TCP port accepts, per readable event, as many connections as it accepted the time before
(plus 20): after a quiet spell that is one, so a burst is accepted one connection per turn of the event
loop while the queue overflows. accel's ports accept up to ``ACCEPT_BATCH`` each time.

A connection per request makes accepting part of every answer: accel's ports accept in a plain loop
(``QuickAccepting.doRead``) rather than through Twisted's generator, log buffer and ``socket.accept``
wrapper (which converts the family and type to enums for each new socket); what that loop does not expect
(a full descriptor table, an aborted connection...) goes to Twisted's own ``doRead``, which handles and logs it.
Once a batch is accepted, each new connection's first bytes are read at once, without waiting for the event
loop to report them (``AcceptedConnection.read_first``).
The new connection's socket is the C type, ``_socket.socket``, without the Python layer of ``socket.socket``
(an ``__init__``, a ``close`` and ``_real_close`` per connection, meant for ``makefile`` and ``dup``, which
Twisted's transports never use); its transport, ``AcceptedConnection``, is set up and closed in a few steps.
"""

from __future__ import annotations

import socket
import struct
import sys
from _socket import socket as _Socket  # socket.socket without its Python layer (__init__, close...)
from select import EPOLLIN

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import address, endpoints, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionAborted
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log
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


class AcceptedConnection(tcp.Server):
    """``tcp.Server`` with a shorter life cycle: what accepting, closing and a connection per request cost.

    Made: the attributes ``tcp.Server.__init__`` sets (through ``Connection`` and ``FileDescriptor``), without
    the log prefix and ``repr`` it formats for every connection (made here when asked for). accel's accept loop
    then reads what the client has sent already (``read_first``), and only then is the socket watched for
    reading (at once when Twisted's own accept loop made the connection), on an epoll reactor as
    ``addReader`` does it for a new descriptor (one ``epoll_ctl``, the reactor's two maps). ``getPeer`` is
    the address the port gave the factory, made once.

    Lost (``connectionLost``): Twisted's outcome in one method rather than five and a ``Failure.check`` — a
    second call does nothing, ``connected`` and ``disconnected`` change, a registered producer is stopped,
    the descriptor leaves the reactor (``removeReader`` and ``removeWriter``), the socket is closed (an
    aborted connection is reset instead: SO_LINGER 0), and the protocol's ``connectionLost`` is called with
    the reason.

    Two system calls of Twisted's close are left out, as nginx leaves them out: the ``shutdown`` before
    ``close`` (Twisted's own comment calls it unnecessary: the socket is close-on-exec, so this process holds
    its only reference, and ``close`` sends the FIN — or a reset when the peer's bytes are left unread, as
    after ``shutdown``), and on an epoll reactor the EPOLL_CTL_DEL (the kernel drops a descriptor from the
    epoll set when its last reference is closed: the same reasoning). Measured on close-1k: 56 -> 52 µs of
    system time per connection.
    """

    def __init__(self, sock, protocol, client, server, sessionno, reactor, peer=None, read_first=False) -> None:
        self.reactor = reactor
        self._tempDataBuffer = []
        self._tempDataLen = 0
        self.socket = sock
        sock.setblocking(False)
        self.fileno = sock.fileno
        self.protocol = protocol
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self.peer = peer
        self.connected = 1
        if not read_first:  # (made by Twisted's accept loop: watched at once, as tcp.Server is)
            self._watched = True
            self.startReading()

    # -- the first read -------------------------------------------------------------------------------
    _watched = False  # the reactor watches the socket (read_first has run, or was not asked for)
    _wants_reading = True  # read_first watches for reading (the protocol did not pause first)

    def read_first(self) -> None:
        """Read what the client sent right behind its handshake, then have the reactor watch the socket.

        A client sends its request as soon as it is connected, so by the time a connection is accepted its
        first bytes have usually arrived: the port reads them once its batch is accepted, rather than a turn of
        the event loop later, and a connection whose answer is written and closed on these bytes (one request
        per connection) never enters the epoll set. The outcomes are the event loop's (``read_once``). A
        protocol that paused reading meanwhile is watched once it resumes.
        """
        read_once(self)
        self._watched = True
        if self.connected and self._wants_reading:
            self.startReading()

    def startReading(self) -> None:
        if not self._watched:
            self._wants_reading = True
            return
        reactor = self.reactor
        if isinstance(reactor, EPollReactor):
            fd = self.socket.fileno()
            if fd not in reactor._selectables:  # (addReader's work for a descriptor the reactor doesn't know yet)
                reactor._poller.register(fd, EPOLLIN)
                reactor._reads.add(fd)
                reactor._selectables[fd] = self
                return
        reactor.addReader(self)

    def stopReading(self) -> None:
        if not self._watched:
            self._wants_reading = False
            return
        self.reactor.removeReader(self)

    def getPeer(self):
        if self.peer is None:
            self.peer = self._addressType("TCP", *self.client)
        return self.peer

    def connectionLost(self, reason) -> None:
        try:
            skt = self.socket
        except AttributeError:
            return  # lost already (as Twisted's: an abort, then an exception reaching the reactor)
        self.disconnected = 1
        self.connected = 0
        if self.producer is not None:
            self.producer.stopProducing()
            self.producer = None
        reactor = self.reactor
        if isinstance(reactor, EPollReactor):
            fd = skt.fileno()
            if reactor._selectables.pop(fd, None) is not None:  # (it is there while fd is in _reads or _writes)
                reactor._reads.discard(fd)
                reactor._writes.discard(fd)
                # Closing the socket (below) takes it out of the epoll set: no EPOLL_CTL_DEL.
        else:
            reactor.removeReader(self)
            reactor.removeWriter(self)
        try:
            if issubclass(reason.type, ConnectionAborted):
                skt.setsockopt(_SOCKET_LEVEL, _LINGER, _RESET)
        except OSError:
            pass
        try:
            skt.close()
        except OSError:
            pass
        protocol = self.protocol
        del self.protocol, self.socket, self.fileno
        protocol.connectionLost(reason)

    def logPrefix(self) -> str:
        return f"{self._getLogPrefix(self.protocol)},{self.sessionno},{self.hostname}"

    def __repr__(self) -> str:
        return f"<{self.protocol.__class__.__name__} #{self.sessionno} on {self.server._realPortNumber}>"


def read_once(transport) -> None:
    """One ``recv`` on a plain TCP transport, its bytes handed to the protocol, with the outcomes of Twisted's
    ``_doReadOrWrite`` → ``doRead``: nothing to read yet is nothing; the peer's end of stream is
    ``ConnectionDone``; a failed ``recv`` is ``ConnectionLost``; whatever the protocol raises is logged and drops
    that connection, never the caller (the event loop, or a port's first read of a new connection)."""
    try:
        data = transport.socket.recv(transport.bufferSize)
    except BlockingIOError:
        return
    except OSError:
        why = CONNECTION_LOST
    else:
        if data:
            try:
                transport.protocol.dataReceived(data)
                return
            except BaseException:
                why = sys.exc_info()[1]
                log.err()
        else:
            why = CONNECTION_DONE
    transport.reactor._disconnectSelectable(transport, why, True)


_SOCKET_LEVEL, _LINGER, _RESET = socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)  # close sends a reset


def ipv4_peer(host: str, port: int, _new=object.__new__, _kind=address.IPv4Address):
    """``IPv4Address("TCP", host, port)`` without attrs' check, per connection, that "TCP" is "TCP" or "UDP"."""
    made = _new(_kind)
    made.type = "TCP"
    made.host = host
    made.port = port
    return made


class QuickAccepting(tcp.Port):
    """A TCP port accepting up to ``batch`` connections per readable event in a plain loop."""

    batch: int
    transport = AcceptedConnection

    @property
    def numberAccepts(self) -> int:
        """What Twisted's own ``doRead`` accepts when it takes over after an error: ``batch``, whatever it set
        after its previous batch (the setter ignores it)."""
        return self.batch

    @numberAccepts.setter
    def numberAccepts(self, _count: int) -> None:
        pass

    def doRead(self) -> None:
        """Accept the connections waiting, then read what each client has sent already (``read_first``). The
        reads wait until the accepting is done: connections closed by their first read are replaced at once by
        the clients' next ones, and an accept loop that read them too would go on serving those while the
        connections the reactor watches wait."""
        accepted: list[AcceptedConnection] = []
        try:
            self.accept_into(accepted)
        except BaseException:
            log.deferr()  # as tcp.Port.doRead: logged, and the port goes on accepting; nothing escapes (reactor.py)
        for transport in accepted:
            try:
                transport.read_first()
            except BaseException:
                log.deferr()  # (a protocol's connectionLost that raised: the other connections are still read)

    def accept_into(self, accepted: list[AcceptedConnection]) -> None:
        """Accept up to ``batch`` connections, each made with its protocol and added to ``accepted``."""
        accept = self.socket._accept  # (fd, address), without socket.accept's new socket object
        family = self.addressFamily
        for _ in range(self.batch):
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError:
                tcp.Port.doRead(self)  # Twisted's accept loop meets the error again and deals with it
                return
            skt = _Socket(family, socket.SOCK_STREAM, 0, fd)
            if len(addr) == 2:
                peer = ipv4_peer(*addr)
            else:  # IPv6: the scope id, as Twisted gets it
                host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                addr = (host[0], *addr[1:])
                peer = address.IPv6Address("TCP", *addr)
            protocol = self.factory.buildProtocol(peer)
            if protocol is None:
                skt.close()
                continue
            number = self.sessionno
            self.sessionno = number + 1
            transport = self.transport(skt, protocol, addr, self, number, self.reactor, peer, True)
            accepted.append(transport)
            protocol.makeConnection(transport)


class BatchAcceptingPort(QuickAccepting):
    batch = ACCEPT_BATCH


class SharingPort(QuickAccepting):
    batch = SHARED_ACCEPT_BATCH


ACCEPTING = frozenset((BatchAcceptingPort, SharingPort))  # the ports' exact types


def accept_in_batches(port):
    """Make a listening TCP port accept up to ``ACCEPT_BATCH`` connections per readable event."""
    return _accepting_as(port, BatchAcceptingPort)


def accept_sharing(port):
    """Make a listening TCP port that other processes accept on too take ``SHARED_ACCEPT_BATCH`` connections
    per readable event."""
    return _accepting_as(port, SharingPort)


def _accepting_as(port, kind: type[QuickAccepting]):
    if type(port) is tcp.Port:  # (not a TLS or UNIX port, nor one already changed)
        port.__class__ = kind
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
