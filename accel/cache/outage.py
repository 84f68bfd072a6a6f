"""Origins that are failing, as the cache sees them: what lets stale content shield a down origin.

While an origin is down (refused, unreachable, timed out or answering 5xx), requests that stale content may
answer (RFC 5861 §4, ``[cache] grace``) are served from the store without asking the origin again for
``RETRY_AFTER`` seconds after its last failure: no tight retry loop against an origin that is down. A miss,
which has nothing to serve instead, still goes to the origin. One warning a minute per origin says so.
Pure: the caller passes ``now``.
"""

from __future__ import annotations

RETRY_AFTER = 1.0  # seconds a failed origin is left alone while stale content serves
WARN_EVERY = 60.0  # at most one "origin down" warning a minute per origin


class Outages:
    def __init__(self):
        self._failed_at: dict[str, float] = {}
        self._warned_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def failed(self, origin: str, now: float) -> int | None:
        """Record a failure of ``origin``; the number of failures since the last warning when one is due
        now (the caller logs it), else None."""
        self._failed_at[origin] = now
        self._failures[origin] = self._failures.get(origin, 0) + 1
        if now - self._warned_at.get(origin, float("-inf")) < WARN_EVERY:
            return None
        self._warned_at[origin] = now
        return self._failures.pop(origin)

    def answered(self, origin: str) -> None:
        """``origin`` answered (not with a 5xx): it is up again."""
        if self._failed_at.pop(origin, None) is not None:
            self._warned_at.pop(origin, None)
            self._failures.pop(origin, None)

    def resting(self, origin: str, now: float) -> bool:
        """Whether ``origin`` failed less than ``RETRY_AFTER`` seconds ago: serve stale without asking it."""
        failed_at = self._failed_at.get(origin)
        return failed_at is not None and now - failed_at < RETRY_AFTER
