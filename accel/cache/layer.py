"""The cache in the request path: look up → decide → serve, revalidate, or fetch and store.

``CacheLayer`` is the request handler in front of the ``Forwarder``. Every decision is made by the pure
RFC 9111 code in ``accel.cache.policy``; this module only does the I/O those decisions ask for:

    handle ─┬─ not cacheable here (route rules) ──────────── forward (Cache-Status: fwd=bypass)
            ├─ unsafe method ─────────────────────────────── forward, then invalidate (§4.4)
            └─ GET/HEAD: evaluate(stored variants)
                 ├─ Fresh ─────────────────────────────────── serve from the store
                 ├─ StaleOk ───────────────────────────────── serve stale (+ background revalidation)
                 ├─ Revalidate ────────────────────────────── conditional fetch: 304 → freshen and serve,
                 │                                             error → stale-if-error, else as a miss
                 ├─ Miss ──────────────────────────────────── collapse onto an in-flight fetch, or fetch
                 │                                             and store while streaming to the client
                 └─ OnlyIfCachedFail ──────────────────────── 504

Writing a stored response to the client (conditionals, Range, HEAD, the prepared hit path) is
``accel.cache.serving``'s job. Storage calls are synchronous on the reactor thread: the LMDB operations they make take tens to hundreds
of microseconds (measured in ``accel.cache.store``), far less than a thread hand-off would cost per hit.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from accel.cache import partial, policy
from accel.cache.entry import EntryHead
from accel.cache.fields import Fields, get_all, get_one
from accel.cache.key import route_cache_key
from accel.cache.outage import Outages
from accel.cache.policy import CachePolicy, StoredResponse
from accel.cache.tiers import TieredStore
from accel.cache.vary import matches, secondary_key, servable_codings, vary_names
from accel.cache.collapse import Collapser
from accel.config import CacheSettings, Origin, Route, RouteCache, parse_origin
from accel.http.accesslog import request_label
from accel.http.body import ResponseRelay
from accel.proxy.admission import Refused
from accel.proxy.origin import Fetched
from accel.proxy.forwarding import Forwarder, answered_by, discard, expected_origin_failure, origin_failure
from accel.proxy.rewrite import ReverseMap, needs_reverse
from accel.proxy.routing import RouteTable
from accel.cache.serving import BODY_GONE, BodyGone, Responder, Variant, plain, request_fields, stored_response

log = Logger()

# The client's validators: on a storable miss accel fetches the whole response and answers them itself.
CLIENT_VALIDATORS = frozenset({b"if-none-match", b"if-modified-since"})
# Validator fields accel sends when it revalidates: the client's own are replaced.
ALL_VALIDATORS = CLIENT_VALIDATORS | {b"if-match", b"if-unmodified-since", b"if-range", b"range"}
RANGE_FIELDS = frozenset({b"range", b"if-range"})  # left out when a Range miss is fetched whole
TAG_FIELDS = ("surrogate-key", "cache-tag")
_MEMO_SIZE = 4096  # bound on the small per-process tables (key memo, hit-for-miss markers)


def as_pure(fields: list[tuple[bytes, bytes]]) -> Fields:
    return tuple([(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in fields])


def revalidation_fields(revalidate: policy.Revalidate) -> tuple[list[tuple[bytes, bytes]], frozenset]:
    """(fields to add, client fields to leave out) of a conditional request the cache generates (§4.3.1):
    its validators replace the client's, and the stored request's Vary-named fields replace the client's."""
    added = revalidate.conditional_fields + revalidate.vary_fields
    vary_named = frozenset(n.encode("latin-1") for n in revalidate.stored_candidates[0].vary_names or ())
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in added], ALL_VALIDATORS | vary_named


def tags_of(fields: Fields) -> tuple[str, ...]:
    """Purge tags from ``Surrogate-Key`` (space-separated) and ``Cache-Tag`` (comma-separated)."""
    tags: list[str] = []
    for name, value in fields:
        if name == "surrogate-key":
            tags.extend(value.split())
        elif name == "cache-tag":
            tags.extend(t.strip() for t in value.split(",") if t.strip())
    return tuple(dict.fromkeys(tags))


@dataclass
class Exchange:
    """One client request on its way through the cache."""

    request: object
    route: Route
    target: str
    key: str
    fields: Fields
    method: str
    policy: CachePolicy
    collapsed: bool = False
    leader: bool = False
    held: Fetched | None = None  # an origin response (and its connection slot) nobody has taken yet
    whole_for_range: bool = False  # a Range request fetched from the origin without its Range, to be stored
    has_range: bool = False  # the request has a Range field

    # A HEAD the route lets the cache fetch as GET, store, and answer as HEAD (nginx's default).
    head_as_get: bool = field(init=False, default=False)
    # The origin's answer to this request may be stored as a GET response.
    stores_whole: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.head_as_get = self.method == "HEAD" and self.route.cache.head_as_get
        self.stores_whole = self.method == "GET" or self.head_as_get


class CacheLayer:
    def __init__(
        self, forwarder: Forwarder, store: TieredStore, settings: CacheSettings, reactor, clock=time.time, name="accel",
        collapser=None, routes: RouteTable | None = None,
    ):
        self.forwarder = forwarder
        self.routes = routes or RouteTable(forwarder.config.routes)  # for the keys of URLs a response names
        self.store = store
        self.settings = settings
        self.reactor = reactor
        self.clock = clock
        self.name = name
        # A Collapser, or a SharedCollapser (same interface) when worker processes share the cache.
        self.collapser = collapser or Collapser(reactor, settings.collapse_timeout, settings.collapse_max_waiters)
        self.hit_for_miss: dict[str, float] = {}
        self.validated_at: dict[str, float] = {}  # when a client's reload last revalidated each object
        self.outages = Outages()
        self.revalidating: set[str] = set()
        self._policies: dict[RouteCache, CachePolicy] = {}
        self._policy_of: dict[int, tuple[RouteCache, CachePolicy]] = {}  # id(route.cache): the same, found faster
        self._keys: dict[tuple[bool, bytes, str], str] = {}  # key_for's results, for hot URLs
        self._origins: dict[str, Origin] = {}  # reverse_map's parsed EntryHead.reverse_origin values
        self._statuses: dict[tuple, bytes] = {}  # status's values without a ttl
        hidden = set()
        if not settings.forward_targeted_fields:
            hidden.update(settings.targeted_fields)
        if not settings.forward_tag_fields:
            hidden.update(TAG_FIELDS)
        self.hidden_fields = frozenset(hidden)
        self._hidden_raw = frozenset(name.encode("latin-1") for name in hidden)  # the same, as the origin's names
        self.responder = Responder(store, forwarder.errors, self.hidden_fields, name, lambda: self.clock())

    # -- the request path --------------------------------------------------------------------------------

    def handle(self, request, route: Route, target: str, collapsed: bool = False) -> None:
        """Answer ``request``; whatever fails on the way ends in ``crashed``, never in a hung client."""
        if request._disconnected:
            return
        exchange = None
        try:
            if not self.caches(route, target):
                request.log_cache = "bypass"
                request.responseHeaders.setRawHeaders(b"cache-status", [self.status(fwd="bypass")])
                self.forwarder.handle(request, route, target)
                return
            key = self.key_for(request, route, target)
            found = None
            if not collapsed and request.method in (b"GET", b"HEAD") and plain(request):
                found = self.store.lookup(key)
                served = self.responder.serve_plain(request, self.policy_for(route), found, route.compress) if found else False
                if served is True:
                    return
                if served is BODY_GONE:
                    found = None  # the memory tier dropped the URL: look again
            method = request.method.decode("latin-1")
            exchange = Exchange(
                request, route, target, key, request_fields(request), method, self.policy_for(route), collapsed,
                has_range=request.requestHeaders.hasHeader(b"range"),
            )
            exchange.whole_for_range = method == "GET" and exchange.has_range and self.range_fetch_max > 0
            if method not in ("GET", "HEAD"):
                self.forward_unsafe(exchange)
                return
            self.decide(exchange, self.store.lookup(key) if found is None else found)
        except Exception:
            self.crashed(request, exchange, Failure())

    def decide(self, exchange: Exchange, found) -> None:
        """Evaluate the stored variants for a GET or HEAD and act on the decision."""
        request = exchange.request
        variants = self.responder.variants(found, exchange.policy) if found else []
        now = self.clock()
        decision = policy.evaluate(
            exchange.method, exchange.fields, [v.stored for v in variants], exchange.policy, now,
            Responder.known_freshness(variants, exchange.policy) if variants else None,
        )
        if isinstance(decision, policy.Fresh):
            self.serve(exchange, _variant_for(variants, decision.stored), decision.age, self.status(hit=True, ttl=decision.ttl))
        elif isinstance(decision, policy.StaleOk):
            variant = _variant_for(variants, decision.stored)
            self.serve(exchange, variant, decision.age, self.status(hit=True, ttl=self.ttl(exchange, variant, decision.age)))
            if decision.revalidate is not None:
                self.revalidate_in_background(exchange, decision.revalidate)
        elif isinstance(decision, policy.Revalidate) and decision.fwd == "request":
            self.client_revalidation(exchange, decision, variants, now)
        elif isinstance(decision, policy.Revalidate):
            # Staleness is the same for every request: one conditional fetch serves them all.
            if self.served_while_resting(exchange, decision, variants, now):
                return
            if self.lead_or_wait(exchange):
                self.fetch(exchange, decision.fwd, revalidate=decision, variants=variants)
        elif isinstance(decision, policy.Miss) and exchange.has_range and self.serve_piece(exchange, variants, now):
            return
        elif isinstance(decision, policy.Miss):
            self.miss(exchange, decision.reason)
        else:
            request.log_cache = "miss"
            self.forwarder.errors.send(request, 504, "Not in the cache (only-if-cached).",
                                       {b"cache-status": self.status(detail="only-if-cached")})

    def client_revalidation(self, exchange: Exchange, decision: policy.Revalidate, variants, now: float) -> None:
        """A client's no-cache, max-age=0 or Pragma: no-cache (a reload), by ``[cache] client_revalidate``:
        ``honour`` forwards it as a full request; ``ignore`` answers as if the client had not asked;
        ``conditional`` revalidates with the origin (collapsed, at most once per ``min_revalidate_interval``
        per object) and answers from the store on 304."""
        mode = self.settings.client_revalidate
        if mode == "honour":
            self.fetch(exchange, "request")
            return
        recently = now - self.validated_at.get(exchange.key, float("-inf")) < self.settings.min_revalidate_interval
        if mode == "ignore" or recently:
            unasked = policy.evaluate(exchange.method, policy.without_client_revalidation(exchange.fields),
                                      [v.stored for v in variants], exchange.policy, now)
            if isinstance(unasked, policy.Fresh):
                detail = "client-revalidate-ignored" if mode == "ignore" else "revalidated-recently"
                self.serve(exchange, _variant_for(variants, unasked.stored), unasked.age,
                           self.status(hit=True, ttl=unasked.ttl, detail=detail))
                return
        if self.served_while_resting(exchange, decision, variants, now):
            return
        if self.lead_or_wait(exchange, client_driven=True):
            self.fetch(exchange, decision.fwd, revalidate=decision, variants=variants)

    def served_while_resting(self, exchange: Exchange, revalidate: policy.Revalidate, variants, now: float) -> bool:
        """While the origin rests after a failure (``accel.cache.outage``), stale content that may be served
        on error is served at once instead of asking the origin again."""
        return self.outages.resting(exchange.route.origin.key, now) and self.serve_stale_on_error(
            exchange, revalidate, variants, None
        )

    def crashed(self, request, exchange: Exchange | None, failure: Failure) -> None:
        """The end of every callback chain: log ``failure``, free what the exchange holds (the origin
        connection slot, the collapse key, so waiters look again at once) and answer the client."""
        if exchange is not None:
            self.stop_leading(exchange)
            held = self.take(exchange)
            if held is not None:
                try:
                    discard(held)
                except Exception:
                    log.failure("releasing the origin response of {request} failed", request=request_label(request))
        self.forwarder.crashed(request, failure)

    @staticmethod
    def take(exchange: Exchange) -> Fetched | None:
        """Hand the held origin response on: from here on its taker releases its slot."""
        held, exchange.held = exchange.held, None
        return held

    def miss(self, exchange: Exchange, reason: str) -> None:
        """Fetch for a miss, first joining an in-flight fetch of the same URL if there is one."""
        if self.lead_or_wait(exchange):
            self.fetch(exchange, reason)

    def lead_or_wait(self, exchange: Exchange, client_driven: bool = False) -> bool:
        """Collapsing: True when the caller fetches (it leads, or the request is not collapsible); False when
        it waits for the in-flight fetch of its URL and then looks again. A client-driven revalidation that
        waited is answered from what the leader brought, not sent again (``collapsed``)."""
        collapsible = (
            exchange.stores_whole
            and (not exchange.collapsed or client_driven)
            and (not exchange.has_range or exchange.whole_for_range)
            and self.hit_for_miss.get(exchange.key, 0) < self.clock()
        )
        if not collapsible:
            return True
        waiting = self.collapser.join(exchange.key)
        if waiting is None:
            exchange.leader = True
            return True
        self.forwarder.traffic.collapsed += 1
        waiting.addCallback(lambda _: self.handle(exchange.request, exchange.route, exchange.target, collapsed=True))
        return False

    def fetch(self, exchange: Exchange, fwd: str, revalidate: policy.Revalidate | None = None, variants=()) -> None:
        """Forward to the origin; store what may be stored while it streams to the client."""
        request = exchange.request
        storing = exchange.stores_whole and (not exchange.has_range or exchange.whole_for_range)
        extra, drop = [], frozenset()
        if revalidate is not None:
            extra, drop = revalidation_fields(revalidate)
        elif storing:
            drop = CLIENT_VALIDATORS
        if exchange.whole_for_range:
            drop = drop | RANGE_FIELDS
        accept_encoding = get_all(exchange.fields, "accept-encoding")
        if accept_encoding and not any(name == b"accept-encoding" for name, _ in extra):
            extra = [*extra, (b"accept-encoding", servable_codings(accept_encoding).encode("latin-1"))]
            drop = drop | {b"accept-encoding"}
        request_time = self.clock()
        self.forwarder.fetch(
            request, exchange.route, exchange.target, extra=extra, drop=drop, keep_going=lambda: self.others_wait(exchange),
            method=b"GET" if exchange.head_as_get else None,
            answered=lambda fetched: self.fetched(exchange, fwd, fetched, request_time, revalidate, variants, storing),
            failed=lambda failure: self.fetch_failed(exchange, failure, fwd, revalidate, variants),
            crashed=lambda failure: self.crashed(request, exchange, failure),
        )

    def fetched(self, exchange, fwd, fetched: Fetched, request_time, revalidate, variants, storing) -> None:
        exchange.held = fetched
        request, response = exchange.request, fetched.response
        response_time = self.clock()
        code = response.code
        fields, client_fields = self.origin_and_client_fields(exchange, fetched)
        if code >= 500:
            self.origin_failed(exchange, f"answered {code}")
        else:
            self.outages.answered(exchange.route.origin.key)
            if fwd == "request":
                self.remember_validation(exchange.key, response_time)
        if revalidate is not None and code == 304:
            discard(self.take(exchange))
            self.freshened(exchange, revalidate, variants, fields, request_time, response_time,
                           answered_by(exchange.route, fetched))
            return
        if revalidate is not None and code >= 500 and self.serve_stale_on_error(exchange, revalidate, variants, code):
            discard(self.take(exchange))
            self.stop_leading(exchange)
            return
        if exchange.method == "GET" and exchange.has_range and code == 206:
            self.relay_piece(exchange, fields, client_fields, request_time, response_time, fwd,
                             answered_by(exchange.route, fetched))
            return
        if exchange.whole_for_range and code == 200 and response.length is not UNKNOWN_LENGTH \
                and response.length > self.range_fetch_max:
            # Too big to fetch whole for a range: ask again with the client's Range, as before.
            discard(self.take(exchange))
            self.stop_leading(exchange)
            exchange.whole_for_range = False
            self.fetch(exchange, fwd)
            return
        verdict = policy.storable(
            "GET" if exchange.head_as_get else exchange.method, code, exchange.fields, fields, exchange.policy,
            complete=True,
        )
        too_big = response.length is not UNKNOWN_LENGTH and response.length > self.settings.max_object_size
        if not (storing and verdict.ok and not too_big):
            self.not_stored(exchange)
            self.relay(exchange, self.take(exchange), client_fields, self.status(fwd=fwd, fwd_status=code),
                       fetched_as_get=exchange.head_as_get)
            return
        head = self.new_head(exchange, code, response.phrase, fields, request_time, response_time,
                             answered_by(exchange.route, fetched))
        writer = self.entry_writer(head, response)
        if (request._disconnected or exchange.whole_for_range
                or policy.evaluate_conditionals(exchange.method, exchange.fields, writer.template.fields) is not None):
            # The client asked conditionally or for a range (or left, and others wait for this fetch): store
            # the whole response first, then answer it from the store.
            sink = BodySink(writer.write)
            sink.done.addCallback(lambda complete: self.stored_then_serve(exchange, writer, complete, fwd, code))
            sink.done.addBoth(lambda result: (fetched.release(), result)[1])
            sink.done.addErrback(lambda failure: self.crashed(request, exchange, failure))
            self.take(exchange)
            response.deliverBody(sink)
            return
        done = self.relay(exchange, self.take(exchange), client_fields,
                          self.status(fwd=fwd, fwd_status=code, stored=True), writer.write,
                          keep_going=lambda: self.others_wait(exchange), fetched_as_get=exchange.head_as_get).done
        done.addCallback(lambda complete: self.committed(exchange, writer.finish(complete)))
        done.addErrback(lambda failure: self.crashed(request, exchange, failure))

    # -- partial content (RFC 9111 §3.3-§3.4) ---------------------------------------------------------

    def relay_piece(self, exchange: Exchange, fields: Fields, client_fields, request_time, response_time, fwd,
                    answered: Origin) -> None:
        """Relay a 206; store it as a piece when §3.3 allows, and combine the pieces once they are whole."""
        response = exchange.held.response
        piece = partial.storable_piece(response.code, exchange.fields, fields, exchange.policy)
        too_big = response.length is not UNKNOWN_LENGTH and response.length > self.settings.max_object_size
        if piece is None or too_big:
            self.relay(exchange, self.take(exchange), client_fields, self.status(fwd=fwd, fwd_status=response.code))
            return
        head = self.new_head(exchange, response.code, response.phrase, fields, request_time, response_time, answered)
        head = replace(head, secondary_key=partial.piece_key(piece, head.secondary_key))
        writer = self.entry_writer(head, response)
        done = self.relay(exchange, self.take(exchange), client_fields,
                          self.status(fwd=fwd, fwd_status=response.code, stored=True), writer.write).done
        done.addCallback(lambda complete: self.combine_pieces(exchange, writer.finish(complete)))
        done.addErrback(lambda failure: self.crashed(exchange.request, exchange, failure))

    def serve_piece(self, exchange: Exchange, variants: list[Variant], now: float) -> bool:
        """§3.4: answer a Range request from a fresh stored piece that holds every byte it asks for."""
        if exchange.method != "GET":
            return False
        for variant in variants:
            split = partial.split_piece_key(variant.head.secondary_key)
            wanted = split and partial.covered_range(get_one(exchange.fields, "range"), split[0])
            if not wanted:
                continue
            piece, key = split
            stored = replace(variant.stored, secondary_key=key)  # §4.1: the piece's request's own Vary values
            decision = policy.evaluate("GET", exchange.fields, [stored], exchange.policy, now)
            if not isinstance(decision, policy.Fresh):
                continue
            status = self.collapsed(exchange, self.status(hit=True, ttl=decision.ttl))
            try:
                return self.responder.serve_piece(exchange.request, exchange.fields, variant, piece, wanted,
                                                  decision.age, status, self.reverse_map(exchange, variant.head))
            except BodyGone:
                return False
        return False

    def combine_pieces(self, exchange: Exchange, stored: EntryHead | None) -> None:
        """§3.4: once pieces with one strong validator cover the whole representation, store it whole
        (with the fields of the most recent piece, less Content-Range)."""
        if stored is None:
            return
        _, key = partial.split_piece_key(stored.secondary_key)
        pieces = []
        for variant in self.responder.variants(self.store.lookup(exchange.key), exchange.policy):
            split = partial.split_piece_key(variant.head.secondary_key)
            if split is not None and split[1] == key:
                pieces.append((split[0], variant))
        if not partial.complete_cover([(piece, partial.strong_validator(v.head.fields)) for piece, v in pieces]):
            return
        length = pieces[0][0].length
        if length > self.settings.max_object_size:
            return
        body = bytearray(length)
        for piece, variant in pieces:
            try:
                data = variant.body if variant.body is not None else b"".join(self.responder.open_body(variant.head))
            except BodyGone:
                return
            if len(data) != piece.last - piece.first + 1:
                return
            body[piece.first : piece.last + 1] = data
        newest = max((variant.head for _, variant in pieces), key=lambda head: head.response_time)
        whole = replace(newest, secondary_key=key, status=200, reason="OK",
                        fields=tuple((n, v) for n, v in newest.fields if n != "content-range"))
        writer = EntryWriter(self.store, whole, length, self.settings.max_object_size,
                             self.store.memory.max_object_size or 0, self.clock)
        writer.write(bytes(body))
        writer.finish(True)

    def relay(self, exchange: Exchange, fetched: Fetched, client_fields, cache_status: bytes, tee=None,
              keep_going=lambda: False, fetched_as_get: bool = False) -> ResponseRelay:
        request = exchange.request
        request.log_cache = "miss"
        hidden = self._hidden_raw
        shown = [(n, v) for n, v in client_fields if n.lower() not in hidden] if hidden else client_fields
        request.responseHeaders.setRawHeaders(b"cache-status", [self.collapsed(exchange, cache_status)])
        return self.forwarder.relay(request, exchange.route, fetched, tee=tee, fields=shown, keep_going=keep_going,
                                    fetched_as_get=fetched_as_get)

    def committed(self, exchange: Exchange, head: EntryHead | None) -> None:
        self.stop_leading(exchange)
        if head is not None:
            self.hit_for_miss.pop(exchange.key, None)

    def not_stored(self, exchange: Exchange) -> None:
        """A response that won't be stored: waiters go to the origin themselves, and the next burst
        of requests for this URL skips collapsing for a while (hit-for-miss)."""
        if exchange.leader:
            self.remember_hit_for_miss(exchange.key)
            self.stop_leading(exchange, storable=False)

    def others_wait(self, exchange: Exchange) -> bool:
        """Whether requests wait for this exchange's fetch: then it goes on when its own client leaves, and the
        waiters get what it stores."""
        return exchange.leader and self.collapser.has_waiters(exchange.key)

    def stop_leading(self, exchange: Exchange, storable: bool = True) -> None:
        """The leader's fetch is over: its waiters look the URL up again (those of other processes too, which
        skip collapsing for a while when the response was not ``storable``)."""
        if exchange.leader:
            exchange.leader = False
            self.collapser.release(exchange.key, storable)

    def remember_hit_for_miss(self, key: str) -> None:
        """Mark ``key`` as not worth collapsing for ``hit_for_miss_ttl``; the table stays bounded."""
        now = self.clock()
        if len(self.hit_for_miss) >= _MEMO_SIZE:
            self.hit_for_miss = {k: until for k, until in self.hit_for_miss.items() if until > now}
            while len(self.hit_for_miss) >= _MEMO_SIZE:
                del self.hit_for_miss[next(iter(self.hit_for_miss))]  # the oldest marker
        self.hit_for_miss[key] = now + self.settings.hit_for_miss_ttl

    def stored_then_serve(self, exchange: Exchange, writer: EntryWriter, complete: bool, fwd: str, code: int) -> None:
        head = writer.finish(complete)
        self.committed(exchange, head)
        if exchange.request._disconnected:
            return
        if head is None:
            cache_status = self.status(fwd=fwd, fwd_status=code, detail="response-incomplete")
            self.forwarder.errors.send(exchange.request, 502, "The origin's response broke off.",
                                       {b"cache-status": self.collapsed(exchange, cache_status)})
            return
        variant = Variant(head, writer.body(), stored_response(head))
        self.serve(exchange, variant, head.initial_age, self.status(fwd=fwd, fwd_status=code, stored=True))

    def fetch_failed(self, exchange: Exchange, failure, fwd: str, revalidate=None, variants=()) -> None:
        self.stop_leading(exchange)
        if exchange.request.finished:
            return  # answered already (a request body over max_body_size)
        refused = failure.check(Refused) is not None  # a rate limit: the answer is 429, not stale content
        if not refused:
            self.origin_failed(exchange, failure.getErrorMessage())
        if revalidate is not None and not refused and self.serve_stale_on_error(exchange, revalidate, variants, None):
            return
        exchange.request.log_cache = "miss"
        cache_status = self.collapsed(exchange, self.status(fwd=fwd, detail=origin_failure(failure)[1]))
        self.forwarder.fail(exchange.request, failure, {b"cache-status": cache_status})

    def serve_stale_on_error(self, exchange: Exchange, revalidate, variants, code: int | None) -> bool:
        """RFC 5861 §4 / grace: answer with the stale response when the origin fails, if allowed. ``code`` is
        the origin's 5xx, None when it did not answer (Cache-Status then has no fwd-status, RFC 9211 §2.3).
        A client's reload counts as no reload here unless ``client_revalidate = "honour"``."""
        stored = revalidate.stored_candidates[0]
        fields = exchange.fields
        if self.settings.client_revalidate != "honour":
            fields = policy.without_client_revalidation(fields)
        if not policy.stale_if_error_allows(stored, revalidate.age, revalidate.lifetime, fields, exchange.policy):
            return False
        if exchange.request._disconnected:
            return True
        variant = _variant_for(variants, stored)
        ttl = revalidate.lifetime - revalidate.age
        self.serve(exchange, variant, revalidate.age, self.status(fwd=revalidate.fwd, fwd_status=code, ttl=ttl),
                   log_as="stale")
        return True

    def origin_failed(self, exchange: Exchange, why: str) -> None:
        """Count a failure of the route's origin; warn about it at most once a minute."""
        origin = exchange.route.origin.key
        failures = self.outages.failed(origin, self.clock())
        if failures is not None:
            log.warn("origin {origin} is failing ({why}); {count} failure(s) since the last warning, stale content "
                     "is served where allowed", origin=origin, why=why, count=failures)

    def remember_validation(self, key: str, when: float) -> None:
        """A client's reload reached the origin for ``key``: reloads within ``min_revalidate_interval`` are
        answered from the store."""
        if len(self.validated_at) >= _MEMO_SIZE:
            self.validated_at.clear()
        self.validated_at[key] = when

    def freshened(self, exchange: Exchange, revalidate, variants, fields_304: Fields, request_time, response_time,
                  answered: Origin) -> None:
        """§4.3.4: a 304 updates the stored responses it selects; the request is then served from them."""
        updated = self.apply_304(revalidate, variants, fields_304, request_time, response_time, exchange.policy,
                                 answered)
        if not updated:
            # The 304 matched nothing we hold (§4.3.4): ask again without validators (still leading).
            self.fetch(exchange, "stale")
            return
        self.stop_leading(exchange)
        if exchange.request._disconnected:
            return
        chosen = next((v for v in updated if matches(v.head.vary_names, v.head.secondary_key, exchange.fields)), updated[0])
        self.serve(exchange, chosen, chosen.head.initial_age, self.status(fwd=revalidate.fwd, fwd_status=304))

    def apply_304(self, revalidate, variants, fields_304, request_time, response_time, route_policy,
                  answered: Origin) -> list[Variant]:
        """§4.3.4: freshen the stored responses a 304 (from ``answered``, with the origin's ``fields_304``)
        selects; returns them."""
        selected = policy.select_for_freshening(revalidate.stored_candidates, fields_304)
        initial_age = policy.corrected_initial_age(fields_304, request_time, response_time)
        updated = []
        for stored in selected:
            variant = _variant_for(variants, stored)
            fields = policy.freshen(variant.head.fields, fields_304, route_policy)
            head = replace(
                variant.head,
                fields=fields,
                reverse_origin=answered.url if needs_reverse(fields) else "",
                request_time=request_time,
                response_time=response_time,
                initial_age=initial_age,
                stale_marked=False,
            )
            self.store.freshen(head)
            updated.append(Variant(head, variant.body, stored_response(head)))
        return updated

    def revalidate_in_background(self, exchange: Exchange, revalidate: policy.Revalidate) -> None:
        """RFC 5861 §3: refresh a stale response served under stale-while-revalidate, one fetch per URL."""
        if exchange.key in self.revalidating:
            return
        self.revalidating.add(exchange.key)
        variants = self.responder.variants(self.store.lookup(exchange.key), exchange.policy)
        headers = self.forwarder.upstream_headers(exchange.request, exchange.route, *revalidation_fields(revalidate))
        request_time = self.clock()

        def fetched(fetched: Fetched):
            try:
                response_time = self.clock()
                fields = as_pure(self.forwarder.origin_fields(fetched))
                code = fetched.response.code
                verdict = policy.storable("GET", code, exchange.fields, fields, exchange.policy, complete=True)
                if code == 304 or not verdict.ok:
                    discard(fetched)
                    if code == 304:
                        self.apply_304(revalidate, variants, fields, request_time, response_time, exchange.policy,
                                       answered_by(exchange.route, fetched))
                    return None
                head = self.new_head(exchange, code, fetched.response.phrase, fields, request_time, response_time,
                                     answered_by(exchange.route, fetched))
                writer = self.entry_writer(head, fetched.response)
            except Exception:
                discard(fetched)
                raise
            sink = BodySink(writer.write)
            fetched.response.deliverBody(sink)
            return sink.done.addCallback(writer.finish).addBoth(lambda result: (fetched.release(), result)[1])

        d = self.forwarder.send(exchange.route, b"GET", exchange.target, headers)
        d.addCallback(fetched)
        d.addErrback(lambda failure: _background_failed(exchange.key, failure))
        d.addBoth(lambda _: self.revalidating.discard(exchange.key))

    def forward_unsafe(self, exchange: Exchange) -> None:
        """Forward an unsafe request; a non-error answer invalidates the URLs it names (§4.4). A POST
        response that RFC 9110 §9.3.3 lets answer later GETs of its URI is then stored for them."""
        request = exchange.request
        request_time = self.clock()

        def fetched_unsafe(fetched: Fetched):
            exchange.held = fetched
            response_time = self.clock()
            origin_fields, client_fields = self.origin_and_client_fields(exchange, fetched)
            fields = as_pure(client_fields)  # the URLs a response names, as its client sees them
            response = fetched.response
            code = response.code
            effective_uri = self.effective_uri(request, exchange.target)
            for uri in policy.invalidation_targets(exchange.method, code, effective_uri, fields):
                self.invalidate(self.key_for_uri(uri))
            storing = exchange.method == "POST" and policy.storable_post(
                code, effective_uri, exchange.fields, fields, exchange.policy, complete=True).ok
            if not storing or (response.length is not UNKNOWN_LENGTH and response.length > self.settings.max_object_size):
                self.relay(exchange, self.take(exchange), client_fields, self.status(fwd="method", fwd_status=code))
                return
            head = self.new_head(exchange, code, response.phrase, origin_fields, request_time, response_time,
                                 answered_by(exchange.route, fetched))
            writer = self.entry_writer(head, response)
            done = self.relay(exchange, self.take(exchange), client_fields,
                              self.status(fwd="method", fwd_status=code, stored=True), writer.write).done
            done.addCallback(lambda complete: writer.finish(complete))
            done.addErrback(lambda failure: self.crashed(request, exchange, failure))

        self.forwarder.fetch(request, exchange.route, exchange.target, answered=fetched_unsafe,
                             failed=lambda failure: self.fetch_failed(exchange, failure, "method"),
                             crashed=lambda failure: self.crashed(request, exchange, failure))

    def invalidate(self, key: str) -> None:
        if self.store.disk.variants(key):
            self.store.purge_url(key)

    # -- serving from the store ----------------------------------------------------------------------

    def serve(self, exchange: Exchange, variant: Variant, age: float, cache_status: bytes, log_as=None) -> None:
        try:
            self.responder.serve(
                exchange.request, exchange.method, exchange.fields, variant, age, self.collapsed(exchange, cache_status),
                log_as, exchange.route.compress, exchange.policy, self.reverse_map(exchange, variant.head),
            )
        except BodyGone:
            self.miss(exchange, "miss")  # evicted or replaced since it was looked up

    # -- helpers -------------------------------------------------------------------------------------

    def origin_and_client_fields(self, exchange: Exchange, fetched: Fetched) -> tuple[Fields, list]:
        """An origin response's fields as they are stored (URLs in the origin's space, rewritten for each
        client served: ``reverse_map``), and as this exchange's client gets them."""
        origin_fields = self.forwarder.origin_fields(fetched)
        public = self.forwarder.public_fields(exchange.request, exchange.route, fetched, origin_fields)
        return as_pure(origin_fields), public

    def reverse_map(self, exchange: Exchange, head: EntryHead) -> ReverseMap | None:
        """ProxyPassReverse of a stored response's fields for this exchange's client; None when it holds none."""
        if not head.reverse_origin:
            return None
        origin = self._origins.get(head.reverse_origin)
        if origin is None:
            if len(self._origins) >= _MEMO_SIZE:
                self._origins.clear()
            origin = self._origins[head.reverse_origin] = parse_origin(head.reverse_origin)
        return self.forwarder.reverse_map(exchange.request, exchange.route, origin)

    def new_head(self, exchange: Exchange, code: int, phrase: bytes, fields: Fields, request_time, response_time,
                 answered: Origin):
        """The head to store an origin response under (``fields``: the origin's, from ``answered``)."""
        names = vary_names(fields) or ()
        stored = policy.fields_to_store(fields, exchange.policy)
        return EntryHead(
            url=exchange.key,
            secondary_key=secondary_key(names, exchange.fields),
            vary_names=names,
            status=code,
            reason=phrase.decode("latin-1"),
            fields=stored,
            request_time=request_time,
            response_time=response_time,
            body_length=0,
            stored_at=response_time,
            tags=tags_of(fields),
            initial_age=policy.corrected_initial_age(fields, request_time, response_time),
            reverse_origin=answered.url if needs_reverse(stored) else "",
        )

    def entry_writer(self, head: EntryHead, response) -> EntryWriter:
        """A writer for ``response``'s body as the entry ``head`` (whose body_length is filled in at commit)."""
        return EntryWriter(
            self.store,
            head,
            expected=None if response.length is UNKNOWN_LENGTH else response.length,
            max_size=self.settings.max_object_size,
            keep_up_to=self.store.memory.max_object_size or 0,
            clock=self.clock,
        )

    @property
    def range_fetch_max(self) -> int:
        """The largest object a Range miss fetches whole (``[cache] range_fetch_max``, default max_object_size)."""
        limit = self.settings.range_fetch_max
        return self.settings.max_object_size if limit is None else min(limit, self.settings.max_object_size)

    def caches(self, route: Route, target: str) -> bool:
        """CacheEnable / CacheDisable: the route caches, and the path is not under a disabled prefix or pattern."""
        rules = route.cache
        if not rules.enabled:
            return False
        path = target.partition("?")[0]
        for rule in rules.disable:
            is_pattern = any(c in rule for c in "*?[")
            if fnmatch.fnmatchcase(path, rule) if is_pattern else path.startswith(rule):
                return False
        return True

    def policy_for(self, route: Route) -> CachePolicy:
        known = self._policy_of.get(id(route.cache))  # (by id first: a dataclass hashes every field, each time)
        if known is not None and known[0] is route.cache:
            return known[1]
        found = self._policies.get(route.cache)  # keyed by the small RouteCache: hashing a Route is slow
        if found is None:
            s = self.settings
            found = self._policies[route.cache] = CachePolicy(
                heuristic_fraction=s.heuristic_fraction,
                heuristic_max=s.heuristic_max,
                default_ttl=route.cache.default_ttl,
                max_ttl=route.cache.max_ttl,
                store_set_cookie=s.store_set_cookie,
                targeted_fields=s.targeted_fields,
                grace=s.grace,
            )
        self._policy_of[id(route.cache)] = (route.cache, found)
        return found

    def key_options(self) -> dict:
        return {"sort_query": self.settings.sort_query, "drop_params": self.settings.drop_params}

    def scheme(self, request) -> str:
        return self.scheme_for(request.isSecure())

    def scheme_for(self, secure: bool) -> str:
        return "http" if self.settings.share_schemes or not secure else "https"

    def key_for(self, request, route: Route, target: str) -> str:
        return self.key_for_parts(request.isSecure(), request.getHeader(b"host") or b"", target, route)

    def key_for_parts(self, secure: bool, host: bytes, target: str, route: Route) -> str:
        """The primary cache key of ``target`` on ``host``, served by ``route`` — the route ``self.routes`` gives
        them, so the memo is by (TLS, Host, target) — remembered for hot URLs (``accel.cache.key``)."""
        memo = (secure, host, target)
        key = self._keys.get(memo)
        if key is None:
            key = route_cache_key(self.scheme_for(secure), host.decode("latin-1"), target, route, **self.key_options())
            if len(self._keys) >= _MEMO_SIZE:
                self._keys.clear()
            self._keys[memo] = key
        return key

    def key_for_uri(self, uri: str) -> str:
        """The primary key of an absolute URI in the clients' URL space (one a response names, §4.4)."""
        parts = urlsplit(uri)
        host = parts.netloc.rpartition("@")[2]
        target = (parts.path or "/") + (f"?{parts.query}" if "?" in uri.partition("#")[0] else "")
        route = self.routes.match(target, host)
        return route_cache_key(self.scheme_for(parts.scheme.lower() == "https"), host, target, route,
                               **self.key_options())

    def effective_uri(self, request, target: str) -> str:
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        return f"{self.scheme(request)}://{host}{target}"

    def ttl(self, exchange: Exchange, variant: Variant, age: float) -> float:
        """Seconds of freshness left (negative once stale), for Cache-Status."""
        known = variant.freshness or policy.freshness(variant.stored, exchange.policy)
        return known.lifetime - age

    def status(self, **params) -> bytes:
        if "ttl" in params:  # (a hit's: nearly every value differs)
            return policy.cache_status_value(self.name, hit=params.pop("hit", False), **params).encode("ascii")
        key = tuple(params.items())  # a forwarded request's: a few values, each made once
        value = self._statuses.get(key)
        if value is None:
            if len(self._statuses) >= _MEMO_SIZE:
                self._statuses.clear()
            value = self._statuses[key] = policy.cache_status_value(
                self.name, hit=params.pop("hit", False), **params).encode("ascii")
        return value

    def collapsed(self, exchange: Exchange, value: bytes) -> bytes:
        return value + b"; collapsed" if exchange.collapsed and b"collapsed" not in value else value

    def close(self) -> None:
        self.collapser.release_all()


def _background_failed(key: str, failure: Failure) -> None:
    if expected_origin_failure(failure):  # (also every one in flight when accel stops)
        log.warn("background revalidation of {key} failed: {why}", key=key, why=failure.getErrorMessage())
    else:
        log.failure("background revalidation of {key} failed", failure=failure, key=key)


def _variant_for(variants: list[Variant], stored: StoredResponse) -> Variant:
    return next(v for v in variants if v.stored is stored)


class EntryWriter:
    """Tees a response body into the store; the entry is committed only when complete and of the right length.

    A body of known length is committed as its last bytes arrive, before the relay hands them to the client:
    a client that has the whole response finds it stored, whichever worker its next request reaches."""

    def __init__(self, store: TieredStore, template: EntryHead, expected, max_size: int, keep_up_to: int, clock):
        self.store = store
        self.template = template
        self.expected = expected
        self.max_size = max_size
        self.keep_up_to = keep_up_to
        self.clock = clock
        self.writer = store.begin(template.url, template.secondary_key)
        self.size = 0
        self.chunks: list[bytes] | None = []
        self.abandoned = False
        self.finished = False
        self.stored: EntryHead | None = None  # what finish committed

    def write(self, data: bytes) -> None:
        """Store a chunk; a store that fails gives up this entry, never the response streaming past."""
        if self.abandoned:
            return
        self.size += len(data)
        if self.size > self.max_size:
            self.abandon()
            return
        try:
            self.writer.write(data)
        except Exception:
            log.failure("storing {url} failed; it is relayed without being stored", url=self.template.url)
            self.abandon()
            return
        if self.chunks is not None:
            if self.size <= self.keep_up_to:
                self.chunks.append(data)
            else:
                self.chunks = None
        if self.size == self.expected:
            try:
                self.finish(True)
            except Exception:
                log.failure("storing {url} failed; it is relayed without being stored", url=self.template.url)

    def abandon(self) -> None:
        self.abandoned = True
        self.chunks = None
        try:
            self.writer.abort()
        except Exception:
            log.failure("discarding the partial entry of {url} failed", url=self.template.url)

    def finish(self, complete: bool) -> EntryHead | None:
        """Commit if the body is complete (§3.3); otherwise nothing becomes visible. Once finished (also by
        ``write``, at the expected length), it answers what it committed."""
        if self.finished:
            return self.stored
        self.finished = True
        if self.abandoned:
            return None
        if not complete:
            self.writer.abort()
            return None
        head = replace(self.template, body_length=self.size, stored_at=self.clock())
        self.stored = self.store.commit(self.writer, head, self.expected, body=self.body())
        return self.stored

    def body(self) -> bytes | None:
        return b"".join(self.chunks) if self.chunks is not None else None


class BodySink(Protocol):
    """Receives a response body nobody reads directly (it goes to the store); ``done`` fires with completeness."""

    def __init__(self, write):
        self.write = write
        self.done: Deferred[bool] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.write(data)

    def connectionLost(self, reason) -> None:
        self.done.callback(reason.check(ResponseDone, PotentialDataLoss) is not None)
