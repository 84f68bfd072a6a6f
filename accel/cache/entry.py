"""The stored cache record (`EntryHead`) and its on-disk encoding.

A head describes one stored response: the request URL and Vary secondary key
it answers, the response status line and header fields, the timing values the
freshness rules need, and the id of its body in the disk store.

Heads are encoded as compact, versioned JSON (ASCII only, so any ``str`` —
including lone surrogates from ``surrogateescape`` decoding — round-trips).
JSON rather than pickle so that decoding untrusted or damaged bytes is safe and
a CLI can dump records without importing accel. Any record that does not
decode into a well-formed head raises `CorruptEntry`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1


class CorruptEntry(Exception):
    """A stored record or body is damaged, truncated or of an unknown format."""


@dataclass(frozen=True, slots=True)
class EntryHead:
    url: str
    secondary_key: str
    vary_names: tuple[str, ...]
    status: int
    reason: str
    fields: tuple[tuple[str, str], ...]
    request_time: float
    response_time: float
    body_length: int
    stored_at: float
    tags: tuple[str, ...] = ()
    stale_marked: bool = False
    body_id: bytes = b""
    initial_age: float = 0.0  # RFC 9111 §4.2.3 corrected_initial_age, from the Age the response arrived with
    # The URL of the origin that answered, when ``fields`` hold values ProxyPassReverse rewrites (Location,
    # Content-Location, URI, Set-Cookie): they are stored as that origin sent them and rewritten for each
    # client served (host aliases share entries). "" when there is nothing to rewrite.
    reverse_origin: str = ""


def encode_head(head: EntryHead) -> bytes:
    """Serialise a head as compact JSON bytes."""
    doc = {
        "v": FORMAT_VERSION,
        "url": head.url,
        "sk": head.secondary_key,
        "vary": list(head.vary_names),
        "status": head.status,
        "reason": head.reason,
        "fields": [[name, value] for name, value in head.fields],
        "req": head.request_time,
        "resp": head.response_time,
        "len": head.body_length,
        "at": head.stored_at,
        "tags": list(head.tags),
        "stale": head.stale_marked,
        "body": head.body_id.hex(),
        "age": head.initial_age,
    }
    if head.reverse_origin:
        doc["ro"] = head.reverse_origin
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def decode_head(data: bytes) -> EntryHead:
    """Parse bytes produced by `encode_head`; raise `CorruptEntry` otherwise."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptEntry(f"undecodable head record: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptEntry("head record is not a JSON object")
    if doc.get("v") != FORMAT_VERSION:
        raise CorruptEntry(f"unknown head format version {doc.get('v')!r}")
    try:
        return EntryHead(
            url=_str(doc["url"]),
            secondary_key=_str(doc["sk"]),
            vary_names=tuple(_str(name) for name in _list(doc["vary"])),
            status=_int(doc["status"]),
            reason=_str(doc["reason"]),
            fields=tuple(_field(pair) for pair in _list(doc["fields"])),
            request_time=_float(doc["req"]),
            response_time=_float(doc["resp"]),
            body_length=_int(doc["len"]),
            stored_at=_float(doc["at"]),
            tags=tuple(_str(tag) for tag in _list(doc["tags"])),
            stale_marked=_bool(doc["stale"]),
            body_id=bytes.fromhex(_str(doc["body"])),
            initial_age=_float(doc["age"]),
            reverse_origin=_str(doc.get("ro", "")),
        )
    except KeyError as exc:
        raise CorruptEntry(f"head record lacks {exc}") from None
    except ValueError as exc:
        raise CorruptEntry(f"bad head record: {exc}") from None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _float(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected a boolean, got {value!r}")
    return value


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return value


def _field(pair: Any) -> tuple[str, str]:
    if not isinstance(pair, list) or len(pair) != 2:
        raise ValueError(f"expected a [name, value] pair, got {pair!r}")
    return _str(pair[0]), _str(pair[1])
