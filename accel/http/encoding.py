"""Content codings: which one a response goes out in, and what that changes in its header section (pure).

Negotiation (RFC 9110 §12.5.3): each coding in ``Accept-Encoding`` has a qvalue (default 1, ``q=0``: "not
acceptable"); ``*`` stands for every coding not listed; ``identity`` is acceptable unless excluded by
``identity;q=0`` or ``*;q=0``. Of the codings accel offers and identity, the one with the highest qvalue
wins; on a tie a coding wins over identity, and br over gzip. No ``Accept-Encoding`` at all: identity
(the client may not decode anything; what nginx and Apache do).

A response may be compressed (``compressible``) when it is a 200 of a listed media type, has no
Content-Encoding (RFC 9110 §8.4), no ``Cache-Control: no-transform`` (RFC 9111 §5.2.2.6), is not a part of
a representation (Content-Range, §14.4), and is not known to be shorter than ``min_size``.
Such a response carries ``Vary: Accept-Encoding`` in every coding (§12.5.5), and a compressed one a weak
ETag (§8.8.3.3: the bytes differ from the identity ones) and no Content-Length of the identity body.
"""

from __future__ import annotations

from functools import lru_cache

from accel.config import Compress

IDENTITY = "identity"
_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 §8.4.1.3


def accepted_codings(accept_encoding: str) -> dict[str, float]:
    """Coding → qvalue from an Accept-Encoding value (lower-case names; malformed qvalues count as 0)."""
    codings: dict[str, float] = {}
    for member in accept_encoding.split(","):
        name, _, params = member.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        name = _ALIASES.get(name, name)
        codings[name] = max(q, codings.get(name, 0.0)) if name in codings else q
    return codings


def negotiate(accept_encoding: str | None, offered: tuple[str, ...]) -> str:
    """The coding to send: one of ``offered`` (in order of preference) or ``identity``."""
    if accept_encoding is None:
        return IDENTITY
    codings = accepted_codings(accept_encoding)
    star = codings.get("*")
    best, best_q = IDENTITY, codings.get(IDENTITY, 1.0 if star is None or star > 0 else 0.0)
    for coding in offered:
        q = codings.get(coding, star if star is not None else 0.0)
        if q > 0 and q >= best_q and (best == IDENTITY or q > best_q):
            best, best_q = coding, q
    return best


def offered_codings(settings: Compress, brotli_available: bool) -> tuple[str, ...]:
    """What a route offers, best first."""
    return ("br", "gzip") if settings.brotli and brotli_available else ("gzip",)


def compressible(settings: Compress, status: int, fields, length: int | None) -> bool:
    """Whether a response (``fields``: (name, value) str pairs) may go out compressed; ``length`` is its
    body's length when known."""
    if not settings.enabled or status != 200:
        return False
    if length is not None and length < settings.min_size:
        return False
    media_type = None
    for name, value in fields:
        lower = name.lower()
        if lower == "content-encoding" and value.strip().lower() not in ("", IDENTITY):
            return False
        if lower == "content-range":
            return False
        if lower == "cache-control" and "no-transform" in (d.strip().lower() for d in value.split(",")):
            return False
        if lower == "content-type":
            media_type = value
    return media_type is not None and listed_type(settings, media_type)


def listed_type(settings: Compress, content_type: str) -> bool:
    """Whether a Content-Type value is one of the types ``settings`` compresses."""
    return _listed(settings.types, content_type)


@lru_cache(maxsize=1024)  # (a few distinct Content-Type values make up nearly every response)
def _listed(types: tuple[str, ...], content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    major = media_type.partition("/")[0]
    return any(t == media_type or (t.endswith("/*") and t[:-2] == major) for t in types)


# The only fields ``encoded_fields`` changes (lower-case).
CODING_FIELDS = frozenset({"content-length", "content-encoding", "etag", "vary"})


def encoded_fields(fields, coding: str) -> list[tuple[str, str]]:
    """The header fields of a compressible response sent in ``coding`` (identity included): Vary gains
    Accept-Encoding; in a compressed coding, Content-Encoding is set, a strong ETag becomes weak and the
    identity body's Content-Length goes."""
    out: list[tuple[str, str]] = []
    varies = False
    for name, value in fields:
        lower = name.lower()
        if lower == "vary":
            members = {m.strip().lower() for m in value.split(",")}
            varies = varies or "accept-encoding" in members or "*" in members
        elif coding != IDENTITY:
            if lower in ("content-length", "content-encoding"):
                continue
            if lower == "etag" and not value.lstrip().startswith("W/"):
                value = "W/" + value.strip()
        out.append((name, value))
    if not varies:
        out.append(("Vary", "Accept-Encoding"))
    if coding != IDENTITY:
        out.append(("Content-Encoding", coding))
    return out
