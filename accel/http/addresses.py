"""Peer addresses against configured networks, and the host and port of an authority (pure: no Twisted).

One place decides who a peer is for ``trusted_proxies`` and the PURGE allow list, and one place splits a
``Host`` field or URI authority (RFC 9110 §7.2, RFC 3986 §3.2.2: an IPv6 literal keeps its brackets).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_ip(peer) -> IPAddress | None:
    """The IP address of a connection's peer (a Twisted address object), or None when it has none (a UNIX
    socket). An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, an IPv4 client of a dual-stack socket)
    is that IPv4 address; an IPv6 zone (``fe80::1%eth0``) is dropped."""
    host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return None
    return parse_ip(host)


def parse_ip(text: str) -> IPAddress | None:
    """An IP address as ``peer_ip`` reads it (IPv4-mapped as IPv4, zone dropped), or None."""
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def forwarded_ip(entry: str) -> IPAddress | None:
    """The address of one X-Forwarded-For entry: ``10.0.0.1``, ``2001:db8::1``, or with a port
    (``10.0.0.1:5000``, ``[2001:db8::1]:5000``); None for anything else (``unknown``, garbage)."""
    entry = entry.strip()
    ip = parse_ip(entry)
    if ip is None and (entry.startswith("[") or entry.count(":") == 1):
        ip = parse_ip(split_authority(entry)[0].strip("[]"))
    return ip


def peer_name(peer) -> str:
    """The peer as X-Forwarded-For and the logs name it: its IP address (see ``peer_ip``), or "unknown"
    for a peer without one (the identifier RFC 7239 §6.1 uses for it)."""
    ip = peer_ip(peer)
    return "unknown" if ip is None else str(ip)


def peer_in(peer, networks: Iterable[IPNetwork], unix: bool = False) -> bool:
    """Whether ``peer`` is in one of ``networks``; a peer without an IP address only when ``unix``."""
    ip = peer_ip(peer)
    if ip is None:
        return unix and getattr(peer, "host", None) is None
    return ip_in(ip, networks)


def ip_in(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """Whether ``ip`` is in one of ``networks`` (an address never matches a network of the other version)."""
    return any(ip.version == net.version and ip in net for net in networks)


def split_authority(authority: str) -> tuple[str, str]:
    """(host, port) of ``host[:port]``; the port is "" when absent, an IPv6 literal keeps its brackets."""
    if authority.startswith("["):
        bracket = authority.find("]")
        if bracket == -1:
            return authority, ""
        rest = authority[bracket + 1 :]
        return authority[: bracket + 1], rest[1:] if rest.startswith(":") else ""
    host, colon, port = authority.rpartition(":")
    return (host, port) if colon else (authority, "")
