"""Talking to origins: a pool of persistent connections per origin, a connection cap, timeouts.

One ``OriginClient`` per (origin, connect timeout, connection cap). It holds at most ``max_connections``
connections (connecting, busy or idle). A request takes an idle connection (the most recently used), else
opens one while under the cap, else waits in a FIFO queue of at most ``QUEUE_PER_CONNECTION`` requests per
connection (beyond that: ``OriginBusy``, 503). A connection is busy from the request until its response
body has been read to the end (or dropped); then it goes to the first waiter, or waits idle for
``IDLE_TIMEOUT`` seconds before it is closed.

The response timeout runs from the request until the final response head arrives, and restarts whenever
a piece of the request body is written: a slow, steady upload is not a silent origin.
A request that finds its reused connection closed by the origin before any answer (the origin timed it
out just as it was reused) is sent once more on a fresh connection when it is idempotent and has no body
(RFC 9110 §9.2.2, RFC 9112 §9.3.1); otherwise it fails (502).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS

from accel.config import Origin, Route
from accel.http.headers import RawFields
from accel.proxy.client import OriginConnection, OriginProtocolError, OriginResponse
from accel.proxy.timer import Deadlines

log = Logger()

IDLE_TIMEOUT = 30.0  # seconds an unused connection is kept open
QUEUE_PER_CONNECTION = 64  # waiting requests allowed per connection of the cap
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})  # RFC 9110 §9.2.2


class OriginTimeout(Exception):
    """The origin did not answer in time (connect or response header timeout): 504."""


class OriginUnavailable(Exception):
    """The origin refused, was unreachable, or broke the connection before answering: 502."""


class OriginBusy(Exception):
    """Too many requests already wait for a connection to this origin: 503."""


@dataclass
class Fetched:
    """An origin response whose body has not been read yet; its connection is busy until it has.

    Whoever receives it takes the body (``response.deliverBody``) or gives it up (``release``) in that
    same callback; one left untaken is released as the callbacks return (see ``_Request.head``).
    """

    response: OriginResponse
    route: Route | None = None  # a balancer member's route, when one answered (its origin, for rewriting)
    set_cookie: bytes | None = None  # a sticky session cookie for the client

    def release(self) -> None:
        """Done with the response: a body not read to the end closes its connection."""
        self.response.release()

    def tunnel_closed(self, carried: int) -> None:
        """The WebSocket tunnel this 101 opened closed after ``carried`` bytes both ways (nothing to do for a
        route's own origin; a balancer member's request ends then: ``accel.proxy.balancing.MemberFetched``)."""


class OriginClient:
    def __init__(
        self, reactor, origin: Origin, *, max_connections: int, connect_timeout: float, tls_policy=None, endpoint=None,
        deadlines: Deadlines | None = None,
    ):
        """``endpoint`` (made from ``origin`` unless given) opens the connections; the response timeouts run on
        ``deadlines`` (the clients' shared ones, else this client's own)."""
        self.reactor = reactor
        self._own_deadlines = deadlines is None  # (closed with this client, then)
        self.deadlines = Deadlines(reactor) if deadlines is None else deadlines
        self.origin = origin
        self.max_connections = max_connections
        self.queue_limit = QUEUE_PER_CONNECTION * max_connections
        if endpoint is None:
            endpoint = _endpoint(reactor, origin, connect_timeout, tls_policy)
        self.endpoint = endpoint
        self.factory = Factory.forProtocol(lambda: OriginConnection(self._released, self._lost))
        self.factory.noisy = False
        self.opened = 0  # connections open or opening
        self.connections: set[OriginConnection] = set()  # open ones
        self.idle: list[OriginConnection] = []
        self.waiting: deque[_Request] = deque()
        self.closing = False
        self._closed: Deferred | None = None
        self._sweep = None  # the idle timeout's timer

    def fetch(
        self, method: bytes, target: bytes, fields: RawFields, body=None, *, timeout: float, interim=None,
        upgrade: bool = False,
    ) -> Deferred[Fetched]:
        """Send a request; fires with ``Fetched`` once the final response head has arrived.

        ``interim(code, phrase, fields)`` is called for each 1xx response other than 100 and 101 before that.
        Fails with ``OriginTimeout``, ``OriginUnavailable`` or ``OriginBusy``. Cancelling the Deferred (the
        client went away) abandons the request and frees its connection. With ``upgrade`` (the fields ask to
        switch protocols) the response may be a 101, whose connection has then left the pool (see
        ``OriginConnection.take_over``).
        """
        d: Deferred[Fetched] = Deferred(lambda _: pending.cancel())
        pending = self.request(method, target, fields, body, timeout=timeout, interim=interim, upgrade=upgrade,
                               answered=d.callback, failed=d.errback)
        return d

    def request(
        self, method: bytes, target: bytes, fields: RawFields, body=None, *, timeout: float, answered, failed,
        interim=None, upgrade: bool = False,
    ) -> _Request:
        """``fetch`` without a Deferred: ``answered(Fetched)`` or ``failed(Failure)`` is called once (a
        cancelled request fails with ``CancelledError``); the request's ``cancel()`` abandons it."""
        request = _Request(self, method, target, fields, body, timeout, interim, answered, failed)
        request.upgrade = upgrade
        self._dispatch(request)
        return request

    # The pool --------------------------------------------------------------------------------------

    def _dispatch(self, request: _Request, fresh: bool = False) -> None:
        if self.closing:
            request.fail(OriginUnavailable("accel is shutting down"))
        elif self.idle and not fresh:
            request.sent_on(self.idle.pop())
        elif self.opened < self.max_connections:
            self._connect(request)
        elif len(self.waiting) < self.queue_limit:
            if fresh:
                self.waiting.appendleft(request)
                self._close_an_idle_connection()
            else:
                self.waiting.append(request)
        else:
            request.fail(OriginBusy(f"{len(self.waiting)} requests already wait for a connection to {self.origin.key}"))

    def _connect(self, request: _Request) -> None:
        self.opened += 1
        request.connecting = True

        def connected(connection: OriginConnection):
            request.connecting = False
            self.connections.add(connection)
            if self.closing:
                request.fail(OriginUnavailable("accel is shutting down"))
            if request.over:  # it timed out or was cancelled meanwhile: someone else may use it
                self._released(connection, True)
            else:
                request.sent_on(connection)

        def failed(failure):
            self.opened -= 1
            request.connecting = False
            request.fail_with(failure)
            self._serve_waiting()

        self.endpoint.connect(self.factory).addCallbacks(connected, failed)

    def _released(self, connection: OriginConnection, reusable: bool) -> None:
        if not reusable or self.closing:
            if not connection.closed:
                connection.transport.loseConnection()
            return
        while self.waiting:
            request = self.waiting.popleft()
            if request.over:
                continue
            if request.retried:  # a retry goes out on a fresh connection: this one makes room for it
                self.waiting.appendleft(request)
                connection.transport.loseConnection()
            else:
                request.sent_on(connection)
            return
        connection.idle_since = self.reactor.seconds()
        self.idle.append(connection)
        if self._sweep is None:
            self._sweep = self.reactor.callLater(IDLE_TIMEOUT, self._close_idle)

    def _close_idle(self) -> None:
        """Close the connections idle for IDLE_TIMEOUT; one timer for the pool, not one per release."""
        self._sweep = None
        now = self.reactor.seconds()
        while self.idle and now - self.idle[0].idle_since >= IDLE_TIMEOUT:  # oldest first
            self.idle.pop(0).transport.loseConnection()
        if self.idle:
            self._sweep = self.reactor.callLater(self.idle[0].idle_since + IDLE_TIMEOUT - now, self._close_idle)

    def _lost(self, connection: OriginConnection) -> None:
        self.opened -= 1
        self.connections.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        if self.closing:
            if not self.connections and self._closed is not None:
                closed, self._closed = self._closed, None
                closed.callback(None)
            return
        self._serve_waiting()

    def _serve_waiting(self) -> None:
        while self.waiting and self.opened < self.max_connections and not self.closing:
            request = self.waiting.popleft()
            if not request.over:
                self._connect(request)

    def _close_an_idle_connection(self) -> None:
        """Make room under the cap for a fresh connection (a retry must not take a pooled one)."""
        if self.idle:
            self.idle.pop(0).transport.loseConnection()

    def close(self) -> Deferred:
        """Close every connection; fires when they are all closed."""
        self.closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._own_deadlines:
            self.deadlines.close()
        for request in self.waiting:
            request.fail(OriginUnavailable("accel is shutting down"))
        self.waiting.clear()
        if not self.connections:
            return succeed(None)
        self._closed = Deferred()
        for connection in list(self.connections):
            if connection in self.idle:
                connection.transport.loseConnection()
            else:
                connection.abort()  # busy: an origin that stopped reading must not hold the shutdown up
        return self._closed


def _endpoint(reactor, origin: Origin, connect_timeout: float, tls_policy):
    """TCP to the origin, wrapped in TLS verified by ``tls_policy`` for https:// (accel.tls.origin)."""
    endpoint = HostnameEndpoint(reactor, origin.host, origin.port, timeout=connect_timeout)
    if origin.scheme == "https":
        policy = tls_policy or BrowserLikePolicyForHTTPS()
        endpoint = wrapClientTLS(policy.creatorForNetloc(origin.host.encode("idna"), origin.port), endpoint)
    return endpoint


class _Request:
    """One request on its way through an ``OriginClient``: waiting, connecting, or sent on a connection.

    It ends once (``over``): ``answered`` with the final response's head, or ``failed``."""

    def __init__(self, client: OriginClient, method, target, fields, body, timeout: float, interim, answered, failed):
        self.client = client
        self.method, self.target, self.fields, self.body = method, target, fields, body
        self.timeout = timeout
        self.on_interim = interim
        self.answered, self.failed = answered, failed
        self.over = False
        self.connection: OriginConnection | None = None
        self.connecting = False
        self.retried = False
        self.upgrade = False
        self.timer = client.deadlines.timer(timeout, self._timed_out)

    def sent_on(self, connection: OriginConnection) -> None:
        self.connection = connection
        connection.send(self, self.method, self.target, self.fields, self.body, self.upgrade)

    def cancel(self) -> None:
        """Nobody waits for the response any more (the client went away): fails with ``CancelledError``."""
        if self.over:
            return
        self.timer.stop()
        self._abandon()
        self._end(self.failed, Failure(CancelledError()))

    # Listener: what the connection reports ------------------------------------------------------------

    def progress(self) -> None:
        self.timer.touch()

    def interim(self, code: int, phrase: bytes, fields: RawFields) -> None:
        if self.on_interim is not None and not self.over:
            self.on_interim(code, phrase, fields)

    def head(self, response: OriginResponse) -> None:
        self.timer.stop()
        if self.over:  # timed out or cancelled: nobody wants it
            response.release()
            return
        self._end(self.answered, Fetched(response))
        if not response.claimed:
            # A callback failed before it took the body: free the connection rather than hold it forever.
            log.warn("nobody read the response of {origin} to {method} {target}; closing its connection",
                     origin=self.client.origin.key, method=self.method, target=self.target)
            response.release()

    def broken(self, reason, retryable: bool) -> None:
        self.connection = None
        if self.over:
            return
        if retryable and not self.retried and self.body is None and self.method in IDEMPOTENT:
            self.retried = True
            self.client._dispatch(self, fresh=True)
            return
        self.fail_with(reason)

    # Endings ---------------------------------------------------------------------------------------

    def fail_with(self, failure) -> None:
        self.fail(_as_origin_error(self.client.origin, failure))

    def fail(self, error: Exception) -> None:
        self.timer.stop()
        if not self.over:
            self._end(self.failed, Failure(error))

    def _end(self, callback, result) -> None:
        self.over = True
        self.answered = self.failed = None  # (whoever waited, often holding this request, is let go)
        try:
            callback(result)
        except Exception:
            log.failure("handling the outcome of {method} {target} to {origin} failed", method=self.method,
                        target=self.target, origin=self.client.origin.key)

    def _timed_out(self) -> None:
        self._abandon()
        self.fail(OriginTimeout(f"no response from {self.client.origin.key} within {self.timeout:g} s"))

    def _abandon(self) -> None:
        if self.connection is not None:
            connection, self.connection = self.connection, None
            connection.abort()
        # Waiting or connecting: the pool skips requests that are over.


def _as_origin_error(origin: Origin, failure) -> Exception:
    if failure.check(netError.TimeoutError):
        return OriginTimeout(f"connecting to {origin.key} timed out")
    return OriginUnavailable(_describe(origin, failure))


def _describe(origin: Origin, failure) -> str:
    from accel.tls.origin import describe_tls_failure

    tls = describe_tls_failure(origin, failure)
    if tls:
        return tls
    if failure.check(OriginProtocolError):
        return f"{origin.key}: {failure.getErrorMessage()}"
    if failure.check(netError.ConnectionRefusedError):
        return f"{origin.key} refused the connection"
    if failure.check(netError.DNSLookupError):
        return f"cannot resolve {origin.host}"
    if failure.check(netError.ConnectionDone, netError.ConnectionLost):
        return f"{origin.key} closed the connection before answering ({failure.getErrorMessage()})"
    return f"{origin.key}: {failure.getErrorMessage()}"


class OriginClients:
    """The clients for every route, made on first use."""

    def __init__(self, reactor, tls_policy_for=None):
        self.reactor = reactor
        self.deadlines = Deadlines(reactor)  # every client's response timeouts, and the relays' idle timeouts
        self.tls_policy_for = tls_policy_for or (lambda origin: None)
        self._clients: dict[tuple, OriginClient] = {}

    def for_route(self, route: Route) -> OriginClient:
        assert route.origin is not None
        key = (route.origin.key, route.connect_timeout, route.max_connections)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = OriginClient(
                self.reactor,
                route.origin,
                max_connections=route.max_connections,
                connect_timeout=route.connect_timeout,
                tls_policy=self.tls_policy_for(route.origin),
                deadlines=self.deadlines,
            )
        return client

    def pools(self) -> list[tuple[str, int, int]]:
        """(origin, connections open, of them idle) for each client."""
        return [(c.origin.key, len(c.connections), len(c.idle)) for c in self._clients.values()]

    def close(self) -> Deferred:
        closed = gatherResults([c.close() for c in self._clients.values()])
        self.deadlines.close()
        return closed
