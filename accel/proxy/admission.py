"""Whether a routed request may go on: access rules, methods, declared body size, rate limit.

``Admission.admit`` is the one entry point, called for every routed request before the cache or an origin
sees it (``ReverseProxy.render``, and ``accel.cache.fast`` for the hits the connection answers itself).
It returns None, or the ``Refusal`` to send: 403 (``allow`` / ``deny``), 405 with ``Allow`` (``methods``), 413
(``Content-Length`` over ``max_body_size``), 429 with ``Retry-After`` (``rate_limit``). Checks run in that
order, so a request refused for who or what it is takes no token. A route whose rate limit says
``hits_count = false`` is charged by ``charge`` instead, when a request is about to go to the origin.
Refusals are counted per route and status (``refusals``) and logged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.logger import Logger

from accel.config import Config, Protection, Route
from accel.http.access import Client, access_allowed, client_of
from accel.proxy.buckets import SharedBuckets
from accel.proxy.ratelimit import capacity_of, rate_of

log = Logger()

_MEMO_SIZE = 4096  # bound on the memos of clients and access decisions
FieldValues = Callable[[bytes], list[bytes]]  # lower-case name → the request's values of that field


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    detail: str
    headers: dict[bytes, bytes] = field(default_factory=dict)


class Refused(Exception):
    """A request refused on its way to the origin (a rate limit with hits_count = false)."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.detail)
        self.refusal = refusal


def _active(p: Protection) -> bool:
    return bool(
        p.allow is not None or p.deny.networks or p.deny.local or p.methods is not None
        or p.max_body_size is not None or p.rate_limit is not None
    )


class Admission:
    def __init__(self, config: Config, buckets: SharedBuckets | None, clock: Callable[[], float]):
        self.trusted = config.trusted_proxies
        self.trusted_unix = config.trusted_unix_peers
        self.buckets = buckets  # None when no route has a rate limit
        self.clock = clock  # the ``now`` callers pass: shared buckets need one clock for every process
        self.refusals: Counter[tuple[str, int]] = Counter()
        self._active: dict[int, tuple[Route, bool]] = {}  # id(route): hashing a Route is slow
        self._clients: dict[tuple, Client] = {}  # (peer host, X-Forwarded-For values) → the client
        self._allowed: dict[tuple[int, Client], bool] = {}

    def admit(
        self, route: Route, peer, method: bytes, field_values: FieldValues, now: float, count: bool = True
    ) -> Refusal | None:
        """None when ``route``'s rules let this request in, else the refusal to answer with. ``count=False``:
        the caller does not answer a refusal itself but hands the request on to ``ReverseProxy``, which
        asks again and counts it (a refused request takes no token, so asking twice changes nothing)."""
        if not self.guards(route):
            return None
        p = route.protection
        client = self.client(peer, field_values)
        refusal = None
        if not self.allowed(route, client):
            refusal = Refusal(403, "This client may not use this path.")
        elif p.methods is not None and method.decode("latin-1") not in p.methods:
            refusal = Refusal(405, "This method is not allowed here.", {b"allow": ", ".join(p.methods).encode()})
        elif p.max_body_size is not None and _declared_length(field_values) > p.max_body_size:
            refusal = Refusal(413, f"Request bodies here are limited to {p.max_body_size} bytes.")
        elif p.rate_limit is not None and p.rate_limit.hits_count:
            refusal = self.take_token(p, client, field_values, now)
        if refusal is not None and count:
            self.count(route, refusal, client)
        return refusal

    def guards(self, route: Route) -> bool:
        """Whether ``route`` has a rule ``admit`` checks (access, methods, body size or rate limit)."""
        known = self._active.get(id(route))
        if known is None or known[0] is not route:
            known = self._active[id(route)] = (route, _active(route.protection))
        return known[1]

    def charge(self, route: Route, peer, field_values: FieldValues, now: float) -> Refusal | None:
        """For a rate limit with ``hits_count = false``: take a token for a request going to the origin."""
        limit = route.protection.rate_limit
        if limit is None or limit.hits_count:
            return None
        client = self.client(peer, field_values)
        refusal = self.take_token(route.protection, client, field_values, now)
        if refusal is not None:
            self.count(route, refusal, client)
        return refusal

    def client(self, peer, field_values: FieldValues) -> Client:
        forwarded = tuple(field_values(b"x-forwarded-for")) if self.trusted or self.trusted_unix else ()
        memo = (getattr(peer, "host", None), forwarded)  # parsing addresses costs more than the rest
        client = self._clients.get(memo)
        if client is None:
            if len(self._clients) >= _MEMO_SIZE:
                self._clients.clear()
            client = self._clients[memo] = client_of(peer, forwarded, self.trusted, self.trusted_unix)
        return client

    def allowed(self, route: Route, client: Client) -> bool:
        memo = (id(route), client)  # guards() keeps the route alive, so its id is not reused
        allowed = self._allowed.get(memo)
        if allowed is None:
            if len(self._allowed) >= _MEMO_SIZE:
                self._allowed.clear()
            allowed = self._allowed[memo] = access_allowed(client, route.protection.allow, route.protection.deny)
        return allowed

    def take_token(self, p: Protection, client: Client, field_values: FieldValues, now: float) -> Refusal | None:
        limit = p.rate_limit
        assert limit is not None and self.buckets is not None
        value = client.name
        if limit.key != "client":
            values = field_values(limit.key.encode("latin-1"))
            if values:  # without the field, the request counts against its client address
                value = "field:" + b", ".join(values).decode("latin-1")
        key = f"{limit.scope}\0{limit.key}\0{value}".encode("utf-8", "surrogateescape")
        taken = self.buckets.take(key, now, rate_of(limit), capacity_of(limit))
        if taken.allowed:
            return None
        return Refusal(429, "Too many requests; try again later.", {b"retry-after": b"%d" % taken.retry_after})

    def count(self, route: Route, refusal: Refusal, client: Client) -> None:
        self.refusals[(route.prefix, refusal.status)] += 1
        log.info("refused {status} to {client} for route {prefix}: {detail}", status=refusal.status,
                 client=client.name, prefix=route.prefix, detail=refusal.detail)


def _declared_length(field_values: FieldValues) -> int:
    """The request's Content-Length (the channel has checked it is one valid number), 0 when absent."""
    values = field_values(b"content-length")
    try:
        return int(values[0]) if values else 0
    except ValueError:
        return 0
