"""Request collapsing: concurrent misses for one URL make one origin request.

The first miss for a key becomes the leader and fetches; the others wait until the leader is done
(stored, not storable, or failed) and then look the URL up again: a hit if the leader stored it, otherwise
they go to the origin on their own. Waiting is capped in time and in the number of waiters per key.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed


class Collapser:
    def __init__(self, reactor, timeout: float, max_waiters: int):
        self.reactor = reactor
        self.timeout = timeout
        self.max_waiters = max_waiters
        self.waiting: dict[str, list[Deferred]] = {}

    def join(self, key: str) -> Deferred | None:
        """None when no fetch for ``key`` is in flight: the caller leads and must ``release`` the key.

        Otherwise a Deferred that fires when the leader releases the key, when ``timeout`` passes, or at
        once when too many requests already wait.
        """
        waiters = self.waiting.get(key)
        if waiters is None:
            self.waiting[key] = []
            return None
        if len(waiters) >= self.max_waiters:
            return succeed(None)
        waiter: Deferred = Deferred()
        waiters.append(waiter)
        timer = self.reactor.callLater(self.timeout, _fire, waiter)
        waiter.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return waiter

    def has_waiters(self, key: str) -> bool:
        return bool(self.waiting.get(key))

    def release(self, key: str, storable: bool = True) -> None:
        """The leader is done: every waiter looks again. (``storable`` matters to ``SharedCollapser``, which
        tells other processes; here the layer's own hit-for-miss table covers it.)"""
        for waiter in self.waiting.pop(key, []):
            _fire(waiter)

    def release_all(self) -> None:
        for key in list(self.waiting):
            self.release(key)


def _fire(waiter: Deferred) -> None:
    if not waiter.called:
        waiter.callback(None)
