"""An origin that writes raw bytes, for the framings twisted.web cannot produce (chunked trailers, bodies
delimited by closing, 103, closing a kept-alive connection), accel in front of any origin URL, and raw
requests and clients to talk to it."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, replace

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from accel.app import build_site
from accel.config import CacheSettings, Config, Route, parse_origin
from tests.support import RawClient, temporary_directory


@dataclass
class RawRequest:
    head: bytes  # request line and header section
    body: bytes
    connection: int  # 1 for the origin's first connection, ...
    nth: int  # 1 for a connection's first request, ...

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]


class RawOrigin:
    """Accepts connections on 127.0.0.1; ``answer(connection, request)`` writes whatever the test wants."""

    def __init__(self, testcase, answer):
        self.answer = answer
        self.requests: list[RawRequest] = []
        self.connections = 0
        self.port = reactor.listenTCP(0, Factory.forProtocol(lambda: RawOriginConnection(self)), interface="127.0.0.1")
        self.open: set[RawOriginConnection] = set()
        testcase.addCleanup(self.close)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/"

    def close(self):
        for connection in list(self.open):
            connection.transport.abortConnection()
        return self.port.stopListening()


class RawOriginConnection(Protocol):
    def __init__(self, origin: RawOrigin):
        self.origin = origin
        self.buffer = b""
        self.served = 0

    def connectionMade(self):
        self.origin.connections += 1
        self.index = self.origin.connections
        self.origin.open.add(self)

    def connectionLost(self, reason):
        self.origin.open.discard(self)

    def dataReceived(self, data: bytes):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            fields = head.lower()
            if b"transfer-encoding: chunked" in fields:
                if b"0\r\n\r\n" not in rest:
                    return
                body, _, self.buffer = rest.partition(b"0\r\n\r\n")
            else:
                length = 0
                for line in fields.split(b"\r\n")[1:]:
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if len(rest) < length:
                    return
                body, self.buffer = rest[:length], rest[length:]
            self.served += 1
            request = RawRequest(head, body, self.index, self.served)
            self.origin.requests.append(request)
            self.origin.answer(self, request)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0): the peer sees the connection break, not end."""
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abortConnection()


def accel_in_front(testcase, origin_url: str, config: Config | None = None, **route_options):
    """accel listening on an ephemeral port with one route ``/`` to ``origin_url``; returns its port number."""
    config = replace(config or Config(), routes=(Route(prefix="/", origin=parse_origin(origin_url), **route_options),))
    site = build_site(config, reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testcase.addCleanup(site.close)
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


def cached(testcase) -> Config:
    """A Config with the cache in a temporary directory, removed with the test."""
    directory = temporary_directory(testcase, "accel-test-")
    return Config(cache=CacheSettings(dir=directory))


def request(path: bytes, method: bytes = b"GET", extra: bytes = b"") -> bytes:
    """A raw request (``extra``: more header lines) after which accel closes the client connection."""
    return b"%s %s HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n%s\r\n" % (method, path, extra)


def parts(response: bytes) -> tuple[bytes, bytes]:
    """(head, body) of a raw response."""
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


class WatchingClient(RawClient):
    """A raw client that calls ``seen(everything received so far)`` on each arrival."""

    def __init__(self, payload: bytes, seen):
        super().__init__(payload)
        self.seen = seen

    def dataReceived(self, data):
        super().dataReceived(data)
        self.seen(self.received)
