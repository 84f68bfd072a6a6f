"""Purge fan-out: a PURGE a node accepts is forwarded to every ``[cluster] peers`` node, in parallel.

Each node of a cache tier behind a consistent-hashing balancer holds its own share of the URLs, and a purge
must reach them all. The forwarded request is the PURGE as the node understood it (request-target, Host,
``X-Purge-Method``, ``Surrogate-Key``, ``X-Purge-Soft``), with the ``[purge] secret`` header when one is set
(a peer admits it like any purger: by ``[purge] allow`` and the secret), and ``X-Purge-Forwarded: 1``, so a
peer applies it and does not forward it again.

A peer *confirms* with a purge answer: 200, or 404 when it held nothing matching (``{"purged": 0, ...}``).
Anything else — a refusal (403), another status, an answer that is not a purge answer, a connection that
fails, no answer within ``[cluster] purge_timeout`` — is a failure, reported with its reason.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.web.client import readBody

from accel.config import ClusterSettings, PurgeSettings
from accel.proxy.origin import OriginClient, OriginTimeout

FORWARDED_FIELD = b"x-purge-forwarded"
CONNECTIONS_PER_PEER = 4


def forwarded_fields(host: str, mode: str, tags: list[str], soft: bool, purge: PurgeSettings) -> list[tuple[bytes, bytes]]:
    """The header section of the PURGE sent to a peer."""
    fields = [(b"Host", host.encode("latin-1")), (b"X-Purge-Method", mode.encode("ascii"))]
    if tags:
        fields.append((b"Surrogate-Key", " ".join(tags).encode("latin-1")))
    if soft:
        fields.append((b"X-Purge-Soft", b"1"))
    if purge.secret is not None:
        fields.append((purge.secret_header.encode("latin-1"), purge.secret.encode("utf-8")))
    fields += [(b"X-Purge-Forwarded", b"1"), (b"Content-Length", b"0")]
    return fields


def peer_answer(code: int, body: bytes) -> dict:
    """What one peer's answer means: ``{"status": "ok", "code": .., "purged": n}`` when it confirmed,
    ``{"status": "failed", "code": .., "detail": ..}`` otherwise."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return {"status": "failed", "code": code, "detail": f"answered {code} without a purge answer"}
    if code in (200, 404) and isinstance(document.get("purged"), int):
        return {"status": "ok", "code": code, "purged": document["purged"]}
    detail = document.get("detail") or document.get("status") or "no detail"
    return {"status": "failed", "code": code, "detail": f"answered {code}: {detail}"}


def all_confirmed(peers: dict[str, dict]) -> bool:
    return all(answer["status"] == "ok" for answer in peers.values())


class PeerPurges:
    """Sends purges to the peers over persistent connections (accel's origin client)."""

    def __init__(self, reactor, cluster: ClusterSettings, purge: PurgeSettings):
        self.reactor = reactor
        self.timeout = cluster.purge_timeout
        self.purge = purge
        self.clients = {
            peer.key: OriginClient(reactor, peer, max_connections=CONNECTIONS_PER_PEER, connect_timeout=self.timeout)
            for peer in cluster.peers
        }

    def forward(self, host: str, target: str, mode: str, tags: list[str], soft: bool) -> Deferred[dict[str, dict]]:
        """Send one purge to every peer at once; fires with each peer's answer (``peer_answer``), by URL."""
        fields = forwarded_fields(host, mode, tags, soft, self.purge)
        names = list(self.clients)
        asked = [self.ask(self.clients[name], target.encode("latin-1"), fields) for name in names]
        return gatherResults(asked).addCallback(lambda answers: dict(zip(names, answers)))

    def ask(self, client: OriginClient, target: bytes, fields) -> Deferred[dict]:
        d = client.fetch(b"PURGE", target, fields, timeout=self.timeout)

        def answered(fetched):
            response = fetched.response
            return readBody(response).addCallback(lambda body: peer_answer(response.code, body))

        d.addCallback(answered)
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(lambda failure: {"status": "failed", "detail": _reason(failure, self.timeout)})

    def close(self) -> Deferred:
        return gatherResults([client.close() for client in self.clients.values()])


def _reason(failure, timeout: float) -> str:
    if failure.check(DeferredTimeout, OriginTimeout):
        return f"no answer within {timeout:g} s (purge_timeout)"
    return failure.getErrorMessage() or failure.type.__name__
