"""Partial content: storing 206 responses and reusing them (RFC 9111 §3.3-§3.4, RFC 9110 §14).

A stored piece is one byte range of a representation whose complete length is known. It lives
beside the complete responses of its URL, under a secondary key that no request produces
(``piece_key``), so that only a Range request it covers uses it (``covered_range``). Pieces
with the same strong validator that together cover the whole representation are combined
into a complete stored response (``complete_cover``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from .fields import Fields, get_all, get_one, parse_entity_tag
from .policy import DEFAULT_POLICY, CachePolicy, storable
from .ranges import Satisfiable, coalesce, parse_range

_CONTENT_RANGE = re.compile(r"bytes[ \t]+([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})", re.ASCII | re.IGNORECASE)
_PIECE_KEY = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+) (.*)", re.ASCII | re.DOTALL)


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes ``first``..``last`` (inclusive) of a representation of ``length`` bytes."""

    first: int
    last: int
    length: int


def parse_content_range(value: str | None) -> Piece | None:
    """RFC 9110 §14.4: ``bytes first-last/length`` with a known complete length; None otherwise
    (``*`` lengths, unsatisfied-range forms and inverted or out-of-bounds ranges)."""
    match = _CONTENT_RANGE.fullmatch(value.strip(" \t")) if value else None
    if match is None:
        return None
    first, last, length = (int(group) for group in match.groups())
    return Piece(first, last, length) if first <= last < length else None


def piece_key(piece: Piece, secondary_key: str) -> str:
    """The stored secondary key of a piece: its range, then the request's own secondary key (§4.1)."""
    return f"bytes {piece.first}-{piece.last}/{piece.length} {secondary_key}"


def split_piece_key(stored_key: str) -> tuple[Piece, str] | None:
    """``piece_key``'s parts, or None for the key of a complete response."""
    match = _PIECE_KEY.fullmatch(stored_key)
    if match is None:
        return None
    return Piece(int(match[1]), int(match[2]), int(match[3])), match[4]


def storable_piece(
    status: int, request_fields: Fields, response_fields: Fields, policy: CachePolicy = DEFAULT_POLICY
) -> Piece | None:
    """§3.3: a complete 206 with one byte range (a single ``Content-Range``, not multipart) of a
    representation of known length may be stored when every other rule of ``storable`` allows it."""
    values = get_all(response_fields, "content-range")
    if status != 206 or len(values) != 1:
        return None
    piece = parse_content_range(values[0])
    if piece is None:
        return None
    if not storable("GET", 200, request_fields, response_fields, policy, complete=True).ok:
        return None
    return piece


def covered_range(range_value: str | None, piece: Piece) -> tuple[int, int] | None:
    """RFC 9110 §14.2 with RFC 9111 §3.4: the one byte range a request asks for (suffix and open ranges
    resolved against the known length), when ``piece`` holds all of it; None otherwise."""
    result = parse_range(range_value, piece.length)
    if not isinstance(result, Satisfiable) or len(result.ranges) != 1:
        return None
    first, last = result.ranges[0]
    return (first, last) if piece.first <= first and last <= piece.last else None


def strong_validator(fields: Fields) -> str | None:
    """The strong ETag of a stored piece, which §3.4 requires to combine it with others."""
    tag = parse_entity_tag(get_one(fields, "etag") or "")
    return None if tag is None or tag.weak else str(tag)


def complete_cover(pieces: Sequence[tuple[Piece, str | None]]) -> bool:
    """§3.4: pieces of one representation (the same strong validator, the same length) that together
    cover every byte of it may be combined into a complete response."""
    if not pieces:
        return False
    validators = {validator for _, validator in pieces}
    lengths = {piece.length for piece, _ in pieces}
    if len(validators) != 1 or None in validators or len(lengths) != 1:
        return False
    covered = coalesce([(piece.first, piece.last) for piece, _ in pieces])
    return covered == ((0, lengths.pop() - 1),)
