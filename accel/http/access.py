"""Who the client is, and whether a route's ``allow`` / ``deny`` lists let it in (pure: no Twisted).

The client is the connection's peer, unless the peer is one of ``trusted_proxies``: then it is the first
address of ``X-Forwarded-For``, read from the right, that is not a trusted proxy (each trusted proxy
appended the address it got the request from; entries to the left of an untrusted one may be forged).
Addresses are matched by ``accel.http.addresses``, the one matcher of peers against networks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from accel.config import AddressList
from accel.http.addresses import IPAddress, IPNetwork, forwarded_ip, ip_in, peer_in, peer_ip

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class Client:
    """The client a request is from: its address, or none for a peer on a UNIX socket."""

    ip: IPAddress | None

    @property
    def name(self) -> str:
        """As the logs and rate-limit keys name it (``unknown`` for a UNIX-socket peer, as RFC 7239 §6.1)."""
        return "unknown" if self.ip is None else str(self.ip)


def client_of(peer, forwarded_for: Iterable[bytes], trusted: Iterable[IPNetwork], trusted_unix: bool) -> Client:
    """The client of a request that came from ``peer`` with these ``X-Forwarded-For`` field values."""
    if not peer_in(peer, trusted, trusted_unix):
        return Client(peer_ip(peer))
    trusted = tuple(trusted)
    entries = [e for value in forwarded_for for e in value.decode("latin-1").split(",") if e.strip()]
    for entry in reversed(entries):
        ip = forwarded_ip(entry)
        if ip is None:
            break  # not an address: what a trusted proxy appended ends here
        if not ip_in(ip, trusted):
            return Client(ip)
    # Every entry is a trusted proxy (or there is none): the client is the leftmost address, else the peer.
    for entry in entries:
        ip = forwarded_ip(entry)
        if ip is not None:
            return Client(ip)
    return Client(peer_ip(peer))


def listed(client: Client, addresses: AddressList) -> bool:
    """Whether ``addresses`` names the client: one of its networks, or "local" (loopback and UNIX-socket
    peers)."""
    if client.ip is None:
        return addresses.local
    return ip_in(client.ip, addresses.networks) or (addresses.local and ip_in(client.ip, _LOOPBACK))


def access_allowed(client: Client, allow: AddressList | None, deny: AddressList) -> bool:
    """Deny wins: a client in ``deny`` is refused even when ``allow`` names it; without an ``allow`` list
    every client not denied is allowed."""
    if listed(client, deny):
        return False
    return allow is None or listed(client, allow)
