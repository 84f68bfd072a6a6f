"""The worker side: ``python -m accel.workers.worker ARGS`` runs ``twistd accel ARGS`` as one of the
supervisor's workers.

A worker builds the same site as a single process (``accel.app.build_site``), but instead of opening its
listeners it adopts the supervisor's (``adopting``); the descriptors and the endpoint strings they belong to
arrive in the ``ACCEL_WORKER_LISTENERS`` environment variable. Its other descriptors:

- 0: a pipe from the supervisor; its end means the supervisor is gone, and the worker stops. ``drain`` on it:
  the supervisor's stop has begun (the health check answers 503).
- 1: the supervisor's standard output (where ``access_log = "-"`` writes).
- 2: a pipe to the supervisor, which puts each log line into its own log with the worker's pid.
- 3: a pipe to the supervisor: ``ready`` once every listener accepts; ``health-asked`` once the health check
  has been asked for (a balancer polls it: the supervisor's stop waits ``drain_delay``).
"""

from __future__ import annotations

import json
import os
import sys

from twisted.application import service
from twisted.internet import stdio
from twisted.internet.protocol import Protocol
from twisted.logger import FileLogObserver, eventAsText

from accel.config import ConfigError
from accel.workers.listeners import Inherited, adopt

ENVIRONMENT = "ACCEL_WORKER_LISTENERS"
CONTROL_FD = 3
FIRST_LISTENER_FD = 4
READY = b"ready\n"
DRAIN = b"drain\n"  # from the supervisor: its stop has begun, the health check answers 503
HEALTH_ASKED = b"health-asked\n"  # to the supervisor: a balancer polls the health check


def encode(listeners: list[Inherited]) -> str:
    return json.dumps([[l.fd, l.family, l.description, l.backlog] for l in listeners])


def inherited_listeners(environ=os.environ) -> list[Inherited] | None:
    """The listeners a supervisor handed to this process, or None when it runs on its own."""
    value = environ.get(ENVIRONMENT)
    if value is None:
        return None
    return [Inherited(*item) for item in json.loads(value)]


class AdoptedListener(service.Service):
    """Accepts on one inherited listening socket while the service runs."""

    def __init__(self, reactor, listener: Inherited, factory):
        self.reactor, self.listener, self.factory = reactor, listener, factory
        self.port = None

    def startService(self) -> None:
        super().startService()
        self.port = adopt(self.reactor, self.listener, self.factory)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()


def adopting(reactor, listeners: list[Inherited], source: str):
    """A ``serve(description, factory)`` that builds a service accepting on the inherited socket opened for
    ``description``."""
    by_description = {listener.description: listener for listener in listeners}

    def serve(description: str, factory) -> service.IService:
        listener = by_description.get(description)
        if listener is None:
            raise ConfigError(source, "listen", "the listeners the supervisor opened (restart to change them)",
                              description)
        return AdoptedListener(reactor, listener, factory)

    return serve


class _Control(Protocol):
    def __init__(self, reactor, on_drain):
        self.reactor = reactor
        self.on_drain = on_drain
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(READY)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if DRAIN in self.received:
            self.received = b""
            self.on_drain()

    def connectionLost(self, reason) -> None:
        if self.reactor.running:
            self.reactor.stop()


class SupervisorLink(service.Service):
    """Tells the supervisor that this worker accepts (add it after the listeners), and stops the worker
    when the supervisor's end of the pipe closes."""

    def __init__(self, reactor, on_drain=lambda: None):
        self.reactor = reactor
        self.on_drain = on_drain
        self.control: _Control | None = None

    def startService(self) -> None:
        super().startService()
        self.control = _Control(self.reactor, self.on_drain)
        stdio.StandardIO(self.control, stdin=0, stdout=CONTROL_FD, reactor=self.reactor)

    def health_asked(self) -> None:
        if self.control is not None and self.control.transport is not None:
            self.control.transport.write(HEALTH_ASKED)


def log_observer():
    """twistd's ``--logger``: log text without a time stamp on standard error; the supervisor adds the time
    and the worker's pid."""
    return FileLogObserver(sys.stderr, lambda event: eventAsText(event, includeTimestamp=False) + "\n")


def main() -> None:
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only; it stops the workers in order
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "--logger=accel.workers.worker.log_observer", "accel", *sys.argv[1:]]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
