"""A purge counter shared by every process using one cache directory.

Each process keeps its own memory tier in front of the shared LMDB store. When
any process purges, it bumps this counter before answering the PURGE; every
memory tier compares the counter with the value it last saw before serving a
hit and drops its contents when they differ.

The counter is an 8-byte little-endian unsigned integer in a small file mapped
with MAP_SHARED, so `current()` is a plain memory read — no system call, no
LMDB transaction — cheap enough for every cache hit. `bump()` serialises the
read-modify-write across processes with `fcntl.flock`.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

_COUNTER = struct.Struct("<Q")


class PurgeEpoch:
    """The shared purge counter stored at `path` (e.g. ``<cache-dir>/purge-epoch``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._ensure_size()
            self._map = mmap.mmap(self._fd, _COUNTER.size, mmap.MAP_SHARED)
        except BaseException:
            os.close(self._fd)
            raise

    def _ensure_size(self) -> None:
        with self._locked():
            if os.fstat(self._fd).st_size < _COUNTER.size:
                os.ftruncate(self._fd, _COUNTER.size)

    def current(self) -> int:
        """The counter's value: one read of shared memory."""
        return _COUNTER.unpack_from(self._map)[0]

    def bump(self) -> int:
        """Increment the counter for every process; return the new value."""
        with self._locked():
            value = (_COUNTER.unpack_from(self._map)[0] + 1) % (1 << 64)
            _COUNTER.pack_into(self._map, 0, value)
        return value

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
