"""A timer for silences: it fires when nothing happened for a while, and costs one assignment per event."""

from __future__ import annotations

from collections.abc import Callable


class IdleTimer:
    """Fires ``expired`` when ``touch`` has not been called for ``seconds``; touching costs one assignment."""

    def __init__(self, reactor, seconds: float, expired: Callable[[], None]):
        self.reactor, self.seconds, self.expired = reactor, seconds, expired
        self.last = reactor.seconds()
        self._call = reactor.callLater(seconds, self._check)

    def touch(self) -> None:
        self.last = self.reactor.seconds()

    def _check(self) -> None:
        idle = self.reactor.seconds() - self.last
        if idle >= self.seconds:
            self._call = None
            expired, self.expired = self.expired, _stopped
            expired()
        else:
            self._call = self.reactor.callLater(self.seconds - idle, self._check)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.expired = _stopped  # whatever it would have called (often its owner) is let go


def _stopped() -> None:
    """What a stopped or fired timer holds instead of its callback: no reference cycle keeps its owner."""
