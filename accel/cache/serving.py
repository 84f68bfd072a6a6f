"""Answering requests from stored responses.

``Responder`` writes a stored response that the cache's decision allows to use: the client's
conditionals (RFC 9110 §13.2.2) answered with 304/412, Range (§14) with 206/416, HEAD without a body,
bodies from the memory tier or streamed from LMDB. Plain requests for a fresh response take the
prepared path: what serving a stored response needs that is fixed once it is stored (parsed directives,
freshness lifetime, the encoded header section) is kept beside it in the memory tier (``Prepared``), so
a hit only formats Age and Cache-Status.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from zope.interface import implementer

from accel.cache import policy
from accel.cache.entry import CorruptEntry, EntryHead
from accel.cache.fields import Fields, get_one
from accel.cache.httpdate import parse_http_date
from accel.cache.policy import CachePolicy, StoredResponse
from accel.cache.ranges import (
    IgnoreRange,
    Satisfiable,
    Unsatisfiable,
    content_range,
    if_range_allows,
    multipart_end,
    multipart_length,
    multipart_part_header,
    parse_range,
)
from accel.cache.tiers import TieredStore
from accel.cache.vary import matches
from accel.http.accesslog import request_label
from accel.config import Compress
from accel.http.compress import BROTLI_AVAILABLE, encode
from accel.http.encoding import IDENTITY, compressible, encoded_fields, negotiate, offered_codings
from accel.http.errors import ErrorPages
from accel.proxy.rewrite import ReverseMap, reverse_text_fields

log = Logger()

class BodyGone(Exception):
    """A stored head's body is no longer on disk (evicted, replaced or purged since the head was read)."""


# What ``Responder.serve_plain`` returns when the selected response's body has gone: nothing was written,
# the memory tier has dropped the URL, and the caller must look again.
BODY_GONE = "body-gone"

# Framing is accel's job when it serves from the store.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


def _canonical(names) -> frozenset:
    """Field names as twisted.web's Headers spells them (b"Cache-Control")."""
    headers = Headers()
    for name in names:
        headers.addRawHeader(name, b"")
    return frozenset(name for name, _ in headers.getAllRawHeaders())


# A GET or HEAD with none of these is "plain": no request cache directives (RFC 9111 §5.2.1, §5.4), no
# preconditions (RFC 9110 §13.1), no range (§14.2). A plain request for a fresh stored response that is the
# only one it selects is answered on the prepared path (Responder.serve_plain).
CONDITIONAL_FIELDS = frozenset({b"if-none-match", b"if-modified-since"})  # a fresh hit may answer them with 304
NOT_PLAIN_FIELDS = frozenset({b"cache-control", b"pragma", b"range", b"if-range", b"if-match",
                              b"if-unmodified-since"}) | CONDITIONAL_FIELDS
_NOT_PLAIN = _canonical(NOT_PLAIN_FIELDS)
# The fields write_head sets after the stored ones.
_SET_AFTER_STORED = _canonical([b"age", b"cache-status", b"content-length"])
_DATE = next(iter(_canonical([b"date"])))


def request_fields(request) -> Fields:
    """The client's header fields in the pure code's form (lower-case str names, str values)."""
    return tuple([
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ])


def stored_response(head: EntryHead) -> StoredResponse:
    return StoredResponse(
        status=head.status,
        fields=head.fields,
        request_time=head.request_time,
        response_time=head.response_time,
        initial_age=head.initial_age,
        vary_names=head.vary_names,
        secondary_key=head.secondary_key,
        stale_marked=head.stale_marked,
        body_length=head.body_length,
    )


@dataclass
class Variant:
    """One stored response as the lookup found it."""

    head: EntryHead
    body: bytes | None  # None: stream it from the disk tier
    stored: StoredResponse
    freshness: policy.Freshness | None = None  # prepared earlier, when it was
    prepared: Prepared | None = None


class Prepared:
    """What serving one stored response takes that is fixed once it is stored: kept in the memory tier's
    ``extra`` slot so that a hit does not parse or encode it again.

    ``fields`` is the header section ``write_head`` would produce for it, encoded (without Age,
    Cache-Status and Content-Length, which ``length`` holds); None when that cannot be encoded ahead
    (then the general path serves it). ``taken``: canonical names the encoded section sets;
    ``replaces_date``: the stored response has a Date, which replaces the request's own.
    ``codings``: the response in each content coding it has been asked for (``Responder.coded``): made
    once, on first demand, and kept here with it, so a compressed hit costs what any hit costs.
    """

    __slots__ = ("responder", "policy", "head", "stored", "freshness", "reason", "fields", "taken", "replaces_date",
                 "length_field", "length", "fast", "fast_304", "codings", "codings_for", "memory_charge")

    def __init__(self, responder: Responder, policy_: CachePolicy, head: EntryHead):
        self.responder = responder
        self.policy = policy_
        self.head = head
        self.stored = stored_response(head)
        self.freshness = policy.freshness(self.stored, policy_)
        self.reason = head.reason.encode("latin-1")
        self.length_field = b"Content-Length: %d\r\n" % head.body_length
        self.length = self.length_field + b"\r\n"
        self.fast = self.fast_304 = None  # the last 200 and 304 FastHit made of it (accel.cache.fast)
        self.codings: dict[str, tuple[Prepared, bytes | None] | None] = {}  # by coding, made for codings_for
        self.codings_for: Compress | None = None
        self.memory_charge = 0  # bytes of the compressed bodies in ``codings``: they count in the memory tier
        self.fields: bytes | None = None
        self.taken: frozenset = frozenset()
        self.replaces_date = any(name == "date" for name, _ in head.fields)
        encoded = encode_fields(head.fields, responder.hidden_fields)
        if encoded is None:
            return
        self.fields, names = encoded
        self.taken = (names | _SET_AFTER_STORED) - {_DATE} if self.replaces_date else names | _SET_AFTER_STORED


def encode_fields(fields: Fields, hidden: frozenset) -> tuple[bytes, frozenset] | None:
    """The field lines ``write_head`` adds for stored ``fields`` (not ``hidden``, no framing), encoded as
    twisted.web writes them, and their canonical names; None when a field cannot be encoded or is one
    ``write_head`` sets itself after the stored ones (then only the general path writes it right)."""
    headers = Headers()
    try:
        for name, value in fields:
            if name not in hidden and name not in _FRAMING:
                headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    except ValueError:  # not encodable as a field line
        return None
    names = frozenset(name for name, _ in headers.getAllRawHeaders())
    if names & _SET_AFTER_STORED:
        return None
    return b"".join(b"%s: %s\r\n" % (name, value) for name, values in headers.getAllRawHeaders() for value in values), names


class Responder:
    """Writes stored responses to clients (one per CacheLayer)."""

    def __init__(self, store: TieredStore, errors: ErrorPages, hidden_fields: frozenset, name: str, clock):
        self.store = store
        self.errors = errors
        self.hidden_fields = hidden_fields  # stored fields clients don't get (CDN-Cache-Control, tags...)
        self.clock = clock
        # Cache-Status of a fresh hit up to its ttl value, e.g. b"accel; hit; ttl=" (serve_plain)
        self.hit_ttl = (policy.cache_status_value(name, hit=True) + "; ttl=").encode("ascii")
        self._negotiated: dict[tuple[bytes | None, tuple[str, ...]], str] = {}

    # -- content codings (accel.http.encoding) ------------------------------------------------------------

    def coded(self, prepared: Prepared, body: bytes | None, compress: Compress, accept: bytes | None):
        """(Prepared, body) of the stored response in the coding ``accept`` (an Accept-Encoding value) asks
        for, made on first demand and kept in ``prepared.codings``; None when the route does not compress
        or the response is not compressible (then it goes out as it is). A body only on disk goes out in
        identity (with Vary): it is streamed, never held in memory to be compressed."""
        coding = self.negotiated(accept, offered_codings(compress, BROTLI_AVAILABLE)) if body is not None else IDENTITY
        if prepared.codings_for is not compress:  # another route's settings (or reloaded ones)
            prepared.codings, prepared.codings_for, prepared.memory_charge = {}, compress, 0
        codings = prepared.codings
        if coding in codings:
            return codings[coding]
        head = prepared.head
        found = None
        if compressible(compress, head.status, head.fields, head.body_length):
            coded_body = body if coding == IDENTITY else encode(coding, compress.level, body)
            fields = tuple((name.lower(), value) for name, value in encoded_fields(head.fields, coding))
            length = head.body_length if coded_body is None else len(coded_body)
            found = (Prepared(self, prepared.policy, replace(head, fields=fields, body_length=length)), coded_body)
        codings[coding] = found
        if found is not None and coding != IDENTITY:
            prepared.memory_charge += len(coded_body)
            self.store.set_extra(head, prepared)  # charged again, with the new body (and evictions if due)
        return found

    def negotiated(self, accept: bytes | None, offered: tuple[str, ...]) -> str:
        """``negotiate``, remembered: clients send few distinct Accept-Encoding values."""
        memo = (accept, offered)
        coding = self._negotiated.get(memo)
        if coding is None:
            coding = negotiate(None if accept is None else accept.decode("latin-1"), offered)
            if len(self._negotiated) >= 1024:
                self._negotiated.clear()
            self._negotiated[memo] = coding
        return coding

    def fresh_prepared(self, head: EntryHead, body: bytes | None, prepared, policy_: CachePolicy, compress: Compress,
                       accept_encoding: bytes | None):
        """The prepared path's decision on the one stored response a plain request selects (``head``, its body
        if in memory, its ``Prepared`` if made): (Prepared, body, ``policy.Fresh``) in the coding the request
        accepts, when it is fresh; None when the general path must decide. Shared by ``serve_plain`` and
        ``accel.cache.fast``."""
        if not self.prepared_for(prepared, head, policy_):
            prepared = Prepared(self, policy_, head)
            self.store.set_extra(head, prepared)
        if prepared.fields is None:
            return None
        fresh = policy.fresh_for_plain_request(prepared.stored, prepared.freshness, self.clock())
        if fresh is None:
            return None
        if compress.enabled:
            coded = self.coded(prepared, body, compress, accept_encoding)
            if coded is not None:
                prepared, body = coded
                if prepared.fields is None:
                    return None
        return prepared, body, fresh

    def serve_plain(self, request, policy_: CachePolicy, found, compress: Compress = Compress()) -> bool | str:
        """The prepared path for a plain request (see ``_NOT_PLAIN``) that selects one stored response:
        answer it if that response is fresh, with the header section encoded when it was first served.
        The decision is ``policy.fresh_for_plain_request``, i.e. ``evaluate``'s. Returns False, having
        written nothing, when the general path must decide (stale, no-cache, several variants match…),
        and ``BODY_GONE`` when the body to stream from disk is no longer there."""
        selected = None
        fields = None
        for entry in found:
            if entry[0].status == 206:
                continue  # a stored piece (§3.4) answers only the Range requests it covers
            names = entry[0].vary_names
            if names:
                if fields is None:
                    fields = request_fields(request)
                if not matches(names, entry[0].secondary_key, fields):
                    continue
            if selected is not None:
                return False  # most_recent_first decides between them
            selected = entry
        if selected is None or selected[0].reverse_origin:
            return False  # (fields ProxyPassReverse rewrites for each client: the general path writes them)
        head, body, prepared = selected
        answer = self.fresh_prepared(head, body, prepared, policy_, compress, request.getHeader(b"accept-encoding"))
        if answer is None:
            return False
        prepared, body, fresh = answer
        chunks = None
        if body is None and request.method != b"HEAD" and head.body_length:
            try:
                chunks = self.open_body(head)
            except BodyGone:
                return BODY_GONE
        section = b"%sAge: %d\r\nCache-Status: %s%d\r\n%s" % (
            prepared.fields, max(0, int(fresh.age)), self.hit_ttl, math.floor(fresh.ttl), prepared.length
        )
        request.log_cache = "hit"
        if body is None or not self.store.from_memory:
            request.log_tier = "disk"
        if not request.write_prepared(head.status, prepared.reason, section, prepared.taken,
                                      _DATE if prepared.replaces_date else None, body):
            request.log_cache = "-"
            return False
        if chunks is not None:
            DiskBodyProducer(request, chunks, [(0, head.body_length - 1)]).start()
        else:
            request.finish()
        return True

    def open_body(self, head: EntryHead) -> Iterator[bytes]:
        """The chunks of a body on disk, the first already read: a body that has gone raises ``BodyGone``
        before anything is written, and its URL leaves the memory tier (a hit on it becomes a miss)."""
        chunks = self.store.disk.iter_body(head)
        try:
            first = next(chunks)
        except (CorruptEntry, StopIteration):
            self.store.forget(head.url)
            log.info("stored body of {url} has gone; looking again", url=head.url)
            raise BodyGone(head.url) from None
        return itertools.chain((first,), chunks)

    def serve(self, request, method: str, fields: Fields, variant: Variant, age: float, cache_status: bytes,
              log_as: str | None = None, compress: Compress = Compress(), policy_: CachePolicy | None = None,
              public: ReverseMap | None = None) -> None:
        """Answer ``request`` (``method``, its ``fields``) from a stored response that may be used: its
        conditionals (RFC 9110 §13.2.2), Range (§14) and HEAD are answered here; a full 200 goes out in the
        client's coding when ``compress`` (the route's, whose cache rules are ``policy_``) allows. Raises
        ``BodyGone``, having written nothing, when the body to stream from disk is no longer there. The access
        log says ``log_as`` (default: hit or miss, by ``cache_status``). ``public`` rewrites the stored
        fields into this client's URL space (ProxyPassReverse), when the response holds such fields."""
        head = variant.head
        request.log_cache = log_as or ("hit" if cache_status.find(b"; hit") >= 0 else "miss")
        if variant.body is None or not self.store.from_memory:
            request.log_tier = "disk"
        condition = policy.evaluate_conditionals(method, fields, head.fields)
        if condition == 304:
            self.write_head(request, 304, b"Not Modified", policy.not_modified_fields(head.fields), age, cache_status,
                            public=public)
            request.finish()
            return
        if condition == 412:
            self.errors.send(request, 412)
            return
        ranges = self.ranges_for(method, fields, head)
        if isinstance(ranges, Unsatisfiable):
            self.write_head(request, 416, b"Range Not Satisfiable", _without(head.fields, ("content-type",)), age,
                            cache_status, {b"content-range": ranges.content_range.encode(), b"content-length": b"0"},
                            public)
            request.finish()
            return
        chunks = None
        if variant.body is None and method == "GET" and head.body_length:
            chunks = self.open_body(head)
        if isinstance(ranges, Satisfiable):
            self.serve_ranges(request, variant, ranges.ranges, age, cache_status, chunks, public)
            return
        if compress.enabled and policy_ is not None and head.status == 200 and get_one(fields, "range") is None:
            coded = self.coded_variant(request, variant, compress, policy_)
            if coded is not None:
                variant = coded
                head = coded.head
        self.write_head(request, head.status, head.reason.encode("latin-1"), head.fields, age, cache_status,
                        {b"content-length": b"%d" % head.body_length}, public)
        self.write_body(request, variant, [(0, head.body_length - 1)] if head.body_length else [], chunks)

    def coded_variant(self, request, variant: Variant, compress: Compress, policy_: CachePolicy) -> Variant | None:
        """``coded`` for the general path: the variant in the client's coding, None for as it is."""
        prepared = variant.prepared
        if prepared is None:  # not prepared yet: prepared now, and kept when the memory tier holds it
            prepared = Prepared(self, policy_, variant.head)
            self.store.set_extra(variant.head, prepared)
        coded = self.coded(prepared, variant.body, compress, request.getHeader(b"accept-encoding"))
        if coded is None:
            return None
        coded_prepared, body = coded
        return Variant(coded_prepared.head, body, variant.stored, variant.freshness, coded_prepared)

    def ranges_for(self, method: str, fields: Fields, head: EntryHead):
        """RFC 9110 §14.2: Range is honoured for GET of a stored 200, subject to If-Range (§13.1.5)."""
        value = get_one(fields, "range")
        if method != "GET" or head.status != 200 or value is None:
            return IgnoreRange("absent")
        if not if_range_allows(
            get_one(fields, "if-range"),
            get_one(head.fields, "etag"),
            parse_http_date(get_one(head.fields, "last-modified")),
            parse_http_date(get_one(head.fields, "date")),
        ):
            return IgnoreRange("if-range")
        return parse_range(value, head.body_length)

    def serve_ranges(self, request, variant: Variant, ranges, age: float, cache_status: bytes, chunks,
                     public: ReverseMap | None = None) -> None:
        head = variant.head
        length = head.body_length
        if len(ranges) == 1:
            first, last = ranges[0]
            self.write_head(request, 206, b"Partial Content", head.fields, age, cache_status, {
                b"content-range": content_range(first, last, length).encode(),
                b"content-length": b"%d" % (last - first + 1),
            }, public)
            self.write_body(request, variant, [(first, last)], chunks)
            return
        boundary = f"accel-{head.body_id.hex()[:16]}-{len(ranges)}"
        content_type = get_one(head.fields, "content-type")
        fields = _without(head.fields, ("content-type",))
        self.write_head(request, 206, b"Partial Content", fields, age, cache_status, {
            b"content-type": f"multipart/byteranges; boundary={boundary}".encode(),
            b"content-length": b"%d" % multipart_length(boundary, content_type, ranges, length),
        }, public)
        pieces = []
        for first, last in ranges:
            pieces.append(multipart_part_header(boundary, content_type, first, last, length))
            pieces.append((first, last))
        pieces.append(multipart_end(boundary))
        self.write_body(request, variant, pieces, chunks)

    def serve_piece(self, request, fields: Fields, variant: Variant, piece, wanted: tuple[int, int], age: float,
                    cache_status: bytes, public: ReverseMap | None = None) -> bool:
        """Answer a Range request with bytes ``wanted`` of a stored piece (RFC 9111 §3.4) with 206, when the
        request's preconditions (RFC 9110 §13.2.2) and If-Range (§13.1.5) let it; False, having written
        nothing, when they do not. Raises ``BodyGone`` and takes ``public`` like ``serve``."""
        head = variant.head
        if policy.evaluate_conditionals("GET", fields, head.fields) is not None or not if_range_allows(
            get_one(fields, "if-range"), get_one(head.fields, "etag"),
            parse_http_date(get_one(head.fields, "last-modified")), parse_http_date(get_one(head.fields, "date")),
        ):
            return False
        chunks = self.open_body(head) if variant.body is None else None
        first, last = wanted
        request.log_cache = "hit"
        if variant.body is None or not self.store.from_memory:
            request.log_tier = "disk"
        self.write_head(request, 206, b"Partial Content", _without(head.fields, ("content-range",)), age, cache_status, {
            b"content-range": content_range(first, last, piece.length).encode(),
            b"content-length": b"%d" % (last - first + 1),
        }, public)
        self.write_body(request, variant, [(first - piece.first, last - piece.first)], chunks)
        return True

    def write_head(self, request, code: int, reason: bytes, fields: Fields, age: float, cache_status: bytes, extra=None,
                   public: ReverseMap | None = None):
        request.setResponseCode(code, reason)
        if public is not None:
            fields = reverse_text_fields(fields, public)
        headers = request.responseHeaders
        if any(name == "date" for name, _ in fields):
            headers.removeHeader(b"date")
        for name, value in fields:
            if name not in self.hidden_fields and name not in _FRAMING:
                headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        headers.setRawHeaders(b"age", [b"%d" % max(0, int(age))])
        headers.setRawHeaders(b"cache-status", [cache_status])
        for name, value in (extra or {}).items():
            headers.setRawHeaders(name, [value])

    def write_body(self, request, variant: Variant, pieces, chunks: Iterator[bytes] | None) -> None:
        """Write byte ranges of the body (and literal byte strings between them), then finish; the body
        is ``variant.body``, or the ``chunks`` from ``open_body``."""
        if request.method == b"HEAD":
            request.finish()
            return
        if variant.body is not None:
            body = memoryview(variant.body)
            for piece in pieces:
                request.write(piece if isinstance(piece, bytes) else bytes(body[piece[0] : piece[1] + 1]))
            request.finish()
            return
        DiskBodyProducer(request, chunks, pieces).start()

    # -- the store's variants, with what was prepared for them ------------------------------------------

    def variants(self, found, policy_: CachePolicy) -> list[Variant]:
        """``lookup``'s result from the store's own (head, body, extra): what was prepared is reused."""
        variants = []
        for head, body, extra in found:
            if self.prepared_for(extra, head, policy_):
                variants.append(Variant(head, body, extra.stored, extra.freshness, extra))
            else:
                variants.append(Variant(head, body, stored_response(head)))
        return variants

    @staticmethod
    def known_freshness(variants: list[Variant], policy_: CachePolicy):
        """For ``policy.evaluate``: the prepared Freshness of these variants, if any was prepared."""
        table = {id(v.stored): v.freshness for v in variants if v.freshness is not None}
        if not table:
            return None

        def known(stored: StoredResponse) -> policy.Freshness:
            found = table.get(id(stored))
            return found if found is not None else policy.freshness(stored, policy_)

        return known

    def prepared_for(self, extra, head: EntryHead, policy_: CachePolicy) -> bool:
        """Whether ``extra`` is this responder's Prepared of exactly ``head`` under ``policy_``."""
        return (
            type(extra) is Prepared and extra.head is head and extra.responder is self and extra.policy is policy_
        )


def plain(request) -> bool:
    """No request field named in ``_NOT_PLAIN``: the prepared path may answer it."""
    for name, _ in request.requestHeaders.getAllRawHeaders():
        if name in _NOT_PLAIN:
            return False
    return True


def _without(fields: Fields, names) -> Fields:
    return tuple((n, v) for n, v in fields if n not in names)


@implementer(IPullProducer)
class DiskBodyProducer:
    """Streams a stored body from the disk tier to the client, one piece each time the transport wants more."""

    def __init__(self, request, chunks, pieces):
        self.request = request
        self.pieces = _pieces(chunks, pieces)

    def start(self) -> None:
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        try:
            piece = next(self.pieces)
        except StopIteration:
            self.request.unregisterProducer()
            self.request.finish()
            return
        except Exception:
            log.failure("stored body unreadable for {request}", request=request_label(self.request))
            self.request.unregisterProducer()
            self.request.close_incomplete()
            return
        self.request.write(piece)

    def stopProducing(self) -> None:
        self.pieces = iter(())


def _pieces(chunks, pieces):
    """The bytes of ``pieces`` — literal byte strings, or inclusive (first, last) ranges of the body in
    ascending order — cut from the body's ``chunks`` in one pass."""
    chunks = iter(chunks)
    offset, current = 0, b""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
            continue
        first, last = piece
        while first <= last:
            while offset + len(current) <= first:
                offset += len(current)
                current = next(chunks, None)
                if current is None:
                    raise CorruptEntry("stored body is shorter than its head says")
            end = min(last - offset + 1, len(current))
            yield current[first - offset : end]
            first = offset + end
