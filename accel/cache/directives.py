"""Cache directives: what Cache-Control, Pragma and targeted fields say (RFC 9111 §5.2, §5.4; RFC 9213).

Parsing never fails. Where the directives are malformed or contradict each
other, this module resolves them towards the most restrictive reading
(RFC 9111 §4.2.1): a response's invalid or conflicting max-age/s-maxage means
"stale" (0), an extension that would allow serving stale content is ignored
when invalid and takes its smallest value when repeated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Literal

from .fields import Fields, get_all, split_list, unquote

DELTA_SECONDS_MAX = 2147483648
"""RFC 9111 §1.2.2: a delta-seconds value too large to represent is taken as 2^31."""

MAX_STALE_ANY: Literal["any"] = "any"
"""A request ``max-stale`` without a value: any staleness is acceptable (§5.2.1.2)."""

Directive = tuple[str, "str | None"]
"""One directive: lower-case name and its argument (quoted-string already unquoted) or None."""

_DISTINCT_VALUES_REMEMBERED = 1024
"""Parsed directives are remembered by field value: origins and clients send a few values over and over,
and the results are immutable."""


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Response directives (RFC 9111 §5.2.2, RFC 5861, RFC 8246) after conflict resolution."""

    max_age: int | None = None
    s_maxage: int | None = None
    no_cache: bool = False
    no_cache_fields: tuple[str, ...] = ()
    private: bool = False
    private_fields: tuple[str, ...] = ()
    no_store: bool = False
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    no_transform: bool = False
    immutable: bool = False
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None


@dataclass(frozen=True, slots=True)
class RequestCacheControl:
    """Request directives (RFC 9111 §5.2.1, RFC 5861 §4) after conflict resolution."""

    max_age: int | None = None
    max_stale: int | Literal["any"] | None = None
    min_fresh: int | None = None
    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    stale_if_error: int | None = None


def parse_delta_seconds(text: str | None) -> int | None:
    """``delta-seconds = 1*DIGIT`` (§1.2.2), clamped to 2^31; None when invalid."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text) > len(str(DELTA_SECONDS_MAX)):
        return DELTA_SECONDS_MAX
    return min(int(text), DELTA_SECONDS_MAX)


def parse_directives(values: Iterable[str]) -> list[Directive]:
    """``#( token [ "=" ( token / quoted-string ) ] )`` over all field lines (§5.2).

    Names are case-insensitive and returned lower-cased; members without a name are dropped.
    """
    directives: list[Directive] = []
    for value in values:
        for member in split_list(value):
            name, sep, argument = member.partition("=")
            name = name.strip(" \t").lower()
            if name:
                directives.append((name, unquote(argument.strip(" \t")) if sep else None))
    return directives


def _arguments(directives: list[Directive], name: str) -> list[str | None]:
    return [argument for key, argument in directives if key == name]


def _response_duration(arguments: list[str | None]) -> int | None:
    """§4.2.1: an invalid or conflicting max-age/s-maxage makes the response stale (0)."""
    if not arguments:
        return None
    parsed = {parse_delta_seconds(argument) for argument in arguments}
    if None in parsed or len(parsed) > 1:
        return 0
    return parsed.pop()


def _smallest_valid(arguments: list[str | None]) -> int | None:
    """Most restrictive valid value of a directive that grants something; invalid ones are ignored."""
    valid = [d for d in map(parse_delta_seconds, arguments) if d is not None]
    return min(valid) if valid else None


def _qualified(arguments: list[str | None]) -> tuple[bool, tuple[str, ...]]:
    """§5.2.2.4/§5.2.2.7: (unqualified present, field names of qualified forms).

    An empty field-name list counts as the unqualified (more restrictive) form.
    """
    unqualified = False
    names: list[str] = []
    for argument in arguments:
        members = split_list(argument) if argument is not None else []
        if not members:
            unqualified = True
        names.extend(member.lower() for member in members if member.lower() not in names)
    return unqualified, tuple(names)


def response_cache_control(directives: list[Directive]) -> CacheControl:
    """Build response directives (§5.2.2) from parsed ``directives``."""
    present = {name for name, _ in directives}
    no_cache, no_cache_fields = _qualified(_arguments(directives, "no-cache"))
    private, private_fields = _qualified(_arguments(directives, "private"))
    return CacheControl(
        max_age=_response_duration(_arguments(directives, "max-age")),
        s_maxage=_response_duration(_arguments(directives, "s-maxage")),
        no_cache=no_cache,
        no_cache_fields=no_cache_fields,
        private=private,
        private_fields=private_fields,
        no_store="no-store" in present,
        public="public" in present,
        must_revalidate="must-revalidate" in present,
        proxy_revalidate="proxy-revalidate" in present,
        must_understand="must-understand" in present,
        no_transform="no-transform" in present,
        immutable="immutable" in present,
        stale_while_revalidate=_smallest_valid(_arguments(directives, "stale-while-revalidate")),
        stale_if_error=_smallest_valid(_arguments(directives, "stale-if-error")),
    )


def parse_cache_control(values: Iterable[str]) -> CacheControl:
    """Response ``Cache-Control`` field lines → ``CacheControl`` (§5.2.2)."""
    return _parsed_cache_control(tuple(values))


@lru_cache(maxsize=_DISTINCT_VALUES_REMEMBERED)
def _parsed_cache_control(lines: tuple[str, ...]) -> CacheControl:
    return response_cache_control(parse_directives(lines))


def _request_max_stale(arguments: list[str | None]) -> int | Literal["any"] | None:
    """§5.2.1.2: no value = any staleness; an invalid value grants nothing; repeats → smallest."""
    if not arguments:
        return None
    if all(argument is None for argument in arguments):
        return MAX_STALE_ANY
    return _smallest_valid([argument for argument in arguments if argument is not None])


def request_cache_control(fields: Fields) -> RequestCacheControl:
    """Request directives (§5.2.1); ``Pragma: no-cache`` is no-cache only without Cache-Control (§5.4).

    A request's fields are asked several times (evaluate, then storable when the response arrives): the
    answers for the fields of the last requests are kept, by identity (a tuple is immutable)."""
    known = _recent_requests.get(id(fields))
    if known is not None and known[0] is fields:
        return known[1]
    lines = tuple(get_all(fields, "cache-control"))
    answer = _parsed_request_directives(lines, () if lines else tuple(get_all(fields, "pragma")))
    if type(fields) is tuple:  # (a list could change before the next question)
        if len(_recent_requests) >= _RECENT_REQUESTS:
            _recent_requests.clear()
        _recent_requests[id(fields)] = (fields, answer)  # (holding the tuple keeps its id its own)
    return answer


_RECENT_REQUESTS = 256  # about the requests in flight at once
_recent_requests: dict[int, tuple[Fields, RequestCacheControl]] = {}


@lru_cache(maxsize=_DISTINCT_VALUES_REMEMBERED)
def _parsed_request_directives(lines: tuple[str, ...], pragma: tuple[str, ...]) -> RequestCacheControl:
    """``request_cache_control`` of these Cache-Control lines and (only read without them) Pragma lines."""
    directives = parse_directives(lines)
    present = {name for name, _ in directives}
    max_age_arguments = _arguments(directives, "max-age")
    max_age = None
    if max_age_arguments:
        # An invalid request max-age asks for the most restrictive reading: a response of age 0.
        max_age = min(parse_delta_seconds(argument) or 0 for argument in max_age_arguments)
    min_fresh = [d for d in map(parse_delta_seconds, _arguments(directives, "min-fresh")) if d is not None]
    pragma_no_cache = not lines and "no-cache" in (m.lower() for value in pragma for m in split_list(value))
    return RequestCacheControl(
        max_age=max_age,
        max_stale=_request_max_stale(_arguments(directives, "max-stale")),
        min_fresh=max(min_fresh) if min_fresh else None,
        no_cache="no-cache" in present or pragma_no_cache,
        no_store="no-store" in present,
        only_if_cached="only-if-cached" in present,
        stale_if_error=_smallest_valid(_arguments(directives, "stale-if-error")),
    )


# --- targeted fields (RFC 9213) ------------------------------------------------------

_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
_SF_BARE_ITEM = (
    r'-?\d{1,15}(?:\.\d{1,3})?'  # integer / decimal
    r'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'  # string
    r"|[A-Za-z*][!#$%&'*+\-.^_`|~:/0-9A-Za-z]*"  # token
    r"|\?[01]"  # boolean
    r"|:[A-Za-z0-9+/=]*:"  # byte sequence
)
_SF_MEMBER = re.compile(
    rf"(?P<key>{_SF_KEY})(?:=(?P<value>{_SF_BARE_ITEM}))?(?:;[ ]*{_SF_KEY}(?:=(?:{_SF_BARE_ITEM}))?)*",
    re.ASCII,
)
_SF_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")
_SF_INTEGER = re.compile(r"-?\d{1,15}", re.ASCII)

TARGETED_VALUE_TYPES: dict[str, re.Pattern[str]] = {
    "max-age": _SF_INTEGER,
    "s-maxage": _SF_INTEGER,
    "stale-while-revalidate": _SF_INTEGER,
    "stale-if-error": _SF_INTEGER,
    "no-cache": re.compile(r'\?[01]|".*"', re.ASCII | re.DOTALL),
    "private": re.compile(r'\?[01]|".*"', re.ASCII | re.DOTALL),
}
"""RFC 9213 §2.1: the Structured Field type each directive's value must have in a targeted field
(Integer for durations; Boolean or a String of field names for no-cache/private). A directive given
another type makes the whole field invalid."""


def parse_targeted_field(values: list[str]) -> list[Directive] | None:
    """RFC 9213 §2.2: a targeted field is a Structured Fields Dictionary (RFC 8941 §3.2).

    Returns its directives (parameters dropped, ``?0`` members dropped, ``?1`` as a bare
    directive) or None when the value does not parse as a Dictionary or a directive's value
    has the wrong type (``TARGETED_VALUE_TYPES``): the field is then ignored as a whole
    (RFC 9213 §2.2) and Cache-Control decides. Inner lists are not used by any cache
    directive and are treated as invalid.
    """
    directives: list[Directive] = []
    for value in values:
        text = value.strip(" \t")
        position = 0
        while position < len(text):
            match = _SF_MEMBER.match(text, position)
            if match is None:
                return None
            argument = match["value"]
            expected = TARGETED_VALUE_TYPES.get(match["key"])
            if expected is not None and not expected.fullmatch(argument or "?1"):  # a bare key is ?1
                return None
            if argument != "?0":
                directives.append((match["key"], None if argument in (None, "?1") else unquote(argument)))
            position = match.end()
            if position < len(text):
                separator = _SF_SEPARATOR.match(text, position)
                if separator is None or separator.end() == len(text):
                    return None
                position = separator.end()
    return directives


def effective_response_directives(
    fields: Fields, targeted_fields: Iterable[str] = ("cdn-cache-control",)
) -> tuple[CacheControl, str]:
    """The directives this cache obeys and the field they came from (RFC 9213 §2.1).

    The first targeted field (in configured order) that is present, valid and non-empty
    wins, and Cache-Control (and Expires, see policy) is then ignored; otherwise
    Cache-Control applies.
    """
    for name in targeted_fields:
        values = get_all(fields, name)
        if not values:
            continue
        directives = parse_targeted_field(values)
        if directives:
            return response_cache_control(directives), name.lower()
    return parse_cache_control(get_all(fields, "cache-control")), "cache-control"
