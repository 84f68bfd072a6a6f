"""``twistd accel``: command-line options and the service tree (the only place that touches the reactor)."""

from __future__ import annotations

import os
import signal
import sys

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage

from accel.app import startup_problems
from accel.config import COMMAND_LINE, Config, ConfigError, ConfigProblems, load_config, located, with_overrides
from accel.http.listening import listening_service
from accel.workers.signals import OperatorSignals
from accel.workers.worker import inherited_listeners
from accel.http.reactor import install as install_reactor

log = Logger()


class Options(usage.Options):
    synopsis = (
        "[--config FILE] [--listen ENDPOINT ...] [--origin URL] [--cache-dir DIR] [--access-log PATH] [--workers N]"
    )
    longdesc = "Run accel, the caching HTTP accelerator. Command-line options override the configuration file."
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["origin", None, None, "Origin URL for a single route '/' (config-less start)."],
        ["cache-dir", None, None, "Directory of the cache (LMDB)."],
        ["access-log", None, None, "Access log file; '-' for standard output."],
        ["workers", None, None, "Worker processes accepting on the listeners, or 'auto' (one per CPU) [default: 1]."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listening endpoint (repeatable), e.g. tcp:8080:interface=127.0.0.1 or ssl:8443:... [default: tcp:8080]"""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        install_reactor()  # before anything imports Twisted's default one
        # Problems are one line each, naming the file, key and expectation; twistd would print its usage first.
        # A worker only reads the configuration: its supervisor checked these files just before starting it
        # (at start, and at each reload). What changed on disk since is found as the worker builds its site
        # (makeService), and is one line too.
        try:
            if inherited_listeners() is None:
                self.config = self.checked_config()
            else:
                self.config = effective_config(self["config"], self.overrides())
        except ConfigError as e:
            report([e])
            raise SystemExit(1) from None
        except ConfigProblems as e:
            report(e.problems)
            raise SystemExit(1) from None

    def overrides(self) -> dict:
        """The command-line options, as ``with_overrides``' keywords."""
        return {"listen": tuple(self["listen"]), "origin": self["origin"], "cache_dir": self["cache-dir"],
                "access_log": self["access-log"], "workers": self["workers"]}

    def checked_config(self, cache_in_use: str | None = None) -> Config:
        """The configuration file (if any) with the command-line options over it, checked as start-up does:
        see ``checked_config``."""
        return checked_config(self["config"], self.overrides(), cache_in_use)


def report(problems) -> None:
    """One line a problem on the process's real standard error (twistd sends ``sys.stderr`` to its log once it
    has started logging)."""
    for problem in problems:
        print(f"accel: {problem}", file=sys.__stderr__, flush=True)


def checked_config(path: str | None, overrides: dict | None = None, cache_in_use: str | None = None) -> Config:
    """The configuration ``twistd accel`` would start with: the file at ``path`` (None: the defaults) with the
    command-line ``overrides`` (``with_overrides``' keywords), after every check start-up makes before it binds
    its ports (``config_problems``). Raises ConfigProblems, each problem one line naming the file, the key and
    what was expected: ``twistd accel``, its SIGHUP, a supervisor's reload and ``accel check-config`` report
    them."""
    try:
        config = effective_config(path, overrides)
        problems = config_problems(config, cache_in_use)
    except ConfigError as e:
        problems = [e]
    if problems:
        raise ConfigProblems(problems)
    return config


def effective_config(path: str | None, overrides: dict | None = None) -> Config:
    """The file at ``path`` (None: the defaults) with the command-line ``overrides`` over it; parsed, not
    checked further (raises ConfigError)."""
    return with_overrides(load_config(path) if path else Config(), **(overrides or {}))


def listener_keys(config: Config) -> list[tuple[str, str, str]]:
    """(source, key, endpoint description) of every listener, for messages."""
    source, key = config.origin_of("server.listen", "--listen")
    found = [(source, key, d) for d in config.listen]
    found += [(config.source, f"{l.where}.listen" if l.where == "tls" else f"{l.where}.endpoint", l.endpoint)
              for l in config.tls.listeners]
    found += [(config.source, "tls.redirect.listen", d) for d in config.tls.redirect_listen]
    return found


def config_problems(config: Config, cache_in_use: str | None = None) -> list[ConfigError]:
    """Everything start-up checks before binding its ports; [] when accel can start (``cache_in_use``: see
    ``startup_problems``)."""
    problems = []
    if not config.routes:
        problems.append(ConfigError(config.source, "route", "at least one [[route]] (or --origin URL)"))
    for source, key, description in listener_keys(config):
        try:
            check_endpoint(source, key, description)
        except ConfigError as e:
            problems.append(located(e))
    return problems + startup_problems(config, cache_in_use)


def check_endpoint(source: str, key: str, description: str) -> None:
    """Parse an endpoint description without listening, so a typo is a config error and not a traceback.
    (An ``ssl:`` endpoint loads its certificate and key here.)"""
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:  # what a parser raises is its own business: ValueError, KeyError, OSError, SSL.Error...
        raise ConfigError(source, key, "a Twisted server endpoint such as tcp:8080", f"{description} ({_reason(e)})") from None


def _start_failure(config: Config, error: Exception) -> str:
    """One line for a failure to build the server after the checks passed (or, in a worker, were left to
    its supervisor)."""
    import lmdb

    from accel.cache.store import IncompatibleStore

    if config.cache.dir and isinstance(error, (lmdb.Error, IncompatibleStore, OSError)):
        source, key = config.origin_of("cache.dir", "--cache-dir")
        return str(located(ConfigError(source, key, "a cache accel can open", f"{config.cache.dir} ({_reason(error)})")))
    if isinstance(error, ConfigError):
        return str(located(error))
    return f"{config.source}: accel could not start: {_reason(error)}"


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error) or type(error).__name__


def worker_arguments(options) -> list[str]:
    """The ``twistd accel`` arguments a worker runs with: the same configuration as the supervisor."""
    args = ["--config", os.path.abspath(options["config"])] if options["config"] else []
    for description in options["listen"]:
        args += ["--listen", description]
    for name in ("origin", "cache-dir", "access-log", "workers"):
        if options[name] is not None:
            args += [f"--{name}", options[name]]
    return args


def makeService(options: Options) -> service.IService:
    """One process serving; or, with ``workers`` > 1, the supervisor of the workers; or one of those workers
    (started by the supervisor with the listeners it inherits)."""
    from twisted.internet import reactor

    from accel.app import build_site, settle_garbage_collection
    from accel.workers.worker import SupervisorLink, adopting

    config = options.config
    inherited = inherited_listeners()
    if inherited is None and config.workers > 1:
        from accel.workers.supervisor import Supervisor

        return Supervisor(config, options.checked_config, worker_arguments(options), reactor)
    if inherited is None:
        def serve(description, factory):
            return listening_service(description, factory, reactor)
    else:
        serve = adopting(reactor, inherited, config.source)
    try:
        site = build_site(config, reactor)
        top, stores = _listeners(config, site, serve, reactor)
    except Exception as e:  # what changed on disk since the checks (a cache opened by another process, a full
        # disk, a certificate replaced), or a listener the supervisor did not open
        report([_start_failure(config, e)])
        raise SystemExit(1) from None
    operations = Operations(options, site.accelerator, stores, reactor)
    top.addService(operations)
    reactor.callWhenRunning(settle_garbage_collection)
    if inherited is None:
        top.before_stopping = operations.leave  # a worker's supervisor keeps the listeners while it drains
    else:
        health = site.accelerator.health

        def drain():
            health.draining = True
            log.info("accel: stopping: the health check answers 503 (the supervisor's stop has begun)")

        # After the listeners: it tells the supervisor we accept. The supervisor's stop begins with "drain".
        link = SupervisorLink(reactor, on_drain=drain)
        health.on_asked = link.health_asked  # the supervisor's stop waits drain_delay only then
        top.addService(link)
    return top


def _listeners(config: Config, site, serve, reactor) -> tuple[Listeners, list]:
    """The listening services of ``config`` (``serve(description, factory)`` makes one), and the certificate
    stores of the TLS ones."""
    top = Listeners()
    for source, key, description in listener_keys(config)[: len(config.listen)]:
        top.listen(serve(description, site), source, key, description)
    stores = []
    if config.tls.listeners or config.tls.redirect_listen:
        from accel.tls.listeners import tls_services

        tls_keys = listener_keys(config)[len(config.listen) :]
        for tls_service, (source, key, description) in zip(tls_services(config, site, reactor, serve), tls_keys):
            top.listen(tls_service, source, key, description)
            store = getattr(getattr(tls_service, "factory", None), "store", None)
            if store is not None:
                stores.append(store)
    return top, stores


class Listeners(service.MultiService):
    """The listening services; a port that cannot be bound stops the start with one line naming it."""

    def __init__(self):
        super().__init__()
        self.described: dict[service.IService, tuple[str, str, str]] = {}
        self.before_stopping = None  # returns a Deferred: the listeners stop (and the drain begins) once it fired

    def stopService(self):
        if self.before_stopping is None:
            return super().stopService()
        return self.before_stopping().addCallback(lambda _: service.MultiService.stopService(self))

    def listen(self, child: service.IService, source: str, key: str, description: str) -> None:
        self.described[child] = (source, key, description)
        child.setServiceParent(self)

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        for child in self:
            try:
                child.privilegedStartService()
            except Exception as e:
                source, key, description = self.described.get(child, ("accel", "listen", "?"))
                reason = getattr(e, "socketError", None) or e
                problem = located(ConfigError(source, key, "an endpoint accel can listen on",
                                              f"{description} ({_reason(reason)})"))
                log.critical("accel: {problem}", problem=str(problem))  # for a daemon's log file
                report([problem])
                raise SystemExit(1) from None


class Operations(service.Service):
    """Signals while accel runs, and its stop.

    SIGHUP: re-read the configuration and serve it to new requests (an invalid one is refused with one log
    line and the running one stays); certificates and log files are reloaded too. SIGUSR1: reopen the log
    files (after a rotation). SIGTERM / SIGINT (twistd stops the reactor): the health check answers 503 and
    everything goes on serving for ``[cluster] drain_delay`` seconds (``leave``: the balancer in front takes
    the node out meanwhile); then accel stops accepting connections, lets the requests in flight finish and
    each keep-alive connection answer one more request with ``Connection: close`` (``AccelSite.stop_serving``)
    for up to ``[server] shutdown_timeout`` seconds, and closes.
    """

    def __init__(self, options: Options, accelerator, stores, reactor):
        self.options, self.accelerator, self.stores, self.reactor = options, accelerator, stores, reactor
        self.signals = OperatorSignals(reactor)

    def startService(self) -> None:
        super().startService()
        self.signals.install({signal.SIGHUP: self.reload, signal.SIGUSR1: self.reopen_logs})
        log.info("accel: running (pid {pid}): SIGHUP reloads the configuration, SIGUSR1 reopens the log files,"
                 " SIGTERM stops after the requests in flight", pid=os.getpid())

    def reload(self) -> None:
        source = self.options["config"] or COMMAND_LINE
        running = self.accelerator.cache
        try:
            config = self.options.checked_config(running.settings.dir if running is not None else None)
        except ConfigProblems as e:
            log.error("accel: configuration not reloaded, the running one stays in service: {problems}",
                      problems=str(e))
            return
        needs_restart = self.accelerator.reload(config)
        by_endpoint = {listener.endpoint: listener for listener in config.tls.listeners}
        for store in self.stores:
            listener = by_endpoint.get(store.listener.endpoint)
            if listener is not None:
                store.listener, store.settings = listener, config.tls
            store.reload("SIGHUP")
        log.info("accel: configuration reloaded from {source}", source=source)
        for what in needs_restart:
            log.warn("accel: {what} changed in {source}: restart accel to apply (the previous ones stay in use)",
                     what=what, source=source)

    def reopen_logs(self) -> None:
        self.accelerator.site.use_access_log(self.accelerator.site.access_log)
        log.info("accel: log files reopened")

    def leave(self) -> Deferred:
        """A stop's first step: the health check answers 503 while accel serves on for ``drain_delay``; not when
        nothing has asked for the health check (no balancer polls it, so no one would see the 503)."""
        health = self.accelerator.health
        health.draining = True
        delay = self.accelerator.generation.config.cluster.drain_delay
        if delay <= 0:
            return succeed(None)
        if not health.asked:
            log.info("accel: stopping: the health check was never asked for: no drain_delay")
            return succeed(None)
        log.info("accel: stopping: the health check answers 503; serving {delay:g} s more (drain_delay)", delay=delay)
        return deferLater(self.reactor, delay)

    def stopService(self):
        super().stopService()
        self.signals.restore()
        timeout = self.accelerator.generation.config.shutdown_timeout
        waiting = self.accelerator.in_flight.count
        if waiting:
            log.info("accel: stopping: waiting up to {timeout:g} s for {n} request(s) in flight",
                     timeout=timeout, n=waiting)

        def drained(left: int):
            if left:
                log.warn("accel: stopping: shutdown_timeout ({timeout:g} s) passed, {n} request(s) cut off",
                         timeout=timeout, n=left)
            elif waiting:
                log.info("accel: stopping: every request in flight finished")
            return self.accelerator.close()

        return self.accelerator.drain(timeout).addCallback(drained)
