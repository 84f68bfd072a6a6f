"""Timers for silences: each fires when nothing happened for a while, and costs one assignment per event.

A proxied request runs two of them (the origin's response timeout, then the body's idle timeout), nearly
always stopped long before they would fire. A delayed call each would cost a ``callLater`` and a ``cancel``
per request; ``Deadlines`` checks all of its timers with one delayed call instead, planned for the earliest
deadline. A timer starts and stops with a set insertion and removal, and a timer that is touched moves its
deadline without any call to the reactor. A check planned for a timer that was stopped meanwhile runs
anyway, finding nothing to do (cancelling it and planning another would cost what one timer per request did);
``close`` cancels it. The timing is exact: a timer fires at the first check at or after its deadline, and a
check is planned for every earliest deadline.
"""

from __future__ import annotations

from collections.abc import Callable

_NEVER = float("inf")


class Deadlines:
    """The ``IdleTimer``s that share one delayed call of ``reactor``."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.timers: set[IdleTimer] = set()  # running
        self._call = None  # the planned check
        self._at = _NEVER  # when it is planned for

    def timer(self, seconds: float, expired: Callable[[], None]) -> IdleTimer:
        """A running timer that calls ``expired`` once it has not been touched for ``seconds``."""
        return IdleTimer(self, seconds, expired)

    def _plan(self, at: float) -> None:
        """Check no later than ``at``."""
        if at < self._at:
            if self._call is not None:
                self._call.cancel()
            self._at = at
            self._call = self.reactor.callLater(max(0.0, at - self.reactor.seconds()), self._check)

    def _check(self) -> None:
        # (a call planned for ``at`` runs at ``at`` at the earliest: the reactor's rounding aside)
        now = max(self.reactor.seconds(), self._at)
        self._call, self._at = None, _NEVER
        expired = [timer for timer in self.timers if timer.last + timer.seconds <= now]
        for timer in expired:
            if timer in self.timers:  # (one that expired may stop another)
                timer.fire()
        if self.timers:
            self._plan(min(timer.last + timer.seconds for timer in self.timers))

    def close(self) -> None:
        """Stop checking (shutdown): the running timers never fire, and are let go."""
        for timer in list(self.timers):
            timer.stop()
        if self._call is not None:
            self._call.cancel()
        self._call, self._at = None, _NEVER


class IdleTimer:
    """Fires ``expired`` when ``touch`` has not been called for ``seconds``; touching costs one assignment."""

    __slots__ = ("deadlines", "seconds", "expired", "last")

    def __init__(self, deadlines: Deadlines, seconds: float, expired: Callable[[], None]):
        self.deadlines, self.seconds, self.expired = deadlines, seconds, expired
        self.last = now = deadlines.reactor.seconds()
        deadlines.timers.add(self)
        deadlines._plan(now + seconds)

    def touch(self) -> None:
        self.last = self.deadlines.reactor.seconds()

    def fire(self) -> None:
        expired = self.expired
        self.stop()
        expired()

    def stop(self) -> None:
        self.deadlines.timers.discard(self)
        self.expired = _stopped  # whatever it would have called (often its owner) is let go


def _stopped() -> None:
    """What a stopped or fired timer holds instead of its callback: no reference cycle keeps its owner."""
