"""HTTP PURGE: invalidating stored responses from outside, Varnish / Fastly style.

``PurgeHandler.handle`` fully answers a request whose method is ``PURGE``; it never reaches an origin.
The request-target and ``Host`` name what to purge, request header fields choose how:

==============================  =========================================================================
``PURGE /a/b?x=1``              every stored variant (all Vary variants) of that URL
``X-Purge-Method: prefix``      every URL whose path starts with the request-target (``PURGE /img/``)
``X-Purge-Method: all``         everything stored for this Host (the request-target is ignored)
``Surrogate-Key: t1 t2``        every entry tagged t1 or t2 (space-separated; tags come from the origin's
                                ``Surrogate-Key`` / ``Cache-Tag`` fields). Tags are cache-wide: a tag purge
                                is not limited to the Host. ``X-Purge-Method: tag`` may be sent but is
                                implied by the field.
``X-Purge-Soft: 1``             soft purge: mark the entries stale instead of deleting them: they are
                                revalidated before a fresh use, and stay usable for stale-while-revalidate
                                and stale-if-error.
                                ``Fastly-Soft-Purge: 1`` is accepted as a synonym.
==============================  =========================================================================

Keys are computed like the cache computes them (``accel.cache.key`` with ``sort_query`` / ``drop_params``),
for both ``http`` and ``https`` unless ``share_schemes`` is set (then the one shared key, which uses
``http``), through the route that serves the Host and path: on a route that does not preserve the Host the
key names the route's origin, so a PURGE through any alias of the route removes what any alias stored. A
prefix purge covers every route of the Host under the prefix; ``all`` is a prefix purge of each route's
prefix (on a catch-all route: everything stored through it, whatever the Host). The answer is JSON, ``{"status": "ok", "purged": N, "mode": ..., ...}`` with 200, or with 404
when nothing matched. The purge is visible to every accel process using the cache directory before the
answer is sent (every change reaches the other processes' memory tiers through the shared counters, see
``accel.cache.tiers``). A purge of many entries runs as bounded write transactions with the reactor
serving requests between them (``accel.cache.batches``); the answer is sent when the last one committed.

With ``[cluster] peers``, a purge accepted here is also forwarded to every peer in parallel
(``accel.cache.fanout``; a purge a peer forwarded is not forwarded again): the answer adds ``"peers"``, each
peer's answer by URL, and is 200 once the purge was applied here and every peer confirmed (even when
nothing matched), 502 when a peer failed or did not answer.

Only clients whose address (the TCP peer; never X-Forwarded-For) is in ``[purge] allow`` may purge, and
when ``[purge] secret`` is set the request must also carry it in ``[purge] secret_header``; anyone else
gets 403 and a log line naming the address. A PURGE for a host accel does not serve answers 404.
"""

from __future__ import annotations

import hmac
import itertools
import json
from collections.abc import Callable

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from accel.cache.batches import run_batches
from accel.cache.fanout import FORWARDED_FIELD, PeerPurges, all_confirmed
from accel.cache.key import route_cache_key, route_prefix_key
from accel.cache.store import StoreFull
from accel.cache.tiers import TieredStore
from accel.config import CacheSettings, PurgeSettings, Route
from accel.http.accesslog import request_label
from accel.http.addresses import peer_in, peer_name
from accel.http.errors import send_own
from accel.http.traffic import Traffic
from accel.proxy.routing import RouteTable

log = Logger()

METHOD_FIELD = b"x-purge-method"
SOFT_FIELDS = (b"x-purge-soft", b"fastly-soft-purge")
TAG_FIELD = b"surrogate-key"
MODES = ("url", "prefix", "tag", "all")
SHARED_SCHEME = "http"  # the scheme of keys when CacheSettings.share_schemes is set
_TRUE = {"1", "true", "yes", "on"}


def purge_schemes(cache: CacheSettings) -> tuple[str, ...]:
    """The schemes a URL is stored under: one shared key, or one per scheme."""
    return (SHARED_SCHEME,) if cache.share_schemes else ("http", "https")


def url_keys(host: str, target: str, cache: CacheSettings, routes: RouteTable | None = None) -> list[str]:
    """The primary keys the cache may hold for ``target`` (origin-form) on ``host``, served by the route
    ``routes`` gives them (without routes: the keys of a route that preserves the Host)."""
    route = routes.match(target, host) if routes is not None else None
    return [
        route_cache_key(scheme, host, target, route, sort_query=cache.sort_query, drop_params=cache.drop_params)
        for scheme in purge_schemes(cache)
    ]


def prefix_keys(host: str, path_prefix: str, cache: CacheSettings, routes: RouteTable | None = None) -> list[str]:
    """Key prefixes covering every URL under ``path_prefix`` on ``host``, whichever of the host's routes
    serves it."""
    if not path_prefix.startswith("/"):
        path_prefix = "/" + path_prefix
    covering: list[tuple[Route | None, str]] = [(None, path_prefix)]
    if routes is not None:
        covering = [(routes.match(path_prefix, host), path_prefix)] + [
            (route, route.prefix) for route in routes_under(routes, host, path_prefix)
        ]
    schemes = purge_schemes(cache)
    return list(dict.fromkeys(route_prefix_key(s, host, prefix, route) for route, prefix in covering for s in schemes))


def routes_under(routes: RouteTable, host: str, path_prefix: str) -> list[Route]:
    """The routes that serve ``host`` the paths under their prefix, which lies under ``path_prefix``."""
    return [
        route
        for group in routes.groups_for(host)
        for route in group
        if route.prefix.startswith(path_prefix) and routes.match(route.prefix, host) is route
    ]


class PurgeHandler:
    """Answers PURGE requests; see the module docstring for the syntax."""

    def __init__(
        self,
        store: TieredStore,
        settings: PurgeSettings,
        cache: CacheSettings,
        served_hosts: Callable[[str], bool],
        reactor,
        peers: PeerPurges | None = None,
        traffic: Traffic | None = None,
        routes: RouteTable | None = None,
    ):
        self.reactor = reactor
        self.routes = routes  # the routes whose keys a PURGE names (see the module docstring)
        self.peers = peers  # [cluster] peers: every purge accepted here is forwarded to them
        self.traffic = traffic or Traffic()  # purges are counted there by kind
        self.store = store
        self.settings = settings
        self.cache = cache
        self.served_hosts = served_hosts
        self._secret = settings.secret.encode("utf-8") if settings.secret is not None else None
        self._secret_header = settings.secret_header.encode("latin-1")

    # -- the request ------------------------------------------------------------------------------------

    def handle(self, request, target: str) -> None:
        """Answer ``request`` (method PURGE); ``target`` is its origin-form path and query."""
        peer = request.getClientAddress()
        address = peer_name(peer)
        refusal = self.refusal(request, peer)
        if refusal is not None:
            log.warn("PURGE refused for {request}: {why}", request=request_label(request), why=refusal, address=address)
            self.answer(request, 403, {"status": "forbidden", "detail": refusal})
            return
        host = (request.getHeader(b"host") or b"").decode("latin-1").strip().lower()
        if not host or not self.served_hosts(host):
            self.answer(request, 404, {"status": "not found", "detail": "this server does not serve that host"})
            return
        soft = any(_header(request, name).lower() in _TRUE for name in SOFT_FIELDS)
        tags = _header(request, TAG_FIELD).split()
        mode = _header(request, METHOD_FIELD).lower() or ("tag" if tags else "url")
        if mode not in MODES:
            self.answer(request, 400, {"status": "bad request", "detail": f"X-Purge-Method must be one of {', '.join(MODES)}"})
            return
        if mode == "tag" and not tags:
            self.answer(request, 400, {"status": "bad request", "detail": "a tag purge needs a Surrogate-Key field"})
            return
        d = self.purge(mode, host, target, tags, soft)
        if self.peers is not None and request.getHeader(FORWARDED_FIELD) is None:
            forwarded = self.peers.forward(host, target, mode, tags, soft)
            d = gatherResults([d, forwarded], consumeErrors=True).addErrback(lambda f: f.value.subFailure)
            d.addCallback(lambda results: {**results[0], "peers": results[1]})
        d.addCallbacks(lambda result: self.purged(request, result),
                       lambda failure: self.failed(request, target, failure))
        d.addErrback(lambda failure: self.crashed(request, target, failure))

    def crashed(self, request, target: str, failure) -> None:
        log.failure("answering PURGE failed for {request}", failure=failure, request=request_label(request))
        if not (request._disconnected or request.finished or request.startedWriting):
            self.answer(request, 500, {"status": "error", "detail": "internal error"})

    def failed(self, request, target: str, failure) -> None:
        if failure.check(StoreFull):
            log.error("PURGE failed for {request}: {why}", request=request_label(request), why=failure.getErrorMessage())
            detail = "the cache store is full"
        else:
            log.failure("PURGE failed for {request}", failure=failure, request=request_label(request))
            detail = "the cache store failed"
        if not request._disconnected:
            self.answer(request, 503, {"status": "error", "detail": detail})

    def purged(self, request, result: dict) -> None:
        self.traffic.purged(result["mode"] + ("-soft" if result["soft"] else ""))
        peers = result.get("peers")
        if peers is None:
            code = 200 if result["purged"] else 404
            result = {"status": "ok" if result["purged"] else "not found", **result}
        else:  # purged here; 200 only once every peer confirmed, whether or not anything matched
            code = 200 if all_confirmed(peers) else 502
            result = {"status": "ok" if code == 200 else "peer failed", **result}
            for peer, answer in peers.items():
                if answer["status"] != "ok":
                    log.error("PURGE for {request} not confirmed by {peer}: {why}", request=request_label(request),
                              peer=peer, why=answer["detail"])
        log.info(
            "PURGE ({mode}{soft}) {what} for {request}: {n} entries",
            mode=result["mode"], soft=", soft" if result["soft"] else "",
            what=result.get("key") or " ".join(result.get("tags") or ()), request=request_label(request), n=result["purged"],
        )
        if not request._disconnected:
            self.answer(request, code, result)

    def purge(self, mode: str, host: str, target: str, tags: list[str], soft: bool) -> Deferred[dict]:
        """Apply one purge to both tiers (visible to every process), in bounded steps with the reactor
        running between them; fires with the JSON answer's fields."""
        if mode == "tag":
            tags = list(dict.fromkeys(tags))
            fields = {"mode": mode, "soft": soft, "tags": tags}
            steps = [("tag", tag) for tag in tags]
        else:
            if mode == "url":
                keys = url_keys(host, target, self.cache, self.routes)
            else:  # "all" is every URL of this host: a prefix purge of its root
                keys = prefix_keys(host, target.partition("#")[0] if mode == "prefix" else "/", self.cache, self.routes)
            fields = {"mode": mode, "soft": soft, "key": keys[0], "keys": keys}
            steps = [("url" if mode == "url" else "prefix", key) for key in keys]
        batches = itertools.chain.from_iterable(self.store.purge_batches(kind, what, soft) for kind, what in steps)
        return run_batches(self.reactor, batches).addCallback(lambda purged: {"purged": purged, **fields})

    # -- access control -------------------------------------------------------------------------------

    def refusal(self, request, peer) -> str | None:
        """Why this client may not purge, or None when it may."""
        if not self.allowed(peer):
            return "address not allowed"
        if self._secret is not None:
            given = request.getHeader(self._secret_header)
            if given is None or not hmac.compare_digest(given, self._secret):
                return "missing or wrong secret"
        return None

    def allowed(self, peer) -> bool:
        """The peer is in ``allow`` (a UNIX-socket peer only when ``allow`` lists "unix")."""
        return peer_in(peer, self.settings.allow, self.settings.allow_unix_peers)

    # -- answering ------------------------------------------------------------------------------------

    @staticmethod
    def answer(request, code: int, document: dict) -> None:
        body = json.dumps(document, separators=(", ", ": ")).encode("utf-8") + b"\n"
        send_own(request, code, b"application/json", body)


def _header(request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1").strip() if value is not None else ""
