"""The operator's signals while accel runs: SIGHUP (reload) and SIGUSR1 (reopen the log files), for one
process serving (``accel.tap.Operations``) and for a supervisor of workers (``accel.workers.supervisor``)."""

from __future__ import annotations

import signal


class OperatorSignals:
    """Runs an action in the reactor thread for each signal it is given, from ``install`` to ``restore``.

    twistd's own SIGUSR1 handler (it reopens its ``--logfile``) still runs after the action."""

    CHAINED = (signal.SIGUSR1,)

    def __init__(self, reactor):
        self.reactor = reactor
        self._previous: dict[int, object] = {}

    def install(self, actions: dict[int, object]) -> None:
        for signum, action in actions.items():
            self._previous[signum] = signal.signal(signum, self._handler(signum, action))

    def _handler(self, signum: int, action):
        previous = signal.getsignal(signum)

        def handle(number, frame):
            self.reactor.callFromThread(action)
            if callable(previous) and signum in self.CHAINED:
                previous(number, frame)

        return handle

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
