"""The request path: accept → normalise the target → route → (cache) → origin → respond.

``ReverseProxy`` is the ``IResource`` accel serves. It refuses what a reverse proxy must not handle
(CONNECT, TRACE, foreign absolute-form targets, targets that cannot be normalised safely), normalises the
target's path once (``accel.http.target``), picks the route, lets the route's rules admit the request
(``accel.proxy.admission``: 403, 405, 413, 429), and hands it to a *handler*:
the ``Forwarder`` below, or the cache layer wrapped around it. The Forwarder sends the request upstream
with the proxy's header rules, then relays the response (rewritten by ProxyPassReverse) while both bodies
stream.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from accel.http.accesslog import request_label
from accel.http.body import ResponseRelay
from accel.http.compress import BROTLI_AVAILABLE, Encoder
from accel.http.encoding import (CODING_FIELDS, IDENTITY, compressible, encoded_fields, listed_type, negotiate,
                                 offered_codings)
from accel.config import Config, Origin, Route, local_names
from accel.http.addresses import peer_in, peer_name, split_authority
from accel.http.errors import ErrorPages
from accel.http.header_rules import HeaderRules
from accel.http.headers import UNTRUSTED_FIELDS, ClientSide, RawFields, end_to_end, request_to_origin, response_to_client
from accel.http.target import UnsafeTarget, normalise_target
from accel.http.traffic import Traffic, route_label
from accel.proxy.admission import Admission, Refused
from accel.proxy.balancing import Balancers, NoUsableMember
from accel.proxy.origin import Fetched, OriginBusy, OriginClients, OriginTimeout, OriginUnavailable
from accel.proxy.rewrite import ReverseMap, any_reversed, reverse_fields
from accel.proxy.routing import RouteTable, origin_target

log = Logger()

_PEERS_REMEMBERED = 4096  # bound on Forwarder's memo of client sides


class ReverseProxy(Resource):
    isLeaf = True

    def __init__(self, config: Config, handler, errors: ErrorPages, admission: Admission, purge=None, status=None,
                 websocket=None, health=None):
        super().__init__()
        self.health = health  # the node's health check (accel.http.health), answered before routing
        self.routes = RouteTable(config.routes)
        self.handler = handler
        self.errors = errors
        self.admission = admission
        self.purge = purge
        self.status = status  # the status page and metrics (accel.http.status), answered before routing
        self.websocket = websocket  # accel.proxy.websocket.WebSocketTunnels: handshakes it takes bypass the cache
        self.names = {n.lower() for n in config.server_names + local_names()}
        # Route → its origin's key for the access log, its header rules and its label, computed once (id:
        # Routes are slow to hash).
        self._per_route = {
            id(r): (r, r.origin.key, HeaderRules(r.protection.headers), route_label(r))
            for r in self.routes.routes
            if r.origin is not None
        }
        self.any_host = not config.server_names

    def serves_host(self, host: str) -> bool:
        """Whether ``host`` (a Host field value, port included) is one of ours: any host when no names
        are configured, else a configured or local name."""
        return self.any_host or split_authority(host)[0].strip("[]").lower() in self.names

    def render(self, request) -> object:
        method = request.method
        if method in (b"CONNECT", b"TRACE"):
            self.errors.send(request, 405, "This server is a reverse proxy.", {b"allow": b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"})
            return NOT_DONE_YET
        target = self.origin_form(request)
        if target is None:
            return NOT_DONE_YET
        try:
            # Routing, cache rules, the cache key and the origin request all use this one form.
            target = normalise_target(target)
        except UnsafeTarget as e:
            self.errors.send(request, 400, f"The request-target cannot be used: {e}.")
            return NOT_DONE_YET
        path = target.partition("?")[0]
        request.path = path.encode("latin-1")
        if self.health is not None and request.path == self.health.path:
            self.health.handle(request)
            return NOT_DONE_YET
        if self.status is not None and self.status.claims(path):
            self.status.handle(request, target)
            return NOT_DONE_YET
        if method == b"PURGE":
            if self.purge is None:
                self.errors.send(request, 405, "This server has no cache to purge.")
            else:
                self.purge.handle(request, target)
            return NOT_DONE_YET
        host = request.getHeader(b"host")
        route = self.routes.match(target, host.decode("latin-1") if host else None)
        if route is None or route.exclude:
            self.errors.send(request, 404, "No route serves this path.")
            return NOT_DONE_YET
        known = self._per_route.get(id(route))
        if known is None or known[0] is not route:
            known = (route, route.origin.key, HeaderRules(route.protection.headers), route_label(route))
        request.log_origin, request.header_rules, request.log_route = known[1], known[2], known[3]
        admission = self.admission
        refusal = admission.admit(route, request.getClientAddress(), method, _field_values(request),
                                  admission.clock()) if admission.guards(route) else None
        if refusal is not None:
            self.errors.send(request, refusal.status, refusal.detail, refusal.headers)
            return NOT_DONE_YET
        max_body_size = route.protection.max_body_size
        if request.body is not None and max_body_size is not None:
            request.body.limit(max_body_size, lambda: self.body_too_large(request, max_body_size))
        if route.websocket and self.websocket is not None and self.websocket.takes(request, route):
            self.websocket.handle(request, route, target)
            return NOT_DONE_YET
        self.handler.handle(request, route, target)
        return NOT_DONE_YET

    def body_too_large(self, request, max_body_size: int) -> None:
        """A request body grew past ``max_body_size`` while it streamed (the origin request is abandoned with
        it): 413 when nothing was answered yet, else the response is cut."""
        log.info("request body of {uri} over {n} bytes: cut", uri=request.uri, n=max_body_size)
        if request.finished or request._disconnected:
            return
        if request.startedWriting:
            request.close_incomplete()
        else:
            request.setHeader(b"connection", b"close")  # the rest of the body is not read
            self.errors.send(request, 413, f"Request bodies here are limited to {max_body_size} bytes.")

    def origin_form(self, request) -> str | None:
        """The request-target as a path and query; answers and returns None when it cannot be served.

        An absolute-form target (RFC 9112 §3.2.2) is accepted only for one of our own host names, and then
        its authority replaces ``Host``: anything else would make accel an open forward proxy.
        """
        uri = request.uri
        if uri.startswith(b"/"):
            return uri.decode("latin-1")
        if uri == b"*" and request.method == b"OPTIONS":
            request.setHeader(b"content-length", b"0")
            request.finish()
            return None
        parts = urlsplit(uri.decode("latin-1"))
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            self.errors.send(request, 400, "The request-target is not valid here.")
            return None
        if (parts.hostname or "").lower() not in self.names:
            self.errors.send(request, 421, "This server does not serve that host; it is not a forward proxy.")
            return None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request.requestHeaders.setRawHeaders(b"host", [parts.netloc.encode("latin-1")])
        request.uri = target.encode("latin-1")
        request.path = (parts.path or "/").encode("latin-1")
        return target


class Forwarder:
    """Sends requests to their route's origin and relays the responses."""

    def __init__(self, config: Config, clients: OriginClients, errors: ErrorPages, reactor, admission: Admission,
                 balancers: Balancers | None = None, traffic: Traffic | None = None):
        self.config = config
        self.traffic = traffic or Traffic()  # origin fetches are counted here
        self.clients = clients
        self.balancers = balancers
        self.errors = errors
        self.reactor = reactor
        self.admission = admission
        self.server_name = (config.server_names or (socket.gethostname(),))[0]
        self._client_sides: dict[tuple, ClientSide] = {}
        self._untrusted: dict[int, tuple[Route, frozenset]] = {}  # id(route): its untrusted fields

    def handle(self, request, route: Route, target: str) -> None:
        self.fetch(request, route, target, answered=lambda fetched: self.relay(request, route, fetched),
                   failed=lambda failure: self.fail(request, failure),
                   crashed=lambda failure: self.crashed(request, failure))

    def fetch(
        self, request, route: Route, target: str, extra: Iterable[tuple[bytes, bytes]] = (), drop: frozenset = frozenset(),
        keep_going: Callable[[], bool] = lambda: False, method: bytes | None = None,
        *, answered: Callable[[Fetched], None], failed: Callable[[Failure], None], crashed: Callable[[Failure], None],
    ) -> None:
        """Send ``request`` to the route's origin; ``answered(fetched)`` is called when the response header
        section is in, else ``failed(failure)``; what either raises goes to ``crashed(failure)``, the end of
        the chain.

        ``extra`` fields are added and the client's fields named in ``drop`` are left out (the cache uses
        both to send its own validators). The origin request is abandoned if the client goes away, or was
        answered before the origin did (413 for a body over the limit), unless ``keep_going()`` says
        otherwise then (a cache fetch other requests wait for). ``method`` replaces the client's (a HEAD the
        cache fetches as GET).
        """
        if route.protection.rate_limit is not None:  # (a token per origin request: Admission.charge)
            refusal = self.admission.charge(route, request.getClientAddress(), _field_values(request),
                                            self.admission.clock())
            if refusal is not None:
                _deliver(failed, Failure(Refused(refusal)), crashed)
                return
        headers = self.upstream_headers(request, route, extra, drop)
        request.forwarded = True
        sent = time.monotonic()
        heard = []

        def origin_answered(fetched: Fetched) -> None:
            heard.append(True)
            # (a balancer member's own origin, when one answered)
            self.traffic.fetched((fetched.route or route).origin.key, time.monotonic() - sent, fetched.response.code)
            if route.balancer is not None:
                request.log_origin = fetched.route.origin.key  # the access log names the member that answered
            _deliver(answered, fetched, crashed)

        def origin_failed(failure: Failure) -> None:
            if not failure.check(CancelledError):
                self.traffic.fetched(route.origin.key, time.monotonic() - sent, None)
            _deliver(failed, failure, crashed)

        def interim(code: int, phrase: bytes, fields: RawFields) -> None:
            relay_interim(request, code, phrase, fields)

        if route.balancer is None:  # (the origin client's own callbacks: no Deferred between)
            client, upstream = self.origin_of(route, target)
            pending = client.request(method or request.method, upstream, headers, request.body,
                                     timeout=route.response_timeout, interim=interim, answered=origin_answered,
                                     failed=origin_failed)
        else:
            pending = self.send(route, method or request.method, target, headers, request.body, interim=interim,
                                sticky=self.sticky(request, route))
            pending.addCallbacks(origin_answered, origin_failed)
        request.when_over(lambda _: None if heard or keep_going() else pending.cancel())

    def upstream_headers(
        self, request, route: Route, extra: Iterable[tuple[bytes, bytes]] = (), drop: frozenset = frozenset()
    ) -> RawFields:
        """The header section for the origin: the proxy's rules applied to the client's fields."""
        client_fields = [(n, v) for n, values in request.requestHeaders.getAllRawHeaders()
                         if (lower := n.lower()) not in drop and lower != b"x-request-id" for v in values]
        fields = request_to_origin(
            client_fields,
            self.client_side(request),
            origin_authority=route.origin.authority,
            preserve_host=route.preserve_host,
            server_name=self.server_name,
            via=self.config.via_pseudonym,
            client_version=request.clientproto,
            untrusted=self.untrusted_fields(route),
        )
        rules = getattr(request, "header_rules", None)
        if rules is not None and rules.request:
            fields = rules.to_origin(fields)
        fields.extend(extra)
        request_id = getattr(request, "request_id", b"-")
        if request_id != b"-":
            fields.append((b"X-Request-Id", request_id))
        return fields

    def untrusted_fields(self, route: Route) -> frozenset:
        """Fields removed from untrusted peers' requests on this route: the built-in list, plus
        ``strip_untrusted``, less ``pass_untrusted``."""
        known = self._untrusted.get(id(route))
        if known is None or known[0] is not route:
            p = route.protection
            names = (UNTRUSTED_FIELDS | {n.encode("latin-1") for n in p.strip_untrusted}) - {
                n.encode("latin-1") for n in p.pass_untrusted}
            known = self._untrusted[id(route)] = (route, frozenset(names))
        return known[1]

    def sticky(self, request, route: Route) -> str | None:
        """The balancer member route the request's sticky session names, if its route has a balancer."""
        if route.balancer is None:
            return None
        return self.balancers.sticky(route, request.requestHeaders.getRawHeaders(b"cookie", []))

    def send(
        self, route: Route, method: bytes, target: str, headers: RawFields, body=None, interim=None,
        sticky: str | None = None, upgrade: bool = False,
    ) -> Deferred[Fetched]:
        """Send a prepared request for a public ``target`` to the route's origin, or to a member of its
        balancer (``sticky``: the member route a sticky session names). ``upgrade``: a WebSocket handshake
        (see ``OriginClient.fetch``)."""
        if route.balancer is not None:
            return self.balancers.send(route, method, target, headers, body, interim, sticky, upgrade)
        client, upstream = self.origin_of(route, target)
        return client.fetch(method, upstream, headers, body, timeout=route.response_timeout, interim=interim,
                            upgrade=upgrade)

    def origin_of(self, route: Route, target: str):
        """The origin client of ``route`` (one without a balancer) and the public ``target`` in its URL space."""
        return self.clients.for_route(route), origin_target(route, target).encode("latin-1")

    def client_side(self, request) -> ClientSide:
        """What the origin is told of the client side; remembered, since a few peers send most requests (to a few
        host names) and a ClientSide is immutable."""
        peer = request.client  # (getClientAddress)
        host = request.getHeader(b"host")
        secure = request.isSecure()
        port = getattr(request.host, "port", None)  # (getHost)
        # (name and trust depend on the peer's host alone, not its port)
        key = (type(peer), getattr(peer, "host", None), host, secure, port)
        known = self._client_sides.get(key)
        if known is None:
            if len(self._client_sides) >= _PEERS_REMEMBERED:
                self._client_sides.clear()
            address, trusted = self.peer(peer)
            known = self._client_sides[key] = ClientSide(
                address=address, host=host, scheme="https" if secure else "http", port=port, trusted=trusted)
        return known

    def peer(self, peer) -> tuple[str, bool]:
        """(name, trusted) of a client's peer address."""
        return peer_name(peer), peer_in(peer, self.config.trusted_proxies, self.config.trusted_unix_peers)

    def response_fields(self, request, route: Route, fetched: Fetched) -> list[tuple[bytes, bytes]]:
        """The origin response's header fields as the client must see them."""
        return self.public_fields(request, route, fetched, self.origin_fields(fetched))

    def public_fields(self, request, route: Route, fetched: Fetched, fields: RawFields) -> RawFields:
        """``fields`` (``origin_fields``) in the URL space ``request``'s client sees (ProxyPassReverse); the
        same list when none of them names a URL."""
        if not any_reversed(fields):
            return fields
        return reverse_fields(fields, self.reverse_map(request, route, answered_by(route, fetched)))

    def origin_fields(self, fetched: Fetched) -> list[tuple[bytes, bytes]]:
        """The origin response's header fields for any client: URLs still in the origin's URL space."""
        response = fetched.response
        return response_to_client(response.fields, via=self.config.via_pseudonym, origin_version=response.version)

    @staticmethod
    def reverse_map(request, route: Route, origin: Origin) -> ReverseMap:
        """ProxyPassReverse from ``origin``'s URL space into the one ``request``'s client sees."""
        public_host = (request.getHeader(b"host") or origin.authority.encode()).decode("latin-1")
        return ReverseMap(origin, route.prefix, "https" if request.isSecure() else "http", public_host)

    def relay(self, request, route: Route, fetched: Fetched, tee=None, fields=None,
              keep_going: Callable[[], bool] = lambda: False, fetched_as_get: bool = False) -> ResponseRelay:
        """Write the origin response to the client as it streams; the relay's ``done`` fires with True when
        it was complete.

        ``fields`` (default: ``response_fields``) are the header fields the client gets; ``tee`` sees
        every body chunk, and goes on seeing them after the client has left if ``keep_going()`` says so then.
        The response's connection slot is released when the body is over, or at once if this fails.
        ``fetched_as_get``: a HEAD request the cache fetched as GET, whose body goes to ``tee`` only and
        whose Content-Length the client gets (RFC 9110 §9.3.2).
        """
        response = fetched.response
        if request._disconnected:
            discard(fetched)
            relay = ResponseRelay(request)
            relay.over(False)
            return relay
        try:
            request.setResponseCode(response.code, response.phrase)
            if fields is None:
                fields = self.response_fields(request, route, fetched)
            headers = request.responseHeaders
            for name, _ in fields:
                if name.lower() == b"date":  # the origin's replaces the request's own
                    headers.removeHeader(b"date")
                    break
            headers.add_fields(fields)
            if fetched.set_cookie is not None:  # this client's sticky session: never part of a stored response
                request.responseHeaders.addRawHeader(b"set-cookie", fetched.set_cookie)
        except Exception:
            discard(fetched)
            raise
        coding = self.compress(request, route, response, fields)
        if coding is None and response.length is not UNKNOWN_LENGTH and (request.method != b"HEAD" or fetched_as_get):
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % response.length])
        relay = ResponseRelay(request, tee=tee, keep_reading=keep_going,
                              encoder=Encoder(coding, route.compress.level) if coding else None)
        timer = self.clients.deadlines.timer(route.idle_timeout, lambda: _idle_abort(relay, route, request))
        relay.on_activity = timer.touch
        request.when_over(lambda lost: lost and relay.client_gone())
        relay.ended = lambda: (timer.stop(), fetched.release())
        response.deliverBody(relay)
        return relay

    def compress(self, request, route: Route, response, fields) -> str | None:
        """Compress the response as it streams when its route and the client allow it: the coding (None:
        identity), with the header fields set for it (``accel.http.encoding``)."""
        settings = route.compress
        if not settings.enabled or response.code != 200 or request.requestHeaders.hasHeader(b"range"):
            return None
        content_type = None
        for name, value in fields:
            if name.lower() == b"content-type":
                content_type = value
                break
        if content_type is None or not listed_type(settings, content_type.decode("latin-1")):
            return None  # (what compressible would say, without converting every field)
        pure = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in fields]
        length = None if response.length is UNKNOWN_LENGTH or request.method == b"HEAD" else response.length
        if not compressible(settings, response.code, pure, length):
            return None
        accept = request.getHeader(b"accept-encoding")
        coding = negotiate(None if accept is None else accept.decode("latin-1"),
                           offered_codings(settings, BROTLI_AVAILABLE))
        headers = request.responseHeaders  # the response's fields, and the request's own (Cache-Status...)
        for name in CODING_FIELDS:
            headers.removeHeader(name.encode("ascii"))
        for name, value in encoded_fields(pure, coding):
            if name.lower() in CODING_FIELDS:
                headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        return None if coding == IDENTITY else coding

    def fail(self, request, failure: Failure, headers: dict[bytes, bytes] | None = None) -> None:
        """Answer a request whose origin request failed before a response arrived (with ``headers``)."""
        if failure.check(CancelledError) or request._disconnected or request.finished:
            return
        if failure.check(Refused):
            refusal = failure.value.refusal
            self.errors.send(request, refusal.status, refusal.detail, {**(headers or {}), **refusal.headers})
            return
        code, _ = origin_failure(failure)
        if not expected_origin_failure(failure):
            log.failure("unexpected origin failure for {request}", failure=failure, request=request_label(request))
        log.warn("{code} for {request}: {why}", code=code, request=request_label(request), why=failure.getErrorMessage())
        self.errors.send(request, code, headers=headers)

    def crashed(self, request, failure: Failure) -> None:
        """The end of a callback chain that failed unexpectedly: log it and answer 500, or cut a response
        that has already started, so no client is left waiting."""
        log.failure("handling {request} failed", failure=failure, request=request_label(request))
        if request._disconnected or request.finished:
            return
        if request.startedWriting:
            request.close_incomplete()
            return
        for name in [name for name, _ in request.responseHeaders.getAllRawHeaders()]:
            if name.lower() not in _KEPT_ON_ERROR:
                request.responseHeaders.removeHeader(name)
        self.errors.send(request, 500)


def expected_origin_failure(failure: Failure) -> bool:
    """An origin that timed out, could not be reached or was too busy: an event to log in one line, not a
    defect to log with its traceback."""
    return failure.check(OriginTimeout, OriginUnavailable, OriginBusy) is not None


def origin_failure(failure: Failure) -> tuple[int, str]:
    """(status, short reason) for an origin request that got no response: 504 for a timeout, 503 when too
    many requests already wait for the origin or no balancer member is usable, else 502."""
    if failure.check(NoUsableMember):
        return 503, "no-usable-member"
    if failure.check(OriginTimeout):
        return 504, "origin-timeout"
    if failure.check(OriginBusy):
        return 503, "origin-busy"
    if failure.check(Refused):
        return failure.value.refusal.status, "refused"
    return 502, "origin-unreachable"


# The fields of a request's own (Server, Date, HSTS) that an error answer keeps; the rest came from a response.
_KEPT_ON_ERROR = frozenset({b"server", b"date", b"strict-transport-security"})


def relay_interim(request, code: int, phrase: bytes, fields: RawFields) -> None:
    """RFC 9110 §15.2: an interim response goes on to an HTTP/1.1 client ahead of the final one."""
    if request.clientproto != b"HTTP/1.1" or request.startedWriting or request._disconnected:
        return
    lines = [b"HTTP/1.1 %d %s\r\n" % (code, phrase)]
    for name, value in end_to_end(fields):
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    request.channel.transport.writeSequence(lines)


def _deliver(callback: Callable, result, crashed: Callable[[Failure], None]) -> None:
    """``callback(result)``; what it raises goes to ``crashed`` (``Forwarder.fetch``'s end of the chain)."""
    try:
        callback(result)
    except Exception:
        crashed(Failure())


def _idle_abort(relay: ResponseRelay, route: Route, request) -> None:
    log.warn("origin {origin} idle for {s:g} s mid-body for {request}; aborting", origin=route.origin.key,
             s=route.idle_timeout, request=request_label(request))
    relay.abort()


def _field_values(request) -> Callable[[bytes], list[bytes]]:
    """The request's values of a field, by lower-case name (for ``Admission``)."""
    return lambda name: request.requestHeaders.getRawHeaders(name, [])


def answered_by(route: Route, fetched: Fetched) -> Origin:
    """The origin whose URL space ``fetched``'s fields are in: a balancer member's own, when one answered."""
    return (fetched.route or route).origin


def discard(fetched: Fetched) -> None:
    """Drop a response nobody will read: its connection is closed unless the body is already complete."""
    fetched.release()
