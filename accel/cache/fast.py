"""Cache hits the client connection answers itself, from bytes prepared when the response was first served.

``FastHits`` is the ``fast_hits`` callable ``accel.app`` gives the Site: for a GET or HEAD without request
cache directives, range or preconditions other than If-None-Match / If-Modified-Since, it finds the stored
response in the memory tier and, when that response is fresh and the only one the request selects,
returns a ``FastHit`` the connection writes as it is: the response, or a 304 when a conditional says so. The decisions are the prepared path's (``Responder.serve_plain``): the same
route and cache rules, key, Vary matching, ``policy.fresh_for_plain_request`` and ``Prepared`` header
section. Anything else returns None and the request takes the general path (``ReverseProxy``), which
also reads bodies from the disk tier.

A route that compresses serves the response in the coding the request's Accept-Encoding asks for, made
once and kept beside it (``Responder.coded``): negotiation is one dict lookup of the field's value.

Per hit: one dict lookup of (TLS, Host, request-target) for the route, the key and the policy; the memory
tier's lookup; the freshness check; and, once a second per stored response, formatting Age and
Cache-Status.

A hit's answer holds until its Age or ttl value would change or its freshness would end, whichever is first
(at most a second), unless the stored response changes. So an unconditional request with neither access
rules nor a Vary other than Accept-Encoding in the way is answered from ``_answers`` by (TLS, Host,
request-target, Accept-Encoding): one clock read and two reads of the shared change counters
(``PurgeEpoch.unchanged``: a purge, a replacement or a change by another process ends it at once, as it ends
the memory tier's group). The use counts for the memory tier's LRU and the disk tier's access time are
noted when the answer is made, once per second.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from accel.cache import policy
from accel.cache.epoch import url_bucket
from accel.cache.layer import CacheLayer, as_pure
from accel.cache.serving import CONDITIONAL_FIELDS, NOT_PLAIN_FIELDS, Prepared, encode_fields
from accel.cache.vary import matches
from accel.http.target import UnsafeTarget, normalise_target
from accel.http.traffic import counted_as, route_label
from accel.proxy.forwarding import ReverseProxy

_MEMO_SIZE = 4096
_ANSWERS_KEPT = 1024  # remembered answers (the table is emptied when full: each lasts a second at most)
# The Vary a remembered answer's response may have: none, or Accept-Encoding, whose lines the answer's key holds
# (joined as sent: equal keys select the same stored response, RFC 9111 §4.1).
_REMEMBERED_VARY = ((), ("accept-encoding",))
_JOINED_UP_TO = 16384  # a body up to this size is kept joined to its header section (FastHit.rest)


class FastHit:
    """A response the connection writes as it is: its version, then ``status_line``, the connection's own
    fields (Connection, Server, Date unless ``replaces_date``), the X-Request-Id field, ``section`` (the stored
    fields, Age, Cache-Status, Content-Length for a 200), HSTS on TLS, the empty line and ``body`` unless HEAD.
    ``rest`` is what follows the request id's value in a GET's answer without HSTS, joined once."""

    __slots__ = ("status", "status_line", "section", "body", "rest", "replaces_date", "has_server", "has_hsts",
                 "origin", "age", "ttl", "route", "counted_as")

    def __init__(self, status: int, reason: bytes, section: bytes, body: bytes, replaces_date: bool,
                 names: frozenset, origin: str, age: int, ttl: int, route: str):
        self.status = status
        self.status_line = b" %d %s\r\n" % (status, reason)
        self.section = section
        self.body = body
        self.rest = b"\r\n%s\r\n%s" % (section, body) if len(body) <= _JOINED_UP_TO else b""
        self.replaces_date = replaces_date
        self.has_server = b"Server" in names
        self.has_hsts = b"Strict-Transport-Security" in names
        self.origin, self.age, self.ttl = origin, age, ttl
        self.route = route  # its label in the traffic figures (accel.http.traffic)
        self.counted_as = counted_as(route, b"GET", status, "memory")  # (a HEAD's method class is the same)


def _ok(prepared: Prepared, body: bytes, age: int, ttl: int, origin: str, route: str) -> FastHit:
    section = b"%sAge: %d\r\nCache-Status: %s%d\r\n%s" % (
        prepared.fields, age, prepared.responder.hit_ttl, ttl, prepared.length_field
    )
    return FastHit(prepared.head.status, prepared.reason, section, body, prepared.replaces_date, prepared.taken,
                   origin, age, ttl, route)


def _not_modified(prepared: Prepared, age: int, ttl: int, origin: str, route: str) -> FastHit | None:
    """RFC 9110 §15.4.5: the 304 ``Responder.serve`` writes, with the stored fields a 304 carries."""
    fields = policy.not_modified_fields(prepared.head.fields)
    encoded = encode_fields(fields, prepared.responder.hidden_fields)
    if encoded is None:
        return None
    lines, names = encoded
    section = b"%sAge: %d\r\nCache-Status: %s%d\r\n" % (lines, age, prepared.responder.hit_ttl, ttl)
    return FastHit(304, b"Not Modified", section, b"", any(n == "date" for n, _ in fields), names, origin, age, ttl,
                   route)


class FastHits:
    # lower-case names of request fields: those that keep a request off this path, and the conditionals
    # it answers (RFC 9110 §13.2.2: If-None-Match, If-Modified-Since of a fresh response: 304 or 200)
    not_plain = NOT_PLAIN_FIELDS - CONDITIONAL_FIELDS
    conditional = CONDITIONAL_FIELDS

    def __init__(self, proxy: ReverseProxy, layer: CacheLayer):
        self.proxy = proxy
        self.layer = layer
        self.store = layer.store
        self.responder = layer.responder
        self.admission = proxy.admission
        self.epoch = self.store.epoch
        self.memory = self.store.memory
        self._targets: dict[tuple[bool, bytes, bytes], tuple | None] = {}
        # (TLS, Host, request-target, Accept-Encoding) -> (FastHit, until, epoch, bucket, generation)
        self._answers: dict[tuple, tuple] = {}

    def answer(self, secure: bool, message, peer: Callable[[], object]) -> FastHit | None:
        """The answer to ``message`` (an ``accel.http.connection.Message``: a GET or HEAD without a body
        and without fields in ``not_plain``) from the client ``peer()`` gives, or None when the general path
        must answer."""
        remember_as = None
        if not message.conditional:
            remember_as = (secure, message.host, message.target, message.accept_encoding)
            answer = self._answers.get(remember_as)
            if (answer is not None and self.layer.clock() < answer[1]
                    and self.epoch.unchanged(answer[2], answer[3], answer[4])):
                self.memory.hits += 1
                return answer[0]
        where = self._targets.get((secure, message.host, message.target), False)
        if where is False:
            where = self._resolve(secure, message.host, message.target)
        if where is None:
            return None
        if not where[6]:
            return self._hit(where, message, remember_as)
        hit = self._hit(where, message, None)
        if hit is None:
            return None
        # The route's access rules, methods and rate limit, as ReverseProxy.render applies them.
        refusal = self.admission.admit(where[3], peer(), message.method, _values(message.headers),
                                       self.admission.clock(), count=False)
        return hit if refusal is None else None  # refused: ReverseProxy.render answers (and counts) it

    def _hit(self, where: tuple, message, remember_as: tuple | None) -> FastHit | None:
        """The hit for ``message``; remembered as ``remember_as`` (when given) for as long as it holds."""
        key, policy_, origin, route, label, bucket, _ = where
        if remember_as is not None:
            now = self.layer.clock()  # (read before the decision, as the counters before the lookup: the answer
            counters = self.store.counters(bucket)  # is remembered for no longer than it holds)
        items = self.store.lookup_memory(key, bucket)
        selected = None
        fields = None
        for item in items:
            if item.head.status == 206:
                continue  # a stored piece (RFC 9111 §3.4) answers only the Range requests it covers
            names = item.head.vary_names
            if names:
                if fields is None:
                    fields = as_pure(message.headers)
                if not matches(names, item.head.secondary_key, fields):
                    continue
            if selected is not None:
                return None  # policy.most_recent_first decides between them: the general path
            selected = item
        if selected is None or selected.body is None or selected.head.reverse_origin:
            return None  # (reverse_origin: fields rewritten for each client, which the general path does)
        answer = self.responder.fresh_prepared(selected.head, selected.body, selected.extra, policy_, route.compress,
                                               message.accept_encoding)
        if answer is None:
            return None
        prepared, body, fresh = answer
        age, ttl = max(0, int(fresh.age)), math.floor(fresh.ttl)
        if message.conditional:
            method = message.method.decode("latin-1")
            condition = policy.evaluate_conditionals(method, fields or as_pure(message.headers), prepared.head.fields)
            if condition == 304:
                hit = prepared.fast_304
                if (hit is None or hit.age != age or hit.ttl != ttl or hit.origin is not origin
                        or hit.route is not label):
                    hit = prepared.fast_304 = _not_modified(prepared, age, ttl, origin, label)
                return hit
            if condition is not None:
                return None
        hit = prepared.fast
        if (hit is None or hit.age != age or hit.ttl != ttl or hit.origin is not origin or hit.body is not body
                or hit.route is not label):
            hit = prepared.fast = _ok(prepared, body, age, ttl, origin, label)
        if remember_as is not None and selected.head.vary_names in _REMEMBERED_VARY:
            self._remember(remember_as, hit, now, fresh, bucket, counters)
        return hit

    def _remember(self, remember_as: tuple, hit: FastHit, now: float, fresh: policy.Fresh, bucket: int,
                  counters: tuple[int, int]) -> None:
        """Keep ``hit`` (made at ``now`` from ``fresh``) until its Age or ttl value would change, which is also
        before it is no longer fresh (RFC 9111 §4.2: fresh while the lifetime exceeds the age)."""
        if fresh.age < 0:
            return  # (a response dated in the future: Age stays 0 for longer than a second's step)
        holds_for = min(1 - fresh.age % 1, fresh.ttl % 1)
        if holds_for <= 0:
            return
        if len(self._answers) >= _ANSWERS_KEPT:
            self._answers.clear()
        self._answers[remember_as] = (hit, now + holds_for, counters[0], bucket, counters[1])

    def _resolve(self, secure: bool, host: bytes, target: bytes) -> tuple | None:
        """What ``ReverseProxy.render`` and ``CacheLayer.handle`` decide from the host and target alone: the
        normalised target, its route by host and path (served by the cache?), the cache key and the policy.
        None: not a candidate for this path. (Then the key's generation bucket in the shared purge epoch, and
        whether the route has rules ``admission.admit`` checks: both follow from the route and key alone.)"""
        found = path = None
        if target.startswith(b"/"):
            try:
                path = normalise_target(target.decode("latin-1"))  # as ReverseProxy.render does
            except UnsafeTarget:
                pass  # the general path answers 400
        if path is not None:
            route = self.proxy.routes.match(path, host.decode("latin-1") if host else None)
            status = self.proxy.status
            if (route is not None and not route.exclude and self.layer.caches(route, path)
                    and (status is None or not status.claims(path.partition("?")[0]))
                    and not any(rule.side == "response" for rule in route.protection.headers)):
                # (response header rules: AccelRequest applies them, on the prepared path)
                key = self.layer.key_for_parts(secure, host, path, route)
                found = (key, self.layer.policy_for(route), route.origin.key, route, route_label(route), url_bucket(key),
                         self.admission.guards(route))
        if len(self._targets) >= _MEMO_SIZE:
            self._targets.clear()
        self._targets[(secure, host, target)] = found
        return found


def _values(headers) -> Callable[[bytes], list[bytes]]:
    """The values of a request field by lower-case name, from the message's (name, value) pairs."""
    return lambda name: [value for field_name, value in headers if field_name.lower() == name]
