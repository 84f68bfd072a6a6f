"""Running long store changes in bounded steps without stalling the reactor.

The disk store makes purges, clears, repairs and access flushes as generators that commit one bounded
write transaction per step (``DiskStore.*_batches``, ``TieredStore.purge_batches``). ``run_batches``
drives such a generator from the reactor: one step per turn, so requests are served in between.
"""

from __future__ import annotations

from collections.abc import Iterator

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def run_batches(reactor, batches: Iterator[int]) -> Deferred[int]:
    """Run one step of ``batches`` per reactor turn; fires with the sum of the steps' counts (or fails
    with the first step's exception)."""
    done: Deferred[int] = Deferred()
    total = 0

    def step() -> None:
        nonlocal total
        try:
            count = next(batches)
        except StopIteration:
            done.callback(total)
        except Exception:
            done.errback(Failure())
        else:
            total += count
            reactor.callLater(0, step)

    step()
    return done
