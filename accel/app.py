"""Assembles accel from a Config: origin clients, the request handler chain, the cache and the Site."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from accel.config import CacheSettings, Config
from accel.http.errors import ErrorPages
from accel.proxy.origin import OriginClients
from accel.tls.listeners import check_certificates
from accel.tls.origin import check_route_files, origin_policies
from accel.proxy.forwarding import Forwarder, ReverseProxy
from accel.cache.batches import run_batches
from accel.cache.purge import PurgeHandler
from accel.http.server import AccelSite
from accel.tls.https import hsts_value, with_hsts

log = Logger()


def check_files(config: Config) -> None:
    """Load every certificate, key and CA bundle the configuration names, so a bad file stops the start (and
    ``accel check-config``) with its name. Parsing the configuration itself touches no files."""
    if config.tls.listeners:
        check_certificates(config.tls, config.source)
    for i, route in enumerate(config.routes):
        if route.tls_ca or route.tls_client_cert:
            check_route_files(route, config.source, f"route[{i}]")


def build_site(config: Config, reactor) -> AccelSite:
    errors = ErrorPages(config.error_documents)
    clients = OriginClients(reactor, tls_policy_for=origin_policies(config.routes, config.source))
    handler = forwarder = Forwarder(config, clients, errors, reactor)
    cache = None
    if config.cache.dir:
        cache = CacheRuntime(config.cache, reactor)
        handler = cache.layer(forwarder)
    proxy = ReverseProxy(config, handler, errors)
    if cache is not None:
        proxy.purge = PurgeHandler(cache.store, config.purge, config.cache, proxy.serves_host, reactor)
    site = AccelSite(
        proxy,
        limits=config.limits,
        server_header=config.server_header,
        access_log=config.access_log,
        errors=errors,
        hsts=hsts_value(config.tls) if config.tls.hsts_max_age is not None else None,
        reactor=reactor,
    )
    if site.hsts is not None:
        site.requestFactory = with_hsts(site.requestFactory, site.hsts)
    if cache is not None:
        from accel.cache.fast import FastHits

        site.fast_hits = FastHits(proxy, handler)

    def close():
        closing = clients.close()
        if cache is None:
            return closing
        return gatherResults([closing, cache.close()])

    site.close = close
    site.cache = cache
    return site


class CacheRuntime:
    """The cache's storage for this process, and its housekeeping timers."""

    FLUSH_ACCESS_EVERY = 30.0  # persist LRU recency
    COLLECT_ORPHANS_EVERY = 600.0  # bodies of writes a crash interrupted
    SYNC_EVERY = 60.0  # fsync, in a thread: LMDB runs with sync=False (see accel.cache.store)

    def __init__(self, settings: CacheSettings, reactor):
        from accel.cache.epoch import PurgeEpoch
        from accel.cache.memory import MemoryTier
        from accel.cache.store import DiskStore
        from accel.cache.tiers import TieredStore

        os.makedirs(settings.dir, exist_ok=True)
        self.settings = settings
        self.reactor = reactor
        disk = DiskStore(settings.dir, map_size=settings.map_size, max_body_size=settings.max_object_size)
        memory = MemoryTier(
            settings.memory_max_bytes,
            settings.memory_max_objects,
            settings.memory_min_object_size,
            settings.memory_max_object_size,
        )
        self.store = TieredStore(disk, memory, PurgeEpoch(os.path.join(settings.dir, "purge-epoch")))
        self.layers = []
        self.closed: Deferred | None = None
        self.syncing: Deferred | None = None  # the fsync running in a thread, if one is
        now = reactor.seconds
        self.timers = [
            self._every(self.FLUSH_ACCESS_EVERY, lambda: run_batches(reactor, disk.flush_access_batches(now()))),
            self._every(self.COLLECT_ORPHANS_EVERY, lambda: disk.collect_orphans(now() - self.COLLECT_ORPHANS_EVERY)),
            self._every(self.SYNC_EVERY, self.sync, now=False),
        ]

    def sync(self) -> Deferred:
        """fsync the disk tier in a thread; ``close`` waits for it before closing the environment."""
        self.syncing = deferToThread(self.store.disk.sync)

        def over(result):
            self.syncing = None
            return result

        return self.syncing.addBoth(over)

    def _every(self, seconds: float, work, now: bool = True) -> LoopingCall:
        def run():
            return maybeDeferred(work).addErrback(lambda f: log.failure("cache housekeeping failed", failure=f))

        call = LoopingCall(run)
        call.clock = self.reactor
        call.start(seconds, now=now)
        return call

    def layer(self, forwarder):
        from accel.cache.layer import CacheLayer

        layer = CacheLayer(forwarder, self.store, self.settings, self.reactor)
        self.layers.append(layer)
        return layer

    def close(self) -> Deferred:
        """Stop the housekeeping, persist access times and close the store, once no fsync thread uses it."""
        if self.closed is not None:
            return self.closed
        for timer in self.timers:
            if timer.running:
                timer.stop()
        for layer in self.layers:
            layer.close()
        self.store.disk.flush_access(self.reactor.seconds())
        pending = self.syncing if self.syncing is not None else succeed(None)
        self.closed = Deferred()
        pending.addErrback(lambda failure: log.failure("cache sync failed", failure=failure))
        pending.addCallback(lambda _: self._close_store())
        pending.chainDeferred(self.closed)
        return self.closed

    def _close_store(self) -> None:
        self.store.disk.close()
        self.store.epoch.close()
