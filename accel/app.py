"""Assembles accel from a Config: origin clients, the request handler chain, the cache and the Site.

What a Config builds for requests is a ``Generation``; ``Accelerator.reload`` (SIGHUP) swaps in a new one while
the Site, its connections and the cache stay. ``startup_problems`` checks what starting needs from the disk.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.resource import Resource

from accel.cache.directory import DamagedCache, NotACache, check_cache_dir
from accel.config import CacheSettings, Config, ConfigError, located
from accel.http.errors import ErrorPages
from accel.http.health import HealthEndpoint, NodeHealth
from accel.http.header_rules import HeaderRules
from accel.proxy.admission import Admission
from accel.proxy.buckets import SharedBuckets
from accel.proxy.balancing import Balancers
from accel.proxy.manager import BalancerManager
from accel.proxy.manager_record import ANNOUNCEMENT, ManagerRecord
from accel.proxy.origin import OriginClients
from accel.tls.listeners import check_certificates
from accel.tls.origin import check_route_files, origin_policies
from accel.proxy.forwarding import Forwarder, ReverseProxy
from accel.proxy.websocket import WebSocketTunnels
from accel.cache.batches import run_batches
from accel.cache.fanout import PeerPurges
from accel.cache.purge import PurgeHandler
from accel.http.server import AccelSite
from accel.http.status import StatusPage, build_document
from accel.http.traffic import Traffic
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


def startup_problems(config: Config, cache_in_use: str | None = None) -> list[ConfigError]:
    """Everything starting needs from the disk, checked without changing anything: certificates and keys
    (``check_files``), a cache directory that can be created or holds a valid cache, a log file that can be
    written. One ConfigError per problem; ``twistd accel`` and ``accel check-config`` print them.

    ``cache_in_use`` is the directory of the cache this process has open (a reload): it is not opened again
    (LMDB allows one environment per file and process) and cannot change anyway."""
    problems = []
    checks = [check_files, _check_access_log]
    if config.cache.dir is not None and config.cache.dir != cache_in_use:
        checks.append(_check_cache_dir)
    for check in checks:
        try:
            check(config)
        except ConfigError as e:
            problems.append(located(e))
    return problems


def _check_cache_dir(config: Config) -> None:
    directory = config.cache.dir
    source, key = config.origin_of("cache.dir", "--cache-dir")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(source, key, "a directory", f"{directory} (not a directory)")
    if not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(source, key, "a directory accel can create",
                              f"{directory} ({parent} is not a writable directory)")
        return
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(source, key, "a directory accel can write", f"{directory} (not writable)")
    if os.path.exists(os.path.join(directory, "data.mdb")):
        try:
            check_cache_dir(directory)
        except DamagedCache as e:
            raise ConfigError(source, key, "an accel cache or an empty directory", str(e)) from None
        except NotACache as e:
            raise ConfigError(source, key, "an accel cache or an empty directory",
                              f"{e}; move {directory} away to start with an empty cache") from None


def _check_access_log(config: Config) -> None:
    path = config.access_log
    if path is None or path == "-":
        return
    folder = os.path.dirname(path)
    source, key = config.origin_of("server.access_log", "--access-log")
    if os.path.isdir(path):
        raise ConfigError(source, key, "a file", f"{path} (a directory)")
    if not os.path.isdir(folder):
        raise ConfigError(source, key, "a file in an existing directory",
                          f"{path} (no directory {folder})")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise ConfigError(source, key, "a file accel can write", f"{path} (not writable)")


def build_site(config: Config, reactor, clock=None) -> AccelSite:
    """The Site serving ``config``; ``site.accelerator`` reloads it, ``site.close()`` releases everything.
    ``clock`` (default: the reactor) gives balancers their time: retry periods and health check timers."""
    accelerator = Accelerator(config, reactor, clock)
    site = accelerator.site
    site.accelerator = accelerator
    site.close = accelerator.close
    site.cache = accelerator.cache
    site.balancers = accelerator.balancers
    return site


def rate_limit_buckets(config: Config) -> SharedBuckets:
    """The rate-limit table: in the cache directory, shared by every process using it (worker processes);
    without a cache directory, this process's own."""
    return SharedBuckets(os.path.join(config.cache.dir, "rate-limits") if config.cache.dir else None)


@dataclass(frozen=True)
class Generation:
    """One configuration in service. A request takes the current generation's resource when it starts and
    keeps its routes, forwarder, cache rules and error pages to the end, whatever a reload does meanwhile."""

    config: Config
    resource: Resource
    clients: OriginClients
    errors: ErrorPages
    hsts: bytes | None  # Strict-Transport-Security over TLS
    request_factory: type
    fast_hits: object | None  # accel.cache.fast.FastHits over this generation's routes and cache layer
    admission: Admission  # access rules, methods, body sizes, rate limits (its refusal counts)
    trusts: object  # peer -> whether it is a trusted proxy (its X-Request-Id is kept)


# What a reload cannot change in a running process: (what, how it is read from a Config).
RESTART_TO_CHANGE = (
    ("listeners", lambda c: (c.listen, tuple(l.endpoint for l in c.tls.listeners), c.tls.redirect_listen)),
    ("[cache] dir, map_size and memory limits", lambda c: (
        c.cache.dir, c.cache.map_size, c.cache.memory_max_bytes, c.cache.memory_max_objects,
        c.cache.memory_min_object_size, c.cache.memory_max_object_size)),
)


class Accelerator:
    """accel in one process: the Site, the cache and the configuration in service (a ``Generation``).

    ``reload`` builds a new generation and swaps it in: requests that started keep theirs, connections stay
    open, and the cache (storage, memory tier) carries on. ``drain`` waits for the requests in flight.
    """

    def __init__(self, config: Config, reactor, clock=None):
        self.reactor = reactor
        self.traffic = Traffic()  # this process's figures, across reloads
        self.cache = CacheRuntime(config.cache, reactor, shared=config.workers > 1) if config.cache.dir else None
        if self.cache is not None:
            self.cache.process_figures = self.process_figures
        self.in_flight = InFlight()
        self.health = NodeHealth()  # 503 on the health path once a stop has begun
        self.clients: list[OriginClients] = []
        self.peer_purges: dict[tuple, PeerPurges] = {}  # by ([cluster], [purge]); closed with the accelerator
        self.buckets: SharedBuckets | None = None  # made when a configuration first has a rate limit; kept
        self.generation: Generation | None = None
        # Balancer state outlives generations: a reload keeps the members it keeps (Balancers.configure).
        self.balancers = Balancers(clock or reactor)
        self.shared = self.cache is not None and self.cache.exchange is not None  # worker processes share figures
        if self.shared:  # and the balancer manager's changes. This process's figures file and exchange exist
            # before the balancers first read the record: a change recorded after that read is announced here.
            exchange = self.cache.exchange
            self.balancers.share(ManagerRecord(config.cache.dir, lambda: exchange.ask(ANNOUNCEMENT)))
            exchange.handle(ANNOUNCEMENT, self.balancers.restore_shared)
        self.tunnels: WebSocketTunnels | None = None  # every generation's tunnels, counted together
        generation = self._build(config)
        self.site = AccelSite(
            generation.resource,
            limits=config.limits,
            server_header=config.server_header,
            access_log=config.access_log,
            reactor=reactor,
        )
        self._apply(generation)
        self.balancers.start()

    def _build(self, config: Config) -> Generation:
        errors = ErrorPages(config.error_documents)
        previous = self.generation
        if previous is not None and _origin_tls(previous.config) == _origin_tls(config):
            clients = previous.clients  # same origins' TLS settings: keep the pools and their connections
        else:
            clients = OriginClients(self.reactor, tls_policy_for=origin_policies(config.routes, config.source))
            self.clients.append(clients)
        if self.buckets is None and any(route.protection.rate_limit for route in config.routes):
            self.buckets = rate_limit_buckets(config)
        admission = Admission(config, self.buckets, self.reactor.seconds)
        handler = forwarder = Forwarder(config, clients, errors, self.reactor, admission, self.balancers, self.traffic)
        if self.cache is not None:
            handler = self.cache.layer(forwarder, config.cache)
        manager = BalancerManager(self.balancers, self.processes, per_worker=self.shared)
        status = StatusPage(config.status, [manager], errors, self.status_document)
        tunnels = WebSocketTunnels(forwarder, self.reactor, shared=self.tunnels)
        self.tunnels = self.tunnels or tunnels
        health = HealthEndpoint(config.status, config.cluster.peers, self.health, errors)
        proxy = ReverseProxy(config, handler, errors, admission, status=status, websocket=tunnels, health=health)
        fast_hits = None
        if self.cache is not None:
            from accel.cache.fast import FastHits

            peers = None
            if config.cluster.peers:  # the same peers and purge settings as before: keep their connections
                peers = self.peer_purges.get((config.cluster, config.purge))
                if peers is None:
                    peers = self.peer_purges[(config.cluster, config.purge)] = PeerPurges(
                        self.reactor, config.cluster, config.purge)
            proxy.purge = PurgeHandler(self.cache.store, config.purge, config.cache, proxy.serves_host, self.reactor,
                                       peers, self.traffic, proxy.routes)
            fast_hits = FastHits(proxy, handler)
        hsts = hsts_value(config.tls) if config.tls.hsts_max_age is not None else None
        factory = AccelSite.requestFactory if hsts is None else with_hsts(AccelSite.requestFactory, hsts)
        return Generation(config, Counted(proxy, self.in_flight), clients, errors, hsts, factory, fast_hits, admission,
                          lambda peer: forwarder.peer(peer)[1])

    def _apply(self, generation: Generation) -> None:
        """Swap ``generation`` in: new requests use it (limits and HSTS: new connections)."""
        config = generation.config
        self.generation = generation
        self.balancers.configure(config.balancers, generation.clients)
        site = self.site
        site.resource = generation.resource
        site.errors = generation.errors
        site.hsts = generation.hsts
        site.hsts_field = b"Strict-Transport-Security: %s\r\n" % generation.hsts if generation.hsts else b""
        site.requestFactory = generation.request_factory
        site.use_fast_hits(generation.fast_hits)
        site.admission = generation.admission
        site.traffic = self.traffic
        self.traffic.counting = config.status.metrics
        site.trusts = generation.trusts
        site.access_log_format = config.access_log_format
        site.header_rules = HeaderRules(config.protection.headers)
        site.limits = config.limits
        site.server_header = config.server_header.encode("latin-1") if config.server_header else None
        site.server_field = b"Server: %s\r\n" % site.server_header if site.server_header else b""
        site.use_access_log(config.access_log)

    def process_figures(self) -> dict:
        """What this process publishes for the status page (and ``accel cache stats``)."""
        figures = {
            "traffic": self.traffic.snapshot(),
            "in_flight": self.in_flight.count,
            "pools": [pool for clients in self.clients for pool in clients.pools()],
            "balancers": self.balancers.figures(),
        }
        if self.cache is not None:
            figures.update(self.cache.store.memory.stats())
        return figures

    def processes(self) -> Deferred:
        """Fires with the figures of every server process (``process_figures``): with worker processes every
        worker's, each published just now (``FiguresExchange.refresh``); else this process's alone."""
        if not self.shared:
            return succeed([self.process_figures()])
        from accel.cache.figures import live_figures

        def read(_) -> list[dict]:
            return [p for p in live_figures(self.cache.settings.dir) if "traffic" in p] or [self.process_figures()]

        return self.cache.exchange.refresh().addCallback(read)

    def status_document(self) -> Deferred:
        """Fires with (the status document's figures, the processes' figures they sum: ``processes``)."""

        def document(processes: list[dict]) -> tuple[dict, list[dict]]:
            disk = self.cache.store.disk.stats() if self.cache is not None else None
            return build_document(processes, disk, time.time()), processes

        return self.processes().addCallback(document)

    def reload(self, config: Config) -> list[str]:
        """Serve ``config`` from now on; returns what it changes that needs a restart (kept as it was)."""
        previous = self.generation.config
        self._apply(self._build(config))
        return [what for what, read in RESTART_TO_CHANGE if read(previous) != read(config)]

    def drain(self, timeout: float) -> Deferred:
        """Stop serving: fires with the number of requests still in flight, 0 once they all finished and every
        client connection closed (``AccelSite.stop_serving``), more after ``timeout``."""
        closed = self.site.stop_serving()
        closed.addTimeout(timeout, self.reactor, onTimeoutCancel=lambda result, timeout: None)
        requests = self.in_flight.wait(self.reactor, timeout)
        return gatherResults([requests, closed]).addCallback(lambda results: results[0])

    def close(self) -> Deferred:
        self.balancers.stop()
        self.tunnels.close()
        closing = [clients.close() for clients in self.clients + list(self.peer_purges.values())]
        if self.cache is not None:
            closing.append(self.cache.close())
        if self.buckets is not None:
            self.buckets.close()
        return gatherResults(closing)


def _origin_tls(config: Config) -> tuple:
    """What the origin clients are built from besides each route's own keys: the https origins' TLS settings."""
    return tuple((r.origin.key, r.tls_verify, r.tls_ca, r.tls_client_cert, r.tls_client_key)
                 for r in config.routes if r.origin is not None and r.origin.scheme == "https")


class InFlight:
    """Counts the requests being answered, and tells when there are none left."""

    def __init__(self):
        self.count = 0
        self._waiting: list[Deferred] = []

    def started(self, request) -> None:
        self.count += 1
        request.when_over(self._finished)

    def _finished(self, _) -> None:
        self.count -= 1
        if self.count == 0:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(0)

    def wait(self, reactor, timeout: float) -> Deferred:
        if self.count == 0:
            return succeed(0)
        d = Deferred()
        self._waiting.append(d)
        d.addTimeout(timeout, reactor, onTimeoutCancel=lambda result, timeout: self.count)
        return d


class Counted(Resource):
    """The resource a generation serves: its ReverseProxy, with the request counted while in flight."""

    isLeaf = True

    def __init__(self, proxy: ReverseProxy, in_flight: InFlight):
        super().__init__()
        self.proxy = proxy
        self.in_flight = in_flight

    def render(self, request):
        self.in_flight.started(request)
        return self.proxy.render(request)


class CacheRuntime:
    """The cache's storage for this process, and its housekeeping timers."""

    FLUSH_ACCESS_EVERY = 30.0  # persist LRU recency
    COLLECT_ORPHANS_EVERY = 600.0  # bodies of writes a crash interrupted
    SYNC_EVERY = 60.0  # fsync, in a thread: LMDB runs with sync=False (see accel.cache.store)
    PUBLISH_FIGURES_EVERY = 1.0  # this process's memory-tier figures, for accel cache stats

    def __init__(self, settings: CacheSettings, reactor, shared: bool = False):
        """``shared``: worker processes use this cache at once, so misses collapse across them."""
        from accel.cache.epoch import PurgeEpoch
        from accel.cache.figures import ProcessFigures
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
        self.leases = None
        if shared:
            from accel.cache.lease import LeaseTable

            self.leases = LeaseTable(settings.dir)
        self.figures = ProcessFigures(settings.dir)
        self.process_figures = memory.stats  # what the figures are (accel.app.Accelerator replaces it)
        self.exchange = None  # worker processes: asks the others to publish now, for the status page
        if shared:
            from accel.cache.figures import FiguresExchange

            self.exchange = FiguresExchange(reactor, settings.dir, self.publish_figures)
        self.collapsers = []
        self.layers = []
        self.closed: Deferred | None = None
        self.syncing: Deferred | None = None  # the fsync running in a thread, if one is
        now = reactor.seconds
        self.timers = [
            self._every(self.FLUSH_ACCESS_EVERY, lambda: run_batches(reactor, disk.flush_access_batches(now()))),
            self._every(self.COLLECT_ORPHANS_EVERY, lambda: disk.collect_orphans(now() - self.COLLECT_ORPHANS_EVERY)),
            self._every(self.SYNC_EVERY, self.sync, now=False),
            self._every(self.PUBLISH_FIGURES_EVERY, self.publish_figures),
        ]
        if self.leases is not None:
            self.timers.append(self._every(self.COLLECT_ORPHANS_EVERY, lambda: self.leases.sweep(now())))

    def publish_figures(self) -> None:
        self.figures.publish(self.process_figures())

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

    def layer(self, forwarder, settings: CacheSettings | None = None):
        """A cache layer around ``forwarder`` (one per configuration generation: ``settings`` may differ from
        the storage's own); its misses collapse across processes when worker processes share the cache."""
        from accel.cache.collapse import Collapser
        from accel.cache.layer import CacheLayer

        s = settings or self.settings
        collapser = Collapser(self.reactor, s.collapse_timeout, s.collapse_max_waiters)
        if self.leases is not None:
            from accel.cache.shared_collapse import SharedCollapser

            collapser = SharedCollapser(collapser, self.leases, self.reactor, s.hit_for_miss_ttl)
            self.collapsers.append(collapser)
        layer = CacheLayer(forwarder, self.store, s, self.reactor, collapser=collapser)
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
        for collapser in self.collapsers:
            collapser.close()
        if self.leases is not None:
            self.leases.close()
        if self.exchange is not None:
            self.exchange.close()
        self.figures.close()
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


YOUNG_OBJECTS_BEFORE_COLLECTING = 10_000
"""The cyclic garbage collector's first threshold while serving (CPython's default is 700)."""


def settle_garbage_collection() -> None:
    """Once a serving process has started: what start-up built (modules, configuration, tables) lives as long
    as the process, so it moves out of the collector's sight (``gc.freeze``), and young objects are collected
    less often. A request's objects form no reference cycles (they are freed as soon as it ends), so the
    collector has little to find; with CPython's defaults it took about a tenth of a pass-through request's
    CPU, mostly re-walking the start-up objects."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS_BEFORE_COLLECTING, older, oldest)
