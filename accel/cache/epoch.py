"""Change counters shared by every process using one cache directory.

Each process keeps its own memory tier in front of the shared LMDB store. Two kinds of counter tell a
memory tier that what it holds may no longer be what the disk holds:

- the *epoch*, bumped by a purge before the PURGE is answered (and by any change too wide to name URL by
  URL): every memory tier drops its whole contents when the epoch differs from the value it last saw;
- one *generation* per bucket of URLs, bumped after the disk store commits a change to an entry of a URL
  in that bucket (stored, replaced, freshened, marked stale, deleted, evicted — by any process). A memory
  tier stamps each URL's group with its bucket's generation, read before it read the disk, and drops the
  group when the generation has moved on. Buckets are ``crc32(url) % BUCKETS``: a URL sharing a bucket
  with a changed one is re-read from disk, never served wrong.

The counters are 8-byte little-endian unsigned integers in a small file mapped with MAP_SHARED (epoch
first, then the generations), so reading one is a plain memory read — no system call, no LMDB
transaction — cheap enough for every cache hit. Bumps serialise their read-modify-write across processes
with ``fcntl.flock``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

BUCKETS = 1 << 16
WIDE_CHANGE = 64  # a change to more URLs than this bumps the epoch instead of their generations
_COUNTER = struct.Struct("<Q")
_SIZE = _COUNTER.size * (1 + BUCKETS)
_WRAP = 1 << 64


def url_bucket(url: str) -> int:
    """The generation bucket of ``url``: the same in every process."""
    return zlib.crc32(url.encode("utf-8", "surrogatepass")) % BUCKETS


class PurgeEpoch:
    """The shared counters stored at `path` (e.g. ``<cache-dir>/purge-epoch``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._ensure_size()
            self._map = mmap.mmap(self._fd, _SIZE, mmap.MAP_SHARED)
        except BaseException:
            os.close(self._fd)
            raise

    def _ensure_size(self) -> None:
        with self._locked():
            if os.fstat(self._fd).st_size < _SIZE:
                os.ftruncate(self._fd, _SIZE)

    def current(self) -> int:
        """The epoch: one read of shared memory."""
        return _COUNTER.unpack_from(self._map)[0]

    def bump(self) -> int:
        """Increment the epoch for every process; return the new value."""
        with self._locked():
            return self._increment(0)

    def generation(self, bucket: int) -> int:
        """The generation of URL bucket ``bucket`` (see ``url_bucket``): one read of shared memory."""
        return _COUNTER.unpack_from(self._map, _COUNTER.size * (1 + bucket))[0]

    def unchanged(self, epoch: int, bucket: int, generation: int) -> bool:
        """Whether the epoch is still ``epoch`` and bucket ``bucket``'s generation still ``generation``: nothing
        stored under the bucket's URLs changed since both were read (two reads of shared memory)."""
        counters = self._map
        return (_COUNTER.unpack_from(counters)[0] == epoch
                and _COUNTER.unpack_from(counters, _COUNTER.size * (1 + bucket))[0] == generation)

    def changed(self, urls: Iterable[str] | None) -> None:
        """Tell every process that the stored entries of ``urls`` changed (None: unknown, maybe all)."""
        buckets = None if urls is None else {url_bucket(url) for url in urls}
        with self._locked():
            if buckets is None or len(buckets) > WIDE_CHANGE:
                self._increment(0)
                return
            for bucket in buckets:
                self._increment(_COUNTER.size * (1 + bucket))

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def _increment(self, offset: int) -> int:
        value = (_COUNTER.unpack_from(self._map, offset)[0] + 1) % _WRAP
        _COUNTER.pack_into(self._map, offset, value)
        return value

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
