"""Byte range requests served from a stored representation of known length (RFC 9110 §14, §13.1.5).

Decides whether a ``Range`` yields the full representation (200), a 416, or a
list of byte ranges (206), and formats ``Content-Range`` and the part headers of
a ``multipart/byteranges`` body (§14.6). Ignoring a Range is always allowed
(§14.2), so anything doubtful falls back to the full 200.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fields import parse_entity_tag, strong_match
from .httpdate import parse_http_date

MAX_RANGES = 100
"""More range-specs than this are ignored as abusive (§14.2 allows ignoring such a Range)."""

_NUMBER_CAP = 10**30
"""Digit strings are capped so that huge positions stay cheap to compare (§14.1.1 places no limit)."""


@dataclass(frozen=True, slots=True)
class IgnoreRange:
    """Serve the full representation with 200: the Range is invalid, of another unit, or declined."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """Answer 416 with ``Content-Range: bytes */length`` (§15.5.17)."""

    length: int

    @property
    def content_range(self) -> str:
        return f"bytes */{self.length}"


@dataclass(frozen=True, slots=True)
class Satisfiable:
    """Answer 206 with these inclusive ``(first, last)`` byte ranges, sorted and coalesced."""

    ranges: tuple[tuple[int, int], ...]


RangeResult = IgnoreRange | Unsatisfiable | Satisfiable


def _position(digits: str) -> int | None:
    """``1*DIGIT`` → int (capped), None when not digits."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    digits = digits.lstrip("0") or "0"
    return _NUMBER_CAP if len(digits) > len(str(_NUMBER_CAP)) else min(int(digits), _NUMBER_CAP)


class _InvalidRangeSpec(ValueError):
    """A range-spec that makes the whole Range field invalid (§14.1.1)."""


def _resolve(spec: str, length: int) -> tuple[int, int] | None:
    """One range-spec (§14.1.1-§14.1.2): satisfiable (first, last), or None when unsatisfiable."""
    first_text, sep, last_text = spec.partition("-")
    if not sep:
        raise _InvalidRangeSpec(spec)
    if not first_text:  # suffix-range: "-" suffix-length
        suffix = _position(last_text)
        if suffix is None:
            raise _InvalidRangeSpec(spec)
        return (max(0, length - suffix), length - 1) if suffix > 0 else None
    first = _position(first_text)
    last = _position(last_text) if last_text else length - 1
    if first is None or last is None or (last_text and last < first):
        raise _InvalidRangeSpec(spec)
    return (first, min(last, length - 1)) if first < length else None


def coalesce(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """§14.6: merge overlapping and adjacent ranges, in ascending order."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def parse_range(value: str | None, length: int) -> RangeResult:
    """Evaluate a ``Range`` field value against a representation of ``length`` bytes (§14.2).

    Only the ``bytes`` unit (case-insensitive) is understood. An invalid range-spec makes
    the whole field invalid (§14.1.1). A zero-length representation is always served whole.
    """
    if value is None:
        return IgnoreRange("absent")
    unit, sep, range_set = value.strip(" \t").partition("=")
    if not sep or unit.strip(" \t").lower() != "bytes":
        return IgnoreRange("unit")
    specs = [spec.strip(" \t") for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if not specs:
        return IgnoreRange("invalid")
    if len(specs) > MAX_RANGES:
        return IgnoreRange("too-many")
    if length <= 0:
        return IgnoreRange("empty")
    try:
        resolved = [_resolve(spec, length) for spec in specs]
    except _InvalidRangeSpec:
        return IgnoreRange("invalid")
    satisfiable = [pair for pair in resolved if pair is not None]
    if not satisfiable:
        return Unsatisfiable(length)
    return Satisfiable(coalesce(satisfiable))


def if_range_allows(
    if_range_value: str | None, etag: str | None, last_modified_ts: float | None, date_ts: float | None
) -> bool:
    """§13.1.5: whether the Range may be honoured (True) or the full 200 must be sent (False).

    Absent If-Range allows. An entity-tag matches only by strong comparison. An HTTP-date
    matches only a strong Last-Modified (at least one second before Date, §8.8.2.2) that
    equals it exactly. Anything else, including an unparsable value, does not match.
    """
    if if_range_value is None:
        return True
    text = if_range_value.strip(" \t")
    if text.startswith('"') or text.startswith("W/"):
        return strong_match(parse_entity_tag(text), parse_entity_tag(etag) if etag else None)
    since = parse_http_date(text)
    if since is None or last_modified_ts is None or date_ts is None:
        return False
    return last_modified_ts <= date_ts - 1 and since == last_modified_ts


def content_range(first: int, last: int, length: int) -> str:
    """``Content-Range`` value for an inclusive byte range (§14.4)."""
    return f"bytes {first}-{last}/{length}"


def multipart_part_header(boundary: str, content_type: str | None, first: int, last: int, length: int) -> bytes:
    """Delimiter and header section preceding one part of ``multipart/byteranges`` (§14.6).

    Each part begins with CRLF so the caller can stream: part header, the bytes
    ``first..last``, next part header, ..., then ``multipart_end``.
    """
    lines = [f"\r\n--{boundary}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Range: {content_range(first, last, length)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def multipart_end(boundary: str) -> bytes:
    """Close delimiter of a ``multipart/byteranges`` body."""
    return f"\r\n--{boundary}--\r\n".encode("latin-1")


def multipart_length(boundary: str, content_type: str | None, ranges: tuple[tuple[int, int], ...], length: int) -> int:
    """Total body length of the multipart response, for its Content-Length."""
    parts = sum(
        len(multipart_part_header(boundary, content_type, first, last, length)) + last - first + 1
        for first, last in ranges
    )
    return parts + len(multipart_end(boundary))
