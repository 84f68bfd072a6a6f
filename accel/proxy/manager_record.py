"""The balancer manager's changes, shared by the worker processes of one server.

httpd keeps balancer state in shared memory, so a balancer-manager change reaches every child. Here each
worker has its own balancers; a change made in one is written to ``<cache dir>/balancer-admin.json`` (under
``fcntl.flock`` on ``balancer-admin.json.lock`` for the read-change-write, written to a temporary name then
renamed, so a reader never sees half a file), and ``announce()`` (injected by ``accel.app``: a datagram to
every other live process, ``accel.cache.figures.FiguresExchange.ask``) makes the others read it again
(``Balancers.restore_shared``) before the POST is answered. A worker that starts later (a replacement, the
next generation after SIGHUP) reads it when it configures its balancers. The supervisor removes the file when
it starts (``forget``): a restarted server starts with the configuration, as httpd does.

The entries are ``accel.proxy.balancer``'s (``recorded_changes``, ``manager_state``).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable

from twisted.internet.defer import Deferred

from accel.proxy.balancer import Member, recorded_changes

RECORD = "balancer-admin.json"
ANNOUNCEMENT = b"balancers"  # what ``announce`` asks the other processes (a word of their exchange)


class ManagerRecord:
    """The record of manager changes in a cache directory."""

    def __init__(self, cache_dir: str, announce: Callable[[], Deferred]):
        """``announce()`` has every other process read the record again; it fires once they have (or gave up
        waiting)."""
        self.path = os.path.join(cache_dir, RECORD)
        self.announce = announce

    def entries(self) -> list[dict]:
        """The changes in force; none when there is no record, or one that is not a list of entries."""
        try:
            with open(self.path) as f:
                found = json.load(f)
        except (OSError, ValueError):
            return []
        if not isinstance(found, list):
            return []
        return [entry for entry in found if isinstance(entry, dict)]

    def save(self, balancer: str, member: Member) -> Deferred:
        """Record ``member``'s admin state and weight as they are now, then announce it."""
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            entries = recorded_changes(self.entries(), balancer, member)
            temporary = f"{self.path}.{os.getpid()}.tmp"
            with open(temporary, "w") as f:
                json.dump(entries, f, indent=1)
            os.replace(temporary, self.path)
        return self.announce()


def forget(cache_dir: str) -> None:
    """Remove the record (a server starting): its workers start with the configuration."""
    try:
        os.unlink(os.path.join(cache_dir, RECORD))
    except FileNotFoundError:
        pass
