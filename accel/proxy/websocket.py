"""WebSocket tunnelling (mod_proxy_wstunnel): the handshake goes to the origin, a 101 joins the two connections.

On a route with ``websocket`` on (a ``ws://`` or ``wss://`` origin, or ``websocket = true``), a GET that asks
to upgrade to ``websocket`` (RFC 6455 §4.1: ``Upgrade: websocket``, ``Connection: Upgrade``) is sent to the
origin with the proxy's usual fields (X-Forwarded-*, Via; Origin and Sec-WebSocket-* as the client sent
them) and the two hop-by-hop fields that ask for the switch. It never touches the cache.

On a ``balancer://`` route the handshake goes to a member as any request does (``Forwarder.send``): the
balancer's method picks it, a sticky session keeps its member, a member that cannot be reached is marked out
and the next one tried; over HTTP to an ``http://`` member, TLS to an ``https://`` one (ws and wss). The
tunnel is a request in flight at its member until it closes (``bybusyness`` counts it).

* A 101 is relayed, and from then on the bytes flow both ways as they come (accel does not parse frames),
  each connection the other's producer: a client that stops reading stops accel reading the origin, and
  the other way round. Either side closing closes the other (after what was sent to it has gone out);
  nothing in either direction for ``websocket_idle_timeout`` closes both.
* Any other answer is relayed as a normal response (the client connection then closes: it asked to leave
  HTTP).
* At most ``websocket_max_tunnels`` tunnels (and handshakes in flight) per route; beyond that: 503.

The access log gets one line per tunnel when it closes: a 101, the tunnel's duration, the bytes each way.
The traffic figures (``accel.http.traffic``: the status page and metrics) count per route the tunnels open,
opened, their bytes each way as they flow, and why each closed (client, origin, idle, shutdown).
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from accel.config import Route
from accel.http.headers import connection_options
from accel.http.traffic import TO_CLIENT, TO_ORIGIN, tunnel_closed
from accel.proxy.forwarding import Forwarder
from accel.proxy.origin import Fetched
from accel.proxy.timer import Deadlines, IdleTimer

log = Logger()


def asks_for_websocket(request) -> bool:
    """RFC 6455 §4.1 / RFC 9110 §7.8: an HTTP/1.1 GET with ``Upgrade: websocket`` nominated by Connection."""
    headers = request.requestHeaders
    upgrade = headers.getRawHeaders(b"upgrade")
    if request.method != b"GET" or request.clientproto != b"HTTP/1.1" or not upgrade:
        return False
    protocols = {p.strip().lower() for value in upgrade for p in value.split(b",")}
    options = connection_options(v.decode("latin-1") for v in headers.getRawHeaders(b"connection") or ())
    return b"websocket" in protocols and "upgrade" in options


class WebSocketTunnels:
    """Handshakes and open tunnels, counted per route; a configuration reload makes new ones ``shared`` with
    the previous ones, so the counts and ``close`` cover every generation's tunnels."""

    def __init__(self, forwarder: Forwarder, reactor, shared: WebSocketTunnels | None = None):
        self.forwarder = forwarder
        self.reactor = reactor
        self.count: dict[str, int] = {} if shared is None else shared.count  # route prefix → open or opening
        self.open: set[Tunnel] = set() if shared is None else shared.open
        self.deadlines = Deadlines(reactor) if shared is None else shared.deadlines  # the tunnels' idle timeouts

    @staticmethod
    def takes(request, route: Route) -> bool:
        """Whether this request is a WebSocket handshake to tunnel (else it is served as any request)."""
        return route.websocket and asks_for_websocket(request)

    def handle(self, request, route: Route, target: str) -> None:
        if self.count.get(route.prefix, 0) >= route.websocket_max_tunnels:
            log.warn("{prefix}: {n} WebSocket tunnels open; refusing another", prefix=route.prefix,
                     n=route.websocket_max_tunnels)
            self.forwarder.errors.send(request, 503, "Too many WebSocket connections.")
            return
        self.count[route.prefix] = self.count.get(route.prefix, 0) + 1
        request.log_cache = "-"
        forwarder = self.forwarder
        headers = forwarder.upstream_headers(request, route)
        headers += [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
        d = forwarder.send(route, b"GET", target, headers, sticky=forwarder.sticky(request, route), upgrade=True)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(lambda fetched: self.answered(request, route, fetched), lambda failure: self.failed(request, route, failure))
        d.addErrback(lambda failure: self.forwarder.crashed(request, failure))

    def answered(self, request, route: Route, fetched: Fetched) -> None:
        response = fetched.response
        if response.code != 101:
            self.release(route)
            self.forwarder.relay(request, route, fetched)
            return
        connection = response.connection
        if request._disconnected:
            self.release(route)
            connection.transport.loseConnection()
            fetched.tunnel_closed(0)
            return
        response.claimed = True
        if fetched.route is not None:  # a balancer member's
            request.log_origin = fetched.route.origin.key
        head = [b"HTTP/1.1 101 ", response.phrase or b"Switching Protocols", b"\r\n"]
        for name, value in self.forwarder.response_fields(request, route, fetched):
            head += (name, b": ", value, b"\r\n")
        if fetched.set_cookie is not None:  # the balancer's sticky session
            head += (b"Set-Cookie: ", fetched.set_cookie, b"\r\n")
        head.append(b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        tunnel = Tunnel(self, fetched.route or route, request, fetched,
                        self.forwarder.traffic.tunnel_opened(request.log_route))
        self.open.add(tunnel)
        request.code = 101
        request.channel.take_over(request, b"".join(head), tunnel.client)
        connection.take_over(tunnel.origin)
        tunnel.start()

    def failed(self, request, route: Route, failure) -> None:
        self.release(route)
        if not failure.check(CancelledError):
            self.forwarder.fail(request, failure)

    def release(self, route: Route) -> None:
        self.count[route.prefix] -= 1

    def closed(self, tunnel: Tunnel) -> None:
        self.open.discard(tunnel)
        self.release(tunnel.route)

    def close(self) -> None:
        """Shutting down: every tunnel closes."""
        for tunnel in list(self.open):
            tunnel.close("shutdown")
        self.deadlines.close()


class Tunnel:
    """One client connection joined to one origin connection after a 101."""

    def __init__(self, tunnels: WebSocketTunnels, route: Route, request, fetched: Fetched, figures: list[int]):
        """``route``: the request's, or its balancer member's; ``fetched``: the origin's 101; ``figures``: the
        route's tunnel figures in the traffic counters (``Traffic.tunnel_opened``)."""
        self.tunnels = tunnels
        self.route = route
        self.request = request
        self.fetched = fetched
        self.figures = figures
        self.client_transport = request.channel.transport
        self.origin_transport = fetched.response.connection.transport
        self.client = _Side(self, self.origin_transport, "client", TO_ORIGIN)  # the client's bytes, to the origin
        self.origin = _Side(self, self.client_transport, "origin", TO_CLIENT)  # the origin's bytes, to the client
        self.closing = False
        self.reason: str | None = None  # why it closes (accel.http.traffic.CLOSE_REASONS)
        self.over = False
        self.timer: IdleTimer | None = None

    def start(self) -> None:
        # Each connection's write buffer steers the other's reading (both transports are push producers).
        self.client_transport.registerProducer(self.origin_transport, True)
        self.origin_transport.registerProducer(self.client_transport, True)
        self.timer = self.tunnels.deadlines.timer(self.route.websocket_idle_timeout, self.idle)

    def touch(self) -> None:
        if self.timer is not None:
            self.timer.touch()

    def idle(self) -> None:
        log.info("WebSocket tunnel to {origin} idle for {s} s; closing", origin=self.route.origin.key,
                 s=self.route.websocket_idle_timeout)
        self.close("idle")

    def close(self, reason: str) -> None:
        """Close both connections once what each was sent has gone out (``reason``: why, for the figures)."""
        if self.closing:
            return
        self.closing = True
        self.reason = self.reason or reason
        for transport in (self.client_transport, self.origin_transport):
            transport.unregisterProducer()
            transport.loseConnection()

    def lost(self, side: str) -> None:
        """One ``side`` ("client" or "origin") closed: close the other, once; count and log the tunnel."""
        if self.over:
            return
        self.over = True
        if self.timer is not None:
            self.timer.stop()
        self.close(side)
        self.tunnels.closed(self)
        tunnel_closed(self.figures, self.reason)
        self.fetched.tunnel_closed(self.client.relayed + self.origin.relayed)
        request = self.request
        request.sentLength = self.origin.relayed
        request.log_extra = f" ws_in={self.client.relayed} ws_out={self.origin.relayed}"
        site = request.channel.site
        site.log(request)
        request.connectionLost(Failure(ConnectionDone("the WebSocket tunnel closed")))  # its notifyFinish fires


class _Side:
    """What one connection's protocol is told once it is tunnelled: its bytes go to the other transport."""

    def __init__(self, tunnel: Tunnel, other_transport, name: str, direction: int):
        """``name``: which side this is; ``direction``: where its bytes count in the tunnel's figures."""
        self.tunnel = tunnel
        self.other = other_transport
        self.name = name
        self.direction = direction
        self.relayed = 0  # bytes

    def dataReceived(self, data: bytes) -> None:
        self.other.write(data)
        self.relayed += len(data)
        self.tunnel.figures[self.direction] += len(data)
        self.tunnel.touch()

    def connectionLost(self, reason) -> None:
        self.tunnel.lost(self.name)
