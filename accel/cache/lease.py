"""Who fetches a URL for every process sharing the cache directory: fetch leases stored in LMDB.

When several processes (the workers of ``twistd accel --workers N``) miss the same URL at once, the first to
take the URL's lease fetches it from the origin; the others note themselves as waiters on the lease and are
woken when it is released. The leases live in a small LMDB environment of their own beside the cache
(``<cache-dir>/leases``), so taking one never waits behind a large write of the cache itself.

One record per URL key (the cache key, shortened as the store shortens it):

``{"owner": token, "pid": pid, "until": t, "waiters": [token, ...]}``
    a fetch in flight. ``token`` names the owner's wake-up address; ``until`` is the expiry, after which
    anybody may take the lease over (as they may when the owner's process is gone).
``{"hit_for_miss_until": t}``
    the last fetch was not storable: until ``t`` nobody waits for anybody, every request fetches.

Every call is one short LMDB transaction, made on the reactor thread like the store's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import lmdb

from accel.cache.store import url_key

LEASES_DIR = "leases"
MAP_SIZE = 64 << 20


@dataclass(frozen=True)
class Lead:
    """This process fetches; it must ``release`` the lease."""


@dataclass(frozen=True)
class Wait:
    """Another process fetches: wait for its wake-up (and watch that ``pid`` stays alive)."""

    pid: int


@dataclass(frozen=True)
class Skip:
    """The URL's response was recently not storable: fetch without collapsing, holding no lease."""


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseTable:
    """The fetch leases of one cache directory."""

    def __init__(self, cache_dir: str, alive=process_alive):
        path = os.path.join(cache_dir, LEASES_DIR)
        os.makedirs(path, exist_ok=True)
        self.alive = alive
        self._env = lmdb.open(path, map_size=MAP_SIZE, max_dbs=1, subdir=True, sync=False, readahead=False)

    def acquire(self, key: str, token: str, now: float, ttl: float) -> Lead | Wait | Skip:
        """Take ``key``'s lease for ``ttl`` seconds, or join its waiters when a live process holds it."""
        try:
            return self._acquire(url_key(key), token, now, ttl)
        except lmdb.MapFullError:  # left-overs of dead processes fill the map until the next sweep
            return Skip()

    def _acquire(self, k: bytes, token: str, now: float, ttl: float) -> Lead | Wait | Skip:
        with self._env.begin(write=True) as txn:
            record = _decode(txn.get(k))
            if record.get("hit_for_miss_until", 0) > now:
                return Skip()
            owner = record.get("owner")
            if owner is not None and owner != token and record["until"] > now and self.alive(record["pid"]):
                if token not in record["waiters"]:
                    record["waiters"].append(token)
                    txn.put(k, _encode(record))
                return Wait(record["pid"])
            txn.put(k, _encode({"owner": token, "pid": os.getpid(), "until": now + ttl, "waiters": []}))
            return Lead()

    def has_waiters(self, key: str, token: str) -> bool:
        """Whether other processes wait on ``token``'s lease of ``key``."""
        with self._env.begin() as txn:
            record = _decode(txn.get(url_key(key)))
        return record.get("owner") == token and bool(record["waiters"])

    def release(self, key: str, token: str, hit_for_miss_until: float | None = None) -> list[str]:
        """Give ``key``'s lease back (leaving a hit-for-miss marker when the response was not storable);
        returns the waiters' tokens to wake."""
        k = url_key(key)
        with self._env.begin(write=True) as txn:
            record = _decode(txn.get(k))
            waiters = record.get("waiters", []) if record.get("owner") == token else []
            if hit_for_miss_until is not None:
                txn.put(k, _encode({"hit_for_miss_until": hit_for_miss_until}))
            elif record.get("owner") == token:
                txn.delete(k)
        return waiters

    def sweep(self, now: float) -> int:
        """Remove expired leases and markers (left by processes that died); returns how many."""
        removed = 0
        with self._env.begin(write=True) as txn:
            for k, value in list(txn.cursor()):
                record = _decode(value)
                if max(record.get("until", 0), record.get("hit_for_miss_until", 0)) <= now:
                    txn.delete(k)
                    removed += 1
        return removed

    def close(self) -> None:
        self._env.close()


def _decode(value: bytes | None) -> dict:
    return json.loads(value) if value else {}


def _encode(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()
