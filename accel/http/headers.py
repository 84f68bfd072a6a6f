"""Header fields on their way through the proxy, in both directions (pure: no Twisted, no I/O).

Fields travel as lists of ``(name, value)`` byte pairs so that repeated fields keep every value and their
order. Names are compared case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from accel.config import HOP_BY_HOP_NAMES

RawFields = list[tuple[bytes, bytes]]

# HOP_BY_HOP_NAMES (RFC 9110 §7.6.1) lives with the configuration, whose header rules may not set them;
# HOP_BY_HOP holds them as they travel (bytes).
HOP_BY_HOP = frozenset(name.encode("ascii") for name in HOP_BY_HOP_NAMES)

# Fields accel sets itself on the way to the origin: whatever the client sent under these names is replaced.
# Content-Length goes too: the origin connection frames the body it actually sends (RFC 9112 §6).
_REPLACED_UPSTREAM = frozenset(
    {b"host", b"content-length", b"x-forwarded-host", b"x-forwarded-server", b"x-forwarded-proto", b"x-forwarded-port"}
)

_SCHEMES = (b"http", b"https")

# Request fields origins commonly trust to build URLs, pick a client address or change the method, which the
# cache does not key on (so a client could poison an entry with them): removed from untrusted peers'
# requests, as accel's own X-Forwarded-Host / -Server / -Proto / -Port replace the client's. The
# configuration adds names (strip_untrusted) or lets some through (pass_untrusted).
UNTRUSTED_FIELDS = frozenset(
    {
        b"x-host",
        b"x-forwarded-server",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-path",
        b"x-forwarded-uri",
        b"x-forwarded-scheme",
        b"x-forwarded-ssl",
        b"x-url-scheme",
        b"x-original-url",
        b"x-original-uri",
        b"x-original-host",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"x-original-method",
        b"forwarded",
        b"x-real-ip",
        b"x-client-ip",
        b"true-client-ip",
    }
)


def connection_options(values: Iterable[str]) -> set[str]:
    """Field names the values of ``Connection`` fields nominate (RFC 9110 §7.6.1), lower-cased."""
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


def end_to_end(fields: Iterable[tuple[bytes, bytes]]) -> RawFields:
    """Drop hop-by-hop fields and every field the ``Connection`` field nominates."""
    kept: RawFields = []
    nominating: list[str] = []
    for name, value in fields:
        lower = name.lower()
        if lower not in HOP_BY_HOP:
            kept.append((name, value))
        elif lower == b"connection":
            nominating.append(value.decode("latin-1"))
    if not nominating:
        return kept
    nominated = {name.encode("latin-1") for name in connection_options(nominating)}
    return [(n, v) for n, v in kept if n.lower() not in nominated]


@dataclass(frozen=True, slots=True)
class ClientSide:
    """What accel knows about the client connection a request came in on."""

    address: str  # peer IP address (IPv4-mapped ones as IPv4), "unknown" for a UNIX-socket peer
    host: bytes | None  # the client's Host field
    scheme: str  # "http" or "https"
    port: int | None  # the port the client connected to; None on a UNIX socket
    trusted: bool  # the peer is a configured proxy whose X-Forwarded-For we keep


def request_to_origin(
    fields: Iterable[tuple[bytes, bytes]],
    client: ClientSide,
    *,
    origin_authority: str,
    preserve_host: bool,
    server_name: str,
    via: str,
    client_version: bytes,
    untrusted: frozenset = UNTRUSTED_FIELDS,
) -> RawFields:
    """The header section accel sends upstream for a client request.

    Like mod_proxy_http: hop-by-hop fields removed; ``Host`` is the origin's unless preserve_host (then the
    client's); ``X-Forwarded-For`` gets the peer address appended (earlier values kept only from trusted
    proxies); ``X-Forwarded-Host`` / ``-Server`` / ``-Proto`` / ``-Port`` describe the client side (a
    trusted proxy's ``X-Forwarded-Proto``, http or https, is the client's scheme); ``Via``
    gains our hop (RFC 9110 §7.6.3). From an untrusted peer, the fields in ``untrusted`` are removed.
    """
    out: RawFields = []
    xff: list[bytes] = []
    vias: list[bytes] = []
    scheme = client.scheme.encode("ascii")
    for name, value in end_to_end(fields):
        lower = name.lower()
        if lower == b"x-forwarded-proto" and client.trusted and value.strip().lower() in _SCHEMES:
            scheme = value.strip().lower()  # the scheme the proxy in front (HAProxy) was asked for
            continue
        if lower in _REPLACED_UPSTREAM or (lower in untrusted and not client.trusted):
            continue
        if lower == b"x-forwarded-for":
            if client.trusted:
                xff.append(value)
            continue
        if lower == b"via":
            vias.append(value)
            continue
        out.append((name, value))
    host = client.host if (preserve_host and client.host) else origin_authority.encode("ascii")
    out.insert(0, (b"Host", host))
    xff.append(client.address.encode("ascii"))
    out.append((b"X-Forwarded-For", b", ".join(xff)))
    if client.host:
        out.append((b"X-Forwarded-Host", client.host))
    out.append((b"X-Forwarded-Server", server_name.encode("ascii", "replace")))
    out.append((b"X-Forwarded-Proto", scheme))
    if client.port is not None:
        out.append((b"X-Forwarded-Port", str(client.port).encode("ascii")))
    out.append((b"Via", b", ".join(vias + [via_entry(client_version, via)])))
    return out


def response_to_client(
    fields: Iterable[tuple[bytes, bytes]], *, via: str, origin_version: bytes = b"HTTP/1.1"
) -> RawFields:
    """The origin's response fields as the client gets them: hop-by-hop removed, our hop added to ``Via``.

    ``Server`` is left out here: the front end decides whether to send its own.
    """
    out: RawFields = []
    vias: list[bytes] = []
    for name, value in end_to_end(fields):
        lower = name.lower()
        if lower == b"via":
            vias.append(value)
        elif lower != b"server":
            out.append((name, value))
    out.append((b"Via", b", ".join(vias + [via_entry(origin_version, via)])))
    return out


@lru_cache(maxsize=64)  # (a few versions and one pseudonym: made twice per proxied request)
def via_entry(version: bytes, pseudonym: str) -> bytes:
    """``1.1 accel`` for HTTP/1.1 (RFC 9110 §7.6.3: protocol version without "HTTP/", then our name)."""
    _, slash, number = version.partition(b"/")
    if not slash:
        number = version
    return number + b" " + pseudonym.encode("ascii", "replace")
