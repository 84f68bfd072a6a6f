"""``accel cache purge --cluster``: the purge made here, sent to every ``[cluster] peers`` node as well.

The same forwarded PURGE as a node sends (``accel.cache.fanout``: the secret, ``X-Purge-Forwarded``), from a
blocking client, one thread a peer, each given ``[cluster] purge_timeout``.
"""

from __future__ import annotations

import http.client
from concurrent.futures import ThreadPoolExecutor

from accel.cache.fanout import forwarded_fields, peer_answer
from accel.config import Config, Origin

EXIT_PEER_FAILED = 3  # the purge was made here, but a peer did not confirm it


def purge_peers(config: Config, host: str | None, target: str, mode: str, tags: list[str], soft: bool) -> dict[str, dict]:
    """Each peer's answer (``peer_answer``) by URL; ``host`` None: each peer's own authority (a tag purge)."""
    peers = config.cluster.peers

    def ask(peer: Origin) -> dict:
        fields = forwarded_fields(host or peer.authority, mode, tags, soft, config.purge)
        connection_type = http.client.HTTPSConnection if peer.scheme == "https" else http.client.HTTPConnection
        connection = connection_type(peer.host, peer.port, timeout=config.cluster.purge_timeout)
        try:
            connection.putrequest("PURGE", target, skip_host=True, skip_accept_encoding=True)
            for name, value in fields:
                connection.putheader(name.decode("latin-1"), value.decode("latin-1"))
            connection.endheaders()
            response = connection.getresponse()
            return peer_answer(response.status, response.read())
        except TimeoutError:
            return {"status": "failed", "detail": f"no answer within {config.cluster.purge_timeout:g} s (purge_timeout)"}
        except (OSError, http.client.HTTPException) as e:
            return {"status": "failed", "detail": str(e) or type(e).__name__}
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=max(1, len(peers))) as pool:
        return dict(zip((p.key for p in peers), pool.map(ask, peers)))
