"""The first process of ``twistd accel --workers N``: it opens every listener, keeps N workers accepting on
them, and serves no request itself.

- **Start**: every listener of the configuration is opened here (``ListenerSet``) and handed to each worker.
- **Supervision**: a worker that exits while it should be serving is logged and replaced at once (after a
  second when it died before it ever accepted, so a worker that cannot start does not spin).
- **Reload (SIGHUP)**: the configuration is read and checked again. A mistake is logged in one line and the
  workers keep serving. Otherwise a new generation of workers starts with it (listeners it adds are opened,
  the others are shared); once every new worker accepts, the previous ones get SIGTERM and finish their
  in-flight requests (up to ``shutdown_timeout``, then SIGKILL). If a new worker exits before accepting, the
  new generation is abandoned and the previous one keeps serving.
- **Log files (SIGUSR1)**: passed on to every worker, which reopens its access log; the supervisor reopens
  its own twistd `--logfile`.
- **Stop (SIGTERM, SIGINT)**: every worker is told to answer 503 on the health check, and goes on serving for
  ``[cluster] drain_delay`` (once a worker has told that the health check was asked for: with no balancer
  polling it, no one would see the 503); then every worker gets SIGTERM and up to ``shutdown_timeout`` (plus a margin) to finish;
  those still running then get SIGKILL; then the listeners close.
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError, ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from accel.config import Config, ConfigProblems
from accel.proxy.manager_record import forget as forget_manager_changes
from accel.workers.listeners import ListenerSet
from accel.workers.signals import OperatorSignals
from accel.workers.worker import CONTROL_FD, DRAIN, ENVIRONMENT, FIRST_LISTENER_FD, HEALTH_ASKED, READY, encode

log = Logger()

KILL_MARGIN = 2.0  # seconds past shutdown_timeout before a stopping worker gets SIGKILL
RESTART_DELAY = 1.0  # before replacing a worker that exited without ever accepting
WORKER_MODULE = "accel.workers.worker"


def listener_descriptions(config: Config) -> tuple[str, ...]:
    """Every endpoint a configuration listens on: plain HTTP, HTTPS (accel wraps TLS itself), redirects."""
    found = config.listen + tuple(l.endpoint for l in config.tls.listeners) + config.tls.redirect_listen
    return tuple(dict.fromkeys(found))


class WorkerProcess(ProcessProtocol):
    """One worker as the supervisor sees it: its log lines, its readiness, its end."""

    def __init__(self, on_end, on_health_asked=lambda: None):
        self.on_end = on_end
        self.on_health_asked = on_health_asked
        self.pid: int | None = None
        self.accepting = False
        self.health_asked = False
        self.ready: defer.Deferred[bool] = defer.Deferred()  # True once it accepts, False if it ended first
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._log = b""
        self._control = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self._log += data
            *lines, self._log = self._log.split(b"\n")
            for line in lines:
                self._relay(line)
        elif fd == CONTROL_FD:
            self._control += data
            if not self.accepting and READY in self._control:
                self.accepting = True
                self.ready.callback(True)
            if not self.health_asked and HEALTH_ASKED in self._control:
                self.health_asked = True
                self.on_health_asked()

    def _relay(self, line: bytes) -> None:
        if line.strip():
            log.info("worker {pid}: {line}", pid=self.pid, line=line.decode("utf-8", "replace"))

    def signal(self, which) -> None:
        """``which``: "TERM", "KILL" (names Twisted knows) or a signal number."""
        try:
            self.transport.signalProcess(which)
        except ProcessExitedAlready:
            pass

    def tell(self, message: bytes) -> None:
        """Write a control message to the worker's standard input."""
        try:
            self.transport.writeToChild(0, message)
        except (KeyError, OSError):
            pass  # it is gone already

    def processEnded(self, reason) -> None:
        if self._log:
            self._relay(self._log)
        if not self.ready.called:
            self.ready.callback(False)
        self.on_end(self, reason)
        self.ended.callback(None)


def _exit_description(reason) -> str:
    if reason.check(ProcessDone):
        return "exit status 0"
    value = reason.value
    if getattr(value, "signal", None):
        return f"killed by signal {value.signal}"
    return f"exit status {getattr(value, 'exitCode', '?')}"


class Supervisor(service.Service):
    def __init__(self, config: Config, reload_config, worker_args: list[str], reactor):
        """``reload_config()`` reads and checks the configuration again (raising ConfigProblems); ``worker_args`` are the
        ``twistd accel`` arguments each worker runs with."""
        self.config = config
        self.reload_config = reload_config
        self.worker_args = worker_args
        self.reactor = reactor
        self.listeners = ListenerSet(reactor)
        self.workers: list[WorkerProcess] = []  # the generation that serves
        self.alive: set[WorkerProcess] = set()
        self.stopping = False
        self.reloading = False
        self.health_asked = False  # a worker told that the health check was asked for: a stop waits drain_delay
        self.signals = OperatorSignals(reactor)

    # -- start and supervision -----------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Listeners open before twistd gives up root (--uid/--gid): port 80 needs it, the workers don't."""
        super().privilegedStartService()
        self._open_listeners(self.config)

    def startService(self) -> None:
        super().startService()
        if self.config.cache.dir is not None:  # the balancer manager's changes of a previous run: not this one's
            forget_manager_changes(self.config.cache.dir)
        self.workers = [self._spawn(self.config) for _ in range(self.config.workers)]
        log.info("supervisor {pid}: started {n} workers", pid=os.getpid(), n=len(self.workers))
        self.signals.install({signal.SIGHUP: self.reload, signal.SIGUSR1: self.reopen_logs})

    def _open_listeners(self, config: Config) -> None:
        for description in listener_descriptions(config):
            if description not in self.listeners.ports:
                self.listeners.open(description)
                log.info("listening on {description} (address {address})", description=description,
                         address=self.listeners.address(description))

    def _spawn(self, config: Config) -> WorkerProcess:
        child_fds, inherited = self.listeners.descriptors(listener_descriptions(config), FIRST_LISTENER_FD)
        env = dict(os.environ, **{ENVIRONMENT: encode(inherited)})
        worker = WorkerProcess(self._ended, on_health_asked=lambda: self._health_asked(worker))
        argv = [sys.executable, "-m", WORKER_MODULE, *self.worker_args]
        self.reactor.spawnProcess(worker, sys.executable, argv, env=env,
                                  childFDs={0: "w", 1: 1, 2: "r", CONTROL_FD: "r", **child_fds})
        self.alive.add(worker)
        worker.ready.addCallback(self._accepts, worker)
        return worker

    @staticmethod
    def _accepts(accepting: bool, worker: WorkerProcess) -> bool:
        if accepting:
            log.info("worker {pid} accepts", pid=worker.pid)
        return accepting

    def _ended(self, worker: WorkerProcess, reason) -> None:
        self.alive.discard(worker)
        if worker not in self.workers:
            log.info("worker {pid} exited ({why})", pid=worker.pid, why=_exit_description(reason))
            return
        self.workers.remove(worker)
        if self.stopping:
            log.info("worker {pid} exited ({why})", pid=worker.pid, why=_exit_description(reason))
            return
        log.warn("worker {pid} exited ({why}); starting a replacement", pid=worker.pid, why=_exit_description(reason))
        if worker.accepting:
            self._replace()
        else:
            self.reactor.callLater(RESTART_DELAY, self._replace)

    def _health_asked(self, worker: WorkerProcess) -> None:
        if not self.health_asked:
            self.health_asked = True
            log.info("worker {pid}: the health check is asked for: a stop will serve on for drain_delay first",
                     pid=worker.pid)

    def _replace(self) -> None:
        if not self.stopping:
            self.workers.append(self._spawn(self.config))

    # -- reload --------------------------------------------------------------------------------------

    def reload(self) -> defer.Deferred | None:
        """SIGHUP: a new generation of workers with the configuration as it is now on disk."""
        if self.stopping:
            return None
        if self.reloading:
            log.info("reload already in progress: SIGHUP ignored")
            return None
        try:
            config = self.reload_config()
            self._open_listeners(config)
        except (ConfigProblems, CannotListenError) as e:
            self.listeners.close_except(listener_descriptions(self.config))  # those this reload opened
            log.error("reload refused: {error}; the workers keep the previous configuration", error=str(e))
            return None
        self.reloading = True
        new = [self._spawn(config) for _ in range(config.workers)]
        d = defer.gatherResults([w.ready for w in new])
        d.addCallback(lambda ready: self._switch(config, new) if all(ready) else self._abandon(new))
        return d

    def _switch(self, config: Config, new: list[WorkerProcess]) -> defer.Deferred:
        previous, self.workers, self.config = self.workers, new, config
        log.info("reloaded: {n} workers accept with the new configuration; {m} previous workers finish their requests",
                 n=len(new), m=len(previous))
        d = self._terminate(previous, config.shutdown_timeout)
        d.addCallback(lambda _: self._reloaded())
        return d

    def _reloaded(self) -> None:
        self.listeners.close_except(listener_descriptions(self.config))
        self.reloading = False

    def _abandon(self, new: list[WorkerProcess]) -> defer.Deferred:
        log.error("reload failed: a new worker exited before accepting; the previous workers keep serving")
        d = self._terminate(new, 0)
        d.addCallback(lambda _: self._reloaded())
        return d

    def reopen_logs(self) -> None:
        """SIGUSR1: every worker reopens its log files."""
        for worker in self.alive:
            worker.signal(signal.SIGUSR1)

    # -- stop ----------------------------------------------------------------------------------------

    def _terminate(self, workers, timeout: float) -> defer.Deferred:
        """SIGTERM each worker; SIGKILL those still running after ``timeout`` plus a margin."""
        workers = [w for w in workers if w in self.alive]
        for worker in workers:
            worker.signal("TERM")
        deadline = self.reactor.callLater(timeout + KILL_MARGIN, self._kill, workers)
        d = defer.gatherResults([w.ended for w in workers])
        d.addCallback(lambda _: deadline.active() and deadline.cancel())
        return d

    def _kill(self, workers) -> None:
        for worker in workers:
            if worker in self.alive:
                log.warn("worker {pid} still running after shutdown_timeout: SIGKILL", pid=worker.pid)
                worker.signal("KILL")

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.stopping = True
        self.signals.restore()
        for worker in self.alive:
            worker.tell(DRAIN)
        delay = self.config.cluster.drain_delay
        if delay > 0 and not self.health_asked:
            log.info("stopping: the health check was never asked for: no drain_delay")
            delay = 0
        if delay > 0:
            log.info("stopping: the health check answers 503; serving {delay:g} s more (drain_delay)", delay=delay)
        d = task.deferLater(self.reactor, delay, lambda: None)
        d.addCallback(lambda _: log.info("stopping {n} workers", n=len(self.alive)))
        d.addCallback(lambda _: self._terminate(list(self.alive), self.config.shutdown_timeout))
        d.addCallback(lambda _: self.listeners.close())
        return d
