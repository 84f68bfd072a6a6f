"""Real parts for integration tests: a recording origin on loopback, accel in front of it, raw clients.

Everything listens on 127.0.0.1 with ephemeral ports and runs on the test's reactor (trial spins it).
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field, replace

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from accel.app import build_site
from accel.config import Config, Route, parse_origin
from accel.http.listening import accept_in_batches


def temporary_directory(testcase, prefix: str = "accel-test-") -> str:
    """A new directory outside the checkout (trial's ``mktemp`` is relative to the working directory), removed
    when the test ends: after the cleanups added later (a store closed, a process ended) have run."""
    directory = tempfile.mkdtemp(prefix=prefix)
    testcase.addCleanup(shutil.rmtree, directory, True)
    return directory


def closed_port() -> int:
    """A loopback port nobody listens on (free when asked: a test binds it, or expects a refused connection)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Seen:
    """One request as the origin received it."""

    method: bytes
    uri: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class RecordingOrigin(resource.Resource):
    """An origin whose behaviour is chosen by path; it records every request it receives.

    Paths: anything → 200 echo; ``/status/N`` → status N; ``/hang`` → never answers; ``/truncate`` →
    promises 1000 bytes, sends 10 and closes; ``/big/N`` → N bytes streamed with backpressure; responses
    can carry extra fields through the ``handlers`` hook.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen: list[Seen] = []
        self.handlers: dict[bytes, object] = {}
        self.pending: list = []

    def render(self, request):
        body = request.content.read()
        self.seen.append(Seen(request.method, request.uri, _pairs(request.requestHeaders), body))
        path = request.path
        handler = self.handlers.get(path)
        if handler is not None:
            return handler(request)
        if path.startswith(b"/status/"):
            request.setResponseCode(int(path.rsplit(b"/", 1)[1]))
            return b""
        if path == b"/hang":
            self.pending.append(request)
            return server.NOT_DONE_YET
        if path == b"/truncate":
            request.setHeader(b"content-length", b"1000")
            request.write(b"0123456789")
            request.channel.transport.loseConnection()
            return server.NOT_DONE_YET
        if path.startswith(b"/big/"):
            size = int(path.rsplit(b"/", 1)[1])
            request.setHeader(b"content-length", b"%d" % size)
            BigBody(request, size).start()
            return server.NOT_DONE_YET
        request.setHeader(b"content-type", b"text/plain")
        return b"method=%s uri=%s body=%d" % (request.method, request.uri, len(body))


class BigBody:
    """Streams ``size`` bytes into a request as fast as its transport takes them (a push producer)."""

    CHUNK = b"x" * 65536

    def __init__(self, request, size: int):
        self.request, self.left, self.paused, self.sent = request, size, False, 0

    def start(self):
        self.request.registerProducer(self, True)
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.left > 0 and not self.paused:
            chunk = self.CHUNK[: self.left]
            self.left -= len(chunk)
            self.sent += len(chunk)
            self.request.write(chunk)
        if self.left == 0 and self.request.producer is not None:
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self):
        self.left = 0


class CountingSite(server.Site):
    """Counts the TCP connections the origin accepted."""

    connections = 0

    def buildProtocol(self, addr):
        self.connections += 1
        return super().buildProtocol(addr)


@dataclass
class Stack:
    origin: RecordingOrigin
    origin_site: CountingSite
    origin_port: object
    accel_site: object
    accel_port: object
    config: Config
    ports: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.accel_port.getHost().port}"

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.origin_port.getHost().port}"

    @defer.inlineCallbacks
    def close(self):
        yield self.accel_port.stopListening()
        yield self.origin_port.stopListening()
        yield self.accel_site.close()
        for request in self.origin.pending:
            if not request._disconnected and not request.finished:
                request.channel.transport.abortConnection()


def start_stack(testcase, config: Config | None = None, routes=None, **route_options) -> Stack:
    """An origin and accel in front of it, torn down with the test."""
    origin = RecordingOrigin()
    origin_site = CountingSite(origin)
    origin_port = reactor.listenTCP(0, origin_site, interface="127.0.0.1")
    origin_url = f"http://127.0.0.1:{origin_port.getHost().port}/"
    config = config or Config()
    if routes is None:
        routes = (Route(prefix="/", origin=parse_origin(origin_url), **route_options),)
    config = replace(config, routes=tuple(routes))
    site = build_site(config, reactor)
    accel_port = accept_in_batches(reactor.listenTCP(0, site, interface="127.0.0.1"))  # as twistd accel listens
    stack = Stack(origin, origin_site, origin_port, site, accel_port, config)
    testcase.addCleanup(stack.close)
    return stack


# The ``twistd`` command, run by this interpreter (so it works without the virtualenv's bin/ on PATH).
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def http_client(testcase) -> Agent:
    pool = HTTPConnectionPool(reactor, persistent=True)
    testcase.addCleanup(pool.closeCachedConnections)
    return Agent(reactor, pool=pool)


@defer.inlineCallbacks
def get(agent: Agent, url: str, method: bytes = b"GET", headers: dict | None = None, body=None):
    """(response, body bytes) for one request."""
    h = Headers()
    for name, value in (headers or {}).items():
        for v in value if isinstance(value, list) else [value]:
            h.addRawHeader(name, v)
    response = yield agent.request(method, url.encode(), h, body)
    data = yield readBody(response)
    return response, data


class RawClient(protocol.Protocol):
    """Sends raw bytes, collects everything the server sends until it closes (or ``timeout`` passes)."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.received = b""
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


@defer.inlineCallbacks
def raw_request(port: int, payload: bytes, timeout: float = 5.0):
    """Send ``payload`` as is and return all the server sent back before closing the connection."""
    client = RawClient(payload)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    call = reactor.callLater(timeout, client.transport.loseConnection)
    data = yield client.closed
    if call.active():
        call.cancel()
    return data


def _pairs(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, vs in headers.getAllRawHeaders() for v in vs]


def next_turn() -> defer.Deferred:
    """Fires on the reactor's next iteration."""
    d = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    return d


@defer.inlineCallbacks
def turns(n: int):
    """Let the reactor run ``n`` iterations."""
    for _ in range(n):
        yield next_turn()


@defer.inlineCallbacks
def until(predicate, limit: int = 100000):
    """Let the reactor run until ``predicate()`` holds (waits on events, not on wall-clock time)."""
    for _ in range(limit):
        if predicate():
            return
        yield next_turn()
    raise AssertionError("condition never became true")
