"""Talking to origins: persistent HTTP/1.1 connection pools, a per-origin connection cap, timeouts.

One ``OriginClient`` per (origin, connect timeout, connection cap). Each has its own persistent
``HTTPConnectionPool`` (Twisted's default pool is not persistent) whose idle-connection limit equals the cap,
and a ``DeferredSemaphore`` that bounds concurrent requests, since the pool only bounds idle connections.
A slot is held from the moment a request is sent until its response body has been fully relayed.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, gatherResults
from twisted.logger import Logger
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from accel.config import Origin, Route

log = Logger()


class OriginTimeout(Exception):
    """The origin did not answer in time (connect or response header timeout): 504."""


class OriginUnavailable(Exception):
    """The origin refused, was unreachable, or broke the connection before answering: 502."""


@dataclass
class Fetched:
    """An origin response whose body has not been read yet, and the connection slot it holds."""

    response: IResponse
    client: OriginClient

    def release(self) -> None:
        self.client.slots.release()


class _OriginConnection(HTTP11ClientProtocol):
    """Keeps the response's ``Connection`` field, which Twisted's parser files away as connection control.

    A proxy needs it: every field it nominates is hop-by-hop and must not reach the client (RFC 9110
    §7.6.1). The values are put on the response as ``connection_tokens``.
    """

    def request(self, request):
        result = super().request(request)
        parser = self._parser
        if parser is not None:
            original = parser.allHeadersReceived

            def all_headers_received():
                parser.response.connection_tokens = parser.connHeaders.getRawHeaders(b"connection", [])
                original()

            parser.allHeadersReceived = all_headers_received
        return result


class _OriginConnectionFactory(_HTTP11ClientFactory):
    noisy = False  # one "Starting factory" log line per origin connection is noise

    def buildProtocol(self, addr):
        return _OriginConnection(self._quiescentCallback)


class OriginClient:
    def __init__(self, reactor, origin: Origin, *, max_connections: int, connect_timeout: float, tls_policy=None):
        self.reactor = reactor
        self.origin = origin
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_connections
        self.pool.retryAutomatically = True  # one retry of idempotent requests on a dead pooled connection
        self.pool._factory = _OriginConnectionFactory
        self.agent = Agent(
            reactor,
            contextFactory=tls_policy or BrowserLikePolicyForHTTPS(),
            connectTimeout=connect_timeout,
            pool=self.pool,
        )
        self.slots = DeferredSemaphore(max_connections)
        self.prefix = origin.key.encode("ascii")

    def fetch(self, method: bytes, target: bytes, headers: Headers, body, *, timeout: float) -> Deferred[Fetched]:
        """Send a request; fires with ``Fetched`` once the response header section has arrived.

        Fails with ``OriginTimeout`` or ``OriginUnavailable``. Cancelling the Deferred (the client went away)
        abandons the request and frees its slot.
        """
        url = self.prefix + target
        state: dict = {}

        def send(_):
            state["sent"] = d = self.agent.request(method, url, headers, body)
            return d

        def got(response):
            timer.cancel()
            return Fetched(response, self)

        def failed(failure):
            if timer.active():
                timer.cancel()
            if "sent" in state:
                self.slots.release()
            if state.get("timed_out"):
                raise OriginTimeout(f"no response from {self.origin.key} within {timeout:g} s")
            if failure.check(CancelledError):
                return failure
            if failure.check(netError.TimeoutError):
                raise OriginTimeout(f"connecting to {self.origin.key} timed out")
            raise OriginUnavailable(_describe(self.origin, failure))

        def time_out():
            state["timed_out"] = True
            result.cancel()

        acquired = self.slots.acquire()
        result = acquired.addCallback(send)
        result.addCallbacks(got, failed)
        timer = self.reactor.callLater(timeout, time_out)
        return result

    def close(self) -> Deferred:
        return self.pool.closeCachedConnections()


def _describe(origin: Origin, failure) -> str:
    from accel.tls.origin import describe_tls_failure

    tls = describe_tls_failure(origin, failure)
    if tls:
        return tls
    if failure.check(ResponseNeverReceived):
        reasons = [r.getErrorMessage() for r in failure.value.reasons]
        return f"{origin.key} closed the connection before answering ({'; '.join(reasons)})"
    if failure.check(netError.ConnectionRefusedError):
        return f"{origin.key} refused the connection"
    if failure.check(netError.DNSLookupError):
        return f"cannot resolve {origin.host}"
    return f"{origin.key}: {failure.getErrorMessage()}"


class OriginClients:
    """The clients for every route, made on first use."""

    def __init__(self, reactor, tls_policy_for=None):
        self.reactor = reactor
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
            )
        return client

    def close(self) -> Deferred:
        return gatherResults([c.close() for c in self._clients.values()])
