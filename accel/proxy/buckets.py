"""Rate-limit buckets shared by every process of one server: a fixed-size table in a memory-mapped file.

Worker processes each answer a share of the requests, so a limit that holds for the whole server needs one
bucket per key that all of them take from. The table lives in a small file (``<cache dir>/rate-limits``)
mapped with MAP_SHARED, as ``accel.cache.epoch`` does for the purge counter; each take holds
``fcntl.flock`` on it for the read-refill-write of one slot, so no token is taken twice. Without a file
(no cache directory) the table is an anonymous mapping of this process alone.

Layout: a 16-byte header (magic, version, number of slots), then slots of 32 bytes: a 16-byte BLAKE2b
digest of the key (all zero: free), the tokens left and the time they were counted (two doubles). A key
is looked for in ``PROBES`` consecutive slots from its hash; when none is free the one used longest ago
is taken over, so the table never grows and forgets idle clients first.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from accel.proxy.ratelimit import Taken, take

_HEADER = struct.Struct("<4sII4x")
_SLOT = struct.Struct("<16sdd")
_MAGIC = b"ACRL"
_VERSION = 1
_FREE = bytes(16)
PROBES = 8
DEFAULT_SLOTS = 65536  # 2 MiB


class SharedBuckets:
    """Token buckets by key, shared through ``path`` (None: this process only)."""

    def __init__(self, path: str | os.PathLike[str] | None, slots: int = DEFAULT_SLOTS):
        self._fd: int | None = None
        size = _HEADER.size + slots * _SLOT.size
        if path is None:
            self._map = mmap.mmap(-1, size)
            _HEADER.pack_into(self._map, 0, _MAGIC, _VERSION, slots)
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                with self._locked():
                    head = os.pread(self._fd, _HEADER.size, 0)
                    if len(head) < _HEADER.size or _HEADER.unpack(head)[:2] != (_MAGIC, _VERSION):
                        os.ftruncate(self._fd, 0)  # not ours, or an older layout: start afresh
                        os.ftruncate(self._fd, size)
                        os.pwrite(self._fd, _HEADER.pack(_MAGIC, _VERSION, slots), 0)
                    else:
                        slots = _HEADER.unpack(head)[2]  # another process made it: use its size
                        size = _HEADER.size + slots * _SLOT.size
                self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
            except BaseException:
                os.close(self._fd)
                raise
        self.slots = slots

    def take(self, key: bytes, now: float, rate: float, capacity: float) -> Taken:
        """Take a token from ``key``'s bucket (made full when new) for every process sharing the table."""
        digest = hashlib.blake2b(key, digest_size=16).digest()
        if digest == _FREE:
            digest = b"\x01" + digest[1:]
        first = int.from_bytes(digest[:8], "little") % self.slots
        with self._locked():
            slot, stored = self._find(digest, first)
            tokens, stamp = (stored[1], stored[2]) if stored is not None else (None, now)
            taken = take(tokens, stamp, now, rate, capacity)
            _SLOT.pack_into(self._map, _HEADER.size + slot * _SLOT.size, digest, taken.tokens, max(now, stamp))
        return taken

    def _find(self, digest: bytes, first: int) -> tuple[int, tuple | None]:
        """(slot, its contents when it holds ``digest``): the key's slot, else a free one, else the oldest."""
        oldest, oldest_stamp = first, float("inf")
        for i in range(PROBES):
            slot = (first + i) % self.slots
            stored = _SLOT.unpack_from(self._map, _HEADER.size + slot * _SLOT.size)
            if stored[0] == digest:
                return slot, stored
            if stored[0] == _FREE:
                return slot, None
            if stored[2] < oldest_stamp:
                oldest, oldest_stamp = slot, stored[2]
        return oldest, None

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._fd is None:
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
