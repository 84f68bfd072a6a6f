"""The shared cache's decisions (RFC 9111, with RFC 5861, RFC 9110 §13, RFC 9211, RFC 9213).

Pure functions over ``Fields`` and explicit times (POSIX seconds); nothing here
reads the clock or performs I/O. The caller records ``request_time`` (when the
request was sent upstream) and ``response_time`` (when the response arrived).

Decisions, in the order a request meets them:
  storing      ``storable`` (§3) and ``fields_to_store`` (§3.1)
  freshness    ``freshness_lifetime`` (§4.2.1-§4.2.2) and ``current_age`` (§4.2.3)
  reuse        ``evaluate`` (§4, §5.2.1) → Fresh / StaleOk / Revalidate / Miss / OnlyIfCachedFail
  stale        ``stale_while_revalidate_allows`` / ``stale_if_error_allows`` (RFC 5861, §4.2.4)
  validation   ``select_for_freshening`` and ``freshen`` (§4.3.3-§4.3.4)
  clients      ``evaluate_conditionals`` and ``not_modified_fields`` (RFC 9110 §13.2, §15.4.5)
  invalidation ``invalidation_targets`` (§4.4)
  reporting    ``cache_status_value`` (RFC 9211)

POST responses are stored only as RFC 9110 §9.3.3 allows, for later GETs of their URI
(``storable_post``); §4.4's invalidation applies to POST first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Literal, Sequence
from urllib.parse import urljoin, urlsplit

from accel.http.headers import HOP_BY_HOP_NAMES, connection_options

from .directives import (
    MAX_STALE_ANY,
    CacheControl,
    effective_response_directives,
    parse_delta_seconds,
    request_cache_control,
)
from .fields import (
    EntityTag,
    Fields,
    get_all,
    get_list,
    get_one,
    parse_entity_tag,
    parse_entity_tags,
    replace,
    strong_match,
    weak_match,
    without,
)
from .httpdate import parse_http_date
from .key import DEFAULT_PORTS
from .vary import matches, stored_request_fields, vary_names

# --- tables --------------------------------------------------------------------------

UNDERSTOOD_STATUS = frozenset({200, 203, 204, 206, 300, 301, 302, 303, 304, 307, 308, 404, 405, 410, 414, 451, 501})
"""Status codes whose caching requirements this cache implements (§3, §5.2.2.3)."""

HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
"""RFC 9110 §15.1: status codes that may be given heuristic freshness (§4.2.2)."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""RFC 9110 §9.2.1. Methods are case-sensitive; every other method is treated as unsafe (§4.4)."""

STORED_METHODS = frozenset({"GET"})
"""Methods whose responses this cache stores (§3: "the request method is understood")."""

FRESHEN_EXCLUDED = frozenset({"content-length", "content-range", "content-encoding", "transfer-encoding"})
"""§3.2: framing and coding fields a 304 or HEAD response must not overwrite in the stored response."""

NOT_MODIFIED_FIELDS = (
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
)
"""RFC 9110 §15.4.5: fields a 304 carries (Last-Modified too, to guide caches without an ETag)."""

FWD_VALUES = frozenset({"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"})
"""RFC 9211 §2.2: why a request was forwarded."""


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Operator settings; the defaults follow RFC 9111 for a shared cache."""

    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    default_ttl: float | None = None
    max_ttl: float | None = None
    store_set_cookie: bool | Literal["keep"] = False
    targeted_fields: tuple[str, ...] = ("cdn-cache-control",)
    grace: float = 0.0


DEFAULT_POLICY = CachePolicy()


def response_directives(fields: Fields, policy: CachePolicy = DEFAULT_POLICY) -> tuple[CacheControl, str]:
    """The response directives this cache obeys and their source field (RFC 9213 §2.1)."""
    return effective_response_directives(fields, policy.targeted_fields)


# --- storing (§3) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a response may be stored, and a short reason (``"ok"`` or the rule that refused)."""

    ok: bool
    reason: str


def storable(
    method: str,
    status: int,
    request_fields: Fields,
    response_fields: Fields,
    policy: CachePolicy = DEFAULT_POLICY,
    *,
    complete: bool,
) -> Verdict:
    """§3: may a shared cache store this response as a whole object?

    Also: §3.3 an incomplete response is not stored; 206 and 304 are never stored as a
    whole object; §5.2.1.5 request no-store; §5.2.2.3 must-understand (which overrides
    no-store for an understood status); §3.5 Authorization; ``Vary: *`` never matches
    (§4.1) so is not stored; Set-Cookie only when ``policy.store_set_cookie`` (true: stored
    without it; ``"keep"``: stored with it, as §3 allows) or when a qualified no-cache/private
    names it (it is then removed by ``fields_to_store``).
    """
    if method not in STORED_METHODS:
        return Verdict(False, "method")
    cc, source = response_directives(response_fields, policy)
    if status < 200:
        return Verdict(False, "status-not-final")
    if status in (206, 304):
        return Verdict(False, "partial" if status == 206 else "not-modified")
    if cc.must_understand and status not in UNDERSTOOD_STATUS:
        return Verdict(False, "must-understand")
    if request_cache_control(request_fields).no_store:
        return Verdict(False, "request-no-store")
    if cc.no_store and not (cc.must_understand and status in UNDERSTOOD_STATUS):
        return Verdict(False, "no-store")
    if cc.private:
        return Verdict(False, "private")
    if get_all(request_fields, "authorization") and not (cc.must_revalidate or cc.public or cc.s_maxage is not None):
        return Verdict(False, "authorization")
    if not complete:
        return Verdict(False, "incomplete")
    if vary_names(response_fields) is None:
        return Verdict(False, "vary-star")
    stripped_by_directive = "set-cookie" in cc.no_cache_fields or "set-cookie" in cc.private_fields
    if get_all(response_fields, "set-cookie") and not (policy.store_set_cookie or stripped_by_directive):
        return Verdict(False, "set-cookie")
    explicit = (
        cc.public
        or cc.max_age is not None
        or cc.s_maxage is not None
        or (source == "cache-control" and bool(get_all(response_fields, "expires")))
    )
    if not explicit and status not in HEURISTICALLY_CACHEABLE:
        return Verdict(False, "no-explicit-freshness")
    if not _explicitly_fresh(response_fields, policy) and never_reusable(response_fields, cc, policy):
        return Verdict(False, "never-reusable")
    return Verdict(True, "ok")


def never_reusable(response_fields: Fields, cc: CacheControl, policy: CachePolicy) -> bool:
    """A response without explicit freshness that no request could ever reuse: no heuristic freshness
    (§4.2.2 needs Last-Modified, or the operator's ``default_ttl``), no validator to revalidate it with
    (§4.3.1: ETag, Last-Modified) and no stale-while-revalidate / stale-if-error window (RFC 5861).
    Storing it would only cost a disk write per request."""
    if policy.default_ttl or cc.stale_while_revalidate is not None or cc.stale_if_error is not None:
        return False
    return not (get_all(response_fields, "etag") or get_all(response_fields, "last-modified"))


def _explicitly_fresh(response_fields: Fields, policy: CachePolicy) -> bool:
    """§4.2.1: freshness given by s-maxage, max-age or (from Cache-Control, RFC 9213 §2.1) Expires."""
    cc, source = response_directives(response_fields, policy)
    expires = source == "cache-control" and bool(get_all(response_fields, "expires"))
    return cc.max_age is not None or cc.s_maxage is not None or expires


def _same_resource(a: str, b: str) -> bool:
    """Same scheme, host, port, path and query (an empty path is "/"); fragments never count."""
    pa, pb = urlsplit(a.partition("#")[0]), urlsplit(b.partition("#")[0])
    return _origin_of(a) == _origin_of(b) and (pa.path or "/", pa.query) == (pb.path or "/", pb.query)


def storable_post(
    status: int,
    effective_request_uri: str,
    request_fields: Fields,
    response_fields: Fields,
    policy: CachePolicy = DEFAULT_POLICY,
    *,
    complete: bool,
) -> Verdict:
    """RFC 9110 §9.3.3 with RFC 9111 §4: a POST response may be stored and reused for later GETs of the
    same URI when it has explicit freshness and a Content-Location equal to the POST's target URI;
    every other rule of ``storable`` applies as for a GET."""
    location = get_one(response_fields, "content-location")
    if not location or not _same_resource(urljoin(effective_request_uri, location.strip(" \t")), effective_request_uri):
        return Verdict(False, "method")
    if not _explicitly_fresh(response_fields, policy):
        return Verdict(False, "no-explicit-freshness")
    return storable("GET", status, request_fields, response_fields, policy, complete=complete)


def fields_to_store(response_fields: Fields, policy: CachePolicy = DEFAULT_POLICY) -> Fields:
    """§3.1: the response fields to keep with a stored response.

    Drops hop-by-hop fields and those nominated by Connection (RFC 9110 §7.6.1), fields
    named by qualified no-cache/private (§5.2.2.4, §5.2.2.7), Set-Cookie (unless
    ``policy.store_set_cookie`` is ``"keep"``: §3 lets a shared cache store it, and every
    reuse then replays it), and Age, which is recomputed on every reuse (§4.2.3; keep
    ``corrected_initial_age`` instead).
    """
    cc, _ = response_directives(response_fields, policy)
    drop = HOP_BY_HOP_NAMES | connection_options(get_all(response_fields, "connection")) | {"age"}
    if policy.store_set_cookie != "keep":
        drop |= {"set-cookie"}
    return without(response_fields, drop | set(cc.no_cache_fields) | set(cc.private_fields))


# --- freshness (§4.2) ----------------------------------------------------------------


def _date(fields: Fields, fallback: float) -> float:
    """§4.2.1/§4.2.3: the Date value, or ``fallback`` (the response time) when missing or invalid."""
    value = parse_http_date(get_one(fields, "date"), now=fallback)
    return fallback if value is None else value


def _expires_lifetime(fields: Fields, response_time: float) -> float | None:
    """§5.3: Expires − Date; invalid (e.g. "0") or conflicting Expires means already expired."""
    values = get_all(fields, "expires")
    if not values:
        return None
    if len(set(values)) > 1:
        return 0.0
    expires = parse_http_date(values[0], now=response_time)
    if expires is None:
        return 0.0
    return max(0.0, expires - _date(fields, response_time))


def freshness_lifetime(
    status: int, response_fields: Fields, policy: CachePolicy = DEFAULT_POLICY, *, response_time: float
) -> float:
    """§4.2.1: s-maxage, else max-age, else Expires − Date, else a heuristic, capped by ``max_ttl``.

    Expires is ignored when a targeted field supplies the directives (RFC 9213 §2.1).
    §4.2.2: without explicit freshness, and only for a heuristically cacheable status or
    a ``public`` response, ``default_ttl`` if set, else ``heuristic_fraction`` of
    (Date − Last-Modified) up to ``heuristic_max``; otherwise 0.
    """
    cc, source = response_directives(response_fields, policy)
    lifetime: float | None
    if cc.s_maxage is not None:
        lifetime = float(cc.s_maxage)
    elif cc.max_age is not None:
        lifetime = float(cc.max_age)
    elif source == "cache-control":
        lifetime = _expires_lifetime(response_fields, response_time)
    else:
        lifetime = None
    if lifetime is None:
        lifetime = _heuristic_lifetime(status, response_fields, cc, policy, response_time)
    if policy.max_ttl is not None:
        lifetime = min(lifetime, policy.max_ttl)
    return lifetime


def _heuristic_lifetime(
    status: int, fields: Fields, cc: CacheControl, policy: CachePolicy, response_time: float
) -> float:
    """§4.2.2 heuristic freshness (see ``freshness_lifetime``)."""
    if status not in HEURISTICALLY_CACHEABLE and not cc.public:
        return 0.0
    if policy.default_ttl is not None:
        return policy.default_ttl
    last_modified = parse_http_date(get_one(fields, "last-modified"), now=response_time)
    if last_modified is None:
        return 0.0
    interval = _date(fields, response_time) - last_modified
    return min(max(0.0, policy.heuristic_fraction * interval), policy.heuristic_max)


def _age_value(fields: Fields) -> int:
    """§5.1: the first Age value as delta-seconds; invalid or absent counts as 0."""
    members = get_list(fields, "age")
    return (parse_delta_seconds(members[0]) or 0) if members else 0


def corrected_initial_age(response_fields: Fields, request_time: float, response_time: float) -> float:
    """§4.2.3: corrected_initial_age = max(apparent_age, corrected_age_value).

    apparent_age = max(0, response_time − date_value);
    response_delay = response_time − request_time;
    corrected_age_value = age_value + response_delay.
    Use the fields as received (with Age), before ``fields_to_store``.
    """
    apparent_age = max(0.0, response_time - _date(response_fields, response_time))
    response_delay = response_time - request_time
    corrected_age_value = _age_value(response_fields) + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(response_fields: Fields, request_time: float, response_time: float, now: float) -> float:
    """§4.2.3: current_age = corrected_initial_age + resident_time; resident_time = now − response_time."""
    return corrected_initial_age(response_fields, request_time, response_time) + (now - response_time)


# --- reuse (§4, §5.2.1) --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredResponse:
    """What the caller knows of one stored response (one variant of a primary key).

    ``fields`` are the stored fields (``fields_to_store``), so Age is gone: ``initial_age``
    is ``corrected_initial_age`` computed from the fields as received. ``stale_marked``
    is set by soft purge / invalidation (§4.4): the response needs validation before reuse.
    """

    status: int
    fields: Fields
    request_time: float
    response_time: float
    initial_age: float
    vary_names: tuple[str, ...] | None
    secondary_key: str
    stale_marked: bool = False
    body_length: int | None = None

    def age(self, now: float) -> float:
        """§4.2.3: current_age = corrected_initial_age + (now − response_time)."""
        return self.initial_age + (now - self.response_time)

    def date(self) -> float:
        """Date of the response, or its response_time when it has none."""
        return _date(self.fields, self.response_time)


@dataclass(slots=True)  # (not frozen: one is made for every cache hit, and a frozen one costs a call per field)
class Fresh:
    """Serve ``stored``: it is fresh for ``ttl`` more seconds."""

    stored: StoredResponse
    age: float
    ttl: float


@dataclass(frozen=True, slots=True)
class Revalidate:
    """Forward with ``conditional_fields`` added (§4.3.1); ``stored_candidates[0]`` is the selected
    response, ``age``/``lifetime`` are its own (for ``stale_if_error_allows``), ``fwd`` the RFC 9211 reason.
    ``vary_fields`` replace the request's fields of the same names: §4.3.1, a conditional request
    carries the stored request's values of the fields the stored response's Vary names."""

    stored_candidates: tuple[StoredResponse, ...]
    conditional_fields: Fields
    age: float
    lifetime: float
    fwd: str
    vary_fields: Fields = ()


@dataclass(frozen=True, slots=True)
class StaleOk:
    """Serve stale ``stored`` (``reason`` "max-stale" or "stale-while-revalidate"); when
    ``revalidate`` is set, also perform that revalidation in the background (RFC 5861 §3)."""

    stored: StoredResponse
    age: float
    reason: str
    revalidate: Revalidate | None = None


@dataclass(frozen=True, slots=True)
class Miss:
    """Forward unconditionally; ``reason`` is the RFC 9211 ``fwd`` value."""

    reason: str


@dataclass(frozen=True, slots=True)
class OnlyIfCachedFail:
    """§5.2.1.7: the client sent only-if-cached and no stored response is usable: answer 504."""


Decision = Fresh | StaleOk | Revalidate | Miss | OnlyIfCachedFail


def most_recent_first(candidates: Sequence[StoredResponse]) -> list[StoredResponse]:
    """§4.1: the most recent response (by Date, then response time) first."""
    if len(candidates) < 2:
        return list(candidates)
    return sorted(candidates, key=lambda s: (s.date(), s.response_time), reverse=True)


def conditional_fields(candidates: Sequence[StoredResponse]) -> Fields:
    """§4.3.1: If-None-Match with every candidate's ETag; If-Modified-Since from the first one's Last-Modified."""
    tags: list[str] = []
    for candidate in candidates:
        tag = parse_entity_tag(get_one(candidate.fields, "etag") or "")
        if tag is not None and str(tag) not in tags:
            tags.append(str(tag))
    out: list[tuple[str, str]] = []
    if tags:
        out.append(("if-none-match", ", ".join(tags)))
    last_modified = get_one(candidates[0].fields, "last-modified") if candidates else None
    if last_modified is not None and parse_http_date(last_modified) is not None:
        out.append(("if-modified-since", last_modified))
    return tuple(out)


def _forbids_stale(cc: CacheControl) -> bool:
    """§4.2.4: must-revalidate, proxy-revalidate and s-maxage (shared cache, §5.2.2.10) and
    unqualified no-cache forbid serving stale without successful validation."""
    return cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None or cc.no_cache


@dataclass(frozen=True, slots=True)
class Freshness:
    """What ``evaluate`` needs of a stored response that neither the request nor the clock changes:
    its effective response directives and its freshness lifetime (§4.2.1) under one policy."""

    directives: CacheControl
    lifetime: float


def freshness(stored: StoredResponse, policy: CachePolicy = DEFAULT_POLICY) -> Freshness:
    """``Freshness`` of ``stored``: compute once per stored response and policy, reuse on every request."""
    cc, _ = response_directives(stored.fields, policy)
    lifetime = freshness_lifetime(stored.status, stored.fields, policy, response_time=stored.response_time)
    return Freshness(cc, lifetime)


def fresh_for_plain_request(stored: StoredResponse, known: Freshness, now: float) -> Fresh | None:
    """``evaluate``'s decision when it is ``Fresh``, for a plain request: a GET or HEAD without request
    cache directives (no Cache-Control, no Pragma) for which ``stored`` is the only stored response
    that matches (§4.1). ``known`` is ``freshness(stored, policy)``.

    None means the decision is something else (stale, no-cache, stale-marked): ask ``evaluate``.
    """
    if known.directives.no_cache or stored.stale_marked:  # §5.2.2.4 / §4.4: revalidate or serve stale
        return None
    age = stored.age(now)
    if known.lifetime > age:  # §4.2
        return Fresh(stored, age, known.lifetime - age)
    return None


def evaluate(
    method: str,
    request_fields: Fields,
    stored: Sequence[StoredResponse],
    policy: CachePolicy,
    now: float,
    known_freshness: Callable[[StoredResponse], Freshness] | None = None,
) -> Decision:
    """§4: how to answer a GET or HEAD from the stored responses for its primary key.

    HEAD is answered from stored GET responses. With §5.2.1.7 only-if-cached, every
    outcome that would contact the origin becomes ``OnlyIfCachedFail``.
    ``known_freshness`` may supply ``freshness(stored, policy)`` computed earlier.
    """
    decision = _evaluate(method, request_fields, stored, policy, now, known_freshness)
    if request_cache_control(request_fields).only_if_cached and isinstance(decision, (Miss, Revalidate)):
        return OnlyIfCachedFail()
    return decision


def _evaluate(
    method: str,
    request_fields: Fields,
    stored: Sequence[StoredResponse],
    policy: CachePolicy,
    now: float,
    known_freshness: Callable[[StoredResponse], Freshness] | None = None,
) -> Decision:
    if method not in ("GET", "HEAD"):
        return Miss("method")
    rcc = request_cache_control(request_fields)  # (parsed once per request: directives.py remembers it)
    if rcc.no_store:  # §5.2.1.5 only forbids storing; this cache also declines to reuse.
        return Miss("request")
    if not stored:
        return Miss("uri-miss")
    candidates = most_recent_first([s for s in stored if matches(s.vary_names, s.secondary_key, request_fields)])
    if not candidates:
        return Miss("vary-miss")
    selected = candidates[0]
    known = freshness(selected, policy) if known_freshness is None else known_freshness(selected)
    cc, lifetime = known.directives, known.lifetime
    age = selected.age(now)

    def revalidate(fwd: str) -> Revalidate:
        vary_fields = stored_request_fields(selected.vary_names, selected.secondary_key)
        return Revalidate(tuple(candidates), conditional_fields(candidates), age, lifetime, fwd, vary_fields)

    if rcc.no_cache:  # §5.2.1.4
        return revalidate("request")
    if cc.no_cache:  # §5.2.2.4
        return revalidate("stale")
    if rcc.max_age is not None and age > rcc.max_age:  # §5.2.1.1
        return revalidate("request")
    # §4.2: response_is_fresh = freshness_lifetime > current_age. A stale-marked (soft-purged or
    # invalidated, §4.4) response is never fresh, but the stale extensions below may still serve it.
    if lifetime > age and not selected.stale_marked:
        if rcc.min_fresh is not None and lifetime - age < rcc.min_fresh:  # §5.2.1.3
            return revalidate("request")
        return Fresh(selected, age, lifetime - age)
    if _forbids_stale(cc):
        return revalidate("stale")
    staleness = max(age - lifetime, 0.0)
    if rcc.max_stale == MAX_STALE_ANY or (rcc.max_stale is not None and staleness <= rcc.max_stale):  # §5.2.1.2
        return StaleOk(selected, age, "max-stale")
    if rcc.min_fresh is None and stale_while_revalidate_allows(selected, age, lifetime, policy):
        return StaleOk(selected, age, "stale-while-revalidate", revalidate("stale"))
    return revalidate("stale")


def without_client_revalidation(request_fields: Fields) -> Fields:
    """The request as if the client had not asked for revalidation: without Cache-Control and Pragma
    (``[cache] client_revalidate = "ignore"``, Varnish's default, and "conditional" within
    ``min_revalidate_interval`` of a validation). Both are operator choices that set §5.2.1.4 and
    §5.2.1.1 aside for clients; the default "conditional" still validates with the origin."""
    return tuple((n, v) for n, v in request_fields if n not in ("cache-control", "pragma"))


# --- serving stale (RFC 5861, §4.2.4) ------------------------------------------------


def stale_while_revalidate_allows(
    stored: StoredResponse, age: float, lifetime: float, policy: CachePolicy = DEFAULT_POLICY
) -> bool:
    """RFC 5861 §3: serve stale while revalidating, within the response's stale-while-revalidate
    window; never when §4.2.4 forbids stale. A stale-marked (soft-purged) response qualifies: soft
    purge keeps it for exactly this."""
    cc, _ = response_directives(stored.fields, policy)
    if _forbids_stale(cc) or cc.stale_while_revalidate is None:
        return False
    return age - lifetime <= cc.stale_while_revalidate


def stale_if_error_allows(
    stored: StoredResponse, age: float, lifetime: float, request_fields: Fields, policy: CachePolicy = DEFAULT_POLICY
) -> bool:
    """RFC 5861 §4: serve stale when the origin fails (5xx or unreachable) within the response's or
    the request's stale-if-error window, or ``policy.grace`` (the cache counts as disconnected,
    §4.2.4). Never when §4.2.4 forbids stale or the request has no-cache (§5.2.1.4).
    A stale-marked (soft-purged) response may be served: that is what soft purge keeps it for."""
    cc, _ = response_directives(stored.fields, policy)
    rcc = request_cache_control(request_fields)
    if _forbids_stale(cc) or rcc.no_cache:
        return False
    staleness = age - lifetime
    windows = [w for w in (cc.stale_if_error, rcc.stale_if_error) if w is not None] + [policy.grace]
    return any(staleness <= window for window in windows)


# --- validation (§4.3) ---------------------------------------------------------------


def select_for_freshening(candidates: Sequence[StoredResponse], response_304_fields: Fields) -> list[StoredResponse]:
    """§4.3.4: the stored responses a 304 updates, most recent first.

    A strong ETag selects every candidate with that strong ETag (none → nothing). Otherwise
    a weak ETag or a Last-Modified selects the most recent candidate matching it (weak
    comparison / equal dates). Without validators, a single candidate without validators.
    """
    ordered = most_recent_first(candidates)
    tag = parse_entity_tag(get_one(response_304_fields, "etag") or "")

    def etag_of(candidate: StoredResponse) -> EntityTag | None:
        return parse_entity_tag(get_one(candidate.fields, "etag") or "")

    if tag is not None and not tag.weak:
        return [c for c in ordered if strong_match(tag, etag_of(c))]
    if tag is not None:
        return [c for c in ordered if weak_match(tag, etag_of(c))][:1]
    last_modified = parse_http_date(get_one(response_304_fields, "last-modified"))
    if last_modified is not None:
        return [c for c in ordered if parse_http_date(get_one(c.fields, "last-modified")) == last_modified][:1]
    if len(ordered) == 1 and not get_all(ordered[0].fields, "etag") and not get_all(ordered[0].fields, "last-modified"):
        return ordered
    return []


def freshen(stored_fields: Fields, response_304_fields: Fields, policy: CachePolicy = DEFAULT_POLICY) -> Fields:
    """§4.3.4 with §3.2: replace stored fields by those the 304 carries.

    The 304's hop-by-hop and Connection-nominated fields, Age and the framing fields in
    ``FRESHEN_EXCLUDED`` are not taken; the result is filtered by ``fields_to_store`` so
    qualified no-cache/private in the new Cache-Control apply (and Set-Cookie goes unless kept). The caller then records the
    304's request/response times and ``corrected_initial_age`` of the 304's fields.
    """
    drop = HOP_BY_HOP_NAMES | connection_options(get_all(response_304_fields, "connection")) | FRESHEN_EXCLUDED | {"age"}
    update = without(response_304_fields, drop)
    merged = stored_fields
    for name in dict.fromkeys(name for name, _ in update):
        merged = replace(merged, name, get_all(update, name))
    return fields_to_store(merged, policy)


# --- clients' conditional requests (RFC 9110 §13.2.2) --------------------------------


def _etag_list_matches(value: str, current: str | None, *, weak: bool) -> bool:
    """``*`` or a member matching the current ETag (§13.1.1/§13.1.2); a stored response exists."""
    if value.strip(" \t") == "*":
        return True
    tag = parse_entity_tag(current) if current else None
    compare = weak_match if weak else strong_match
    return any(compare(candidate, tag) for candidate in parse_entity_tags(value))


def _single_date(fields: Fields, name: str) -> float | None:
    """§13.1.3/§13.1.4: a date precondition counts only with exactly one valid HTTP-date."""
    values = get_all(fields, name)
    return parse_http_date(values[0]) if len(values) == 1 else None


def evaluate_conditionals(method: str, request_fields: Fields, stored_fields: Fields) -> int | None:
    """RFC 9110 §13.2.2: 412, 304 or None (serve normally) for a response we are about to serve.

    Order: If-Match (strong) → 412; else If-Unmodified-Since → 412; If-None-Match (weak)
    → 304 for GET/HEAD; else If-Modified-Since → 304 for GET/HEAD. Date preconditions use
    Last-Modified, and for If-Modified-Since the Date when there is none (RFC 9111 §4.3.2).
    Note RFC 9111 §4.3.2 calls If-Match/If-Unmodified-Since "not applicable to a cache"; they
    are evaluated against the stored response here, which a stored representation answers.
    """
    etag = get_one(stored_fields, "etag")
    last_modified = parse_http_date(get_one(stored_fields, "last-modified"))
    if_match = get_one(request_fields, "if-match")
    if if_match is not None:
        if not _etag_list_matches(if_match, etag, weak=False):
            return 412
    else:
        since = _single_date(request_fields, "if-unmodified-since")
        if since is not None and last_modified is not None and last_modified > since:
            return 412
    if_none_match = get_one(request_fields, "if-none-match")
    if if_none_match is not None:
        if _etag_list_matches(if_none_match, etag, weak=True):
            return 304 if method in ("GET", "HEAD") else 412
        return None
    if method in ("GET", "HEAD"):
        since = _single_date(request_fields, "if-modified-since")
        modified = last_modified if last_modified is not None else parse_http_date(get_one(stored_fields, "date"))
        if since is not None and modified is not None and modified <= since:
            return 304
    return None


def not_modified_fields(stored_fields: Fields) -> Fields:
    """RFC 9110 §15.4.5: the stored fields a 304 carries (``NOT_MODIFIED_FIELDS``), in stored order."""
    return tuple((name, value) for name, value in stored_fields if name in NOT_MODIFIED_FIELDS)


# --- invalidation (§4.4) -------------------------------------------------------------


def _origin_of(uri: str) -> tuple[str, str, int | None]:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port if port is not None else DEFAULT_PORTS.get(scheme)


def invalidation_targets(method: str, status: int, effective_request_uri: str, response_fields: Fields) -> list[str]:
    """§4.4: URIs to invalidate after a non-error (2xx/3xx) response to an unsafe method.

    The target URI, plus Location and Content-Location (relative references resolved
    against the target URI) when they share its scheme, host and port. Fragments are dropped.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    target = effective_request_uri.partition("#")[0]
    targets = [target]
    for name in ("location", "content-location"):
        value = get_one(response_fields, name)
        if not value:
            continue
        uri = urljoin(target, value.strip(" \t")).partition("#")[0]
        if _origin_of(uri) == _origin_of(target) and uri not in targets:
            targets.append(uri)
    return targets


# --- reporting (RFC 9211) ------------------------------------------------------------

_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~:/0-9A-Za-z]*", re.ASCII)


def _sf_token_or_string(text: str) -> str:
    """RFC 8941 §4.1.7/§4.1.6: a token when it is one, else a String (printable ASCII only)."""
    if _SF_TOKEN.fullmatch(text):
        return text
    if any(not 0x20 <= ord(char) <= 0x7E for char in text):
        raise ValueError(f"not serialisable as a Structured Field string: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cache_status_value(
    cache_name: str,
    *,
    hit: bool,
    ttl: float | None = None,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
) -> str:
    """RFC 9211 §2: one Cache-Status list member, e.g. ``accel; hit; ttl=57`` or
    ``accel; fwd=uri-miss; fwd-status=200; stored``. ``ttl`` is floored (negative when stale)."""
    if hit and fwd is not None:
        raise ValueError("a hit is not forwarded (RFC 9211 §2.1/§2.2)")
    if fwd is not None and fwd not in FWD_VALUES:
        raise ValueError(f"unknown fwd value {fwd!r}")
    params = [_sf_token_or_string(cache_name)]
    if hit:
        params.append("hit")
    if fwd is not None:
        params.append(f"fwd={fwd}")
    if fwd_status is not None:
        params.append(f"fwd-status={int(fwd_status)}")
    if ttl is not None:
        params.append(f"ttl={math.floor(ttl)}")
    if stored:
        params.append("stored")
    if collapsed:
        params.append("collapsed")
    if detail is not None:
        params.append(f"detail={_sf_token_or_string(detail)}")
    return "; ".join(params)
