"""The LMDB disk tier: stored heads and streamed bodies, shared between processes.

One LMDB environment holds named databases:

``heads``    head key -> encoded `EntryHead`. A head key is the URL key, a NUL,
             and a 16-byte digest of the Vary secondary key, so all variants
             of a URL are adjacent and a URL prefix is a key range. URLs longer
             than `_URL_KEY_MAX` bytes are truncated and suffixed with a digest
             (LMDB keys are limited to 511 bytes); lookups always compare the
             decoded head's URL, so keys are only an index.
``bodies``   body id (16 random bytes) + 4-byte big-endian chunk index -> chunk.
``pending``  body id -> 8-byte time of the last write, for bodies being written.
             Chunks are written in short transactions as they arrive; the
             pending record (written in the same transactions) lets
             `collect_orphans` free bodies whose writer died.
``tags``     (dupsort) tag key -> head key, from Surrogate-Key / Cache-Tag.
``access``   head key -> 8-byte last access time (ms).
``atime``    access time (8 bytes, big-endian ms) + head key -> b"", the
             eviction order: its first key is the least recently used entry.
``meta``     ``format`` -> marker/version of an accel cache.

A head is published in one transaction together with its tag and access
index entries, so readers never see half an entry.

Environment flags. ``sync=False`` (MDB_NOSYNC): commits write to the OS page
cache and never fsync, so no request waits for the disk. Durability against a
killed process is unaffected — LMDB's copy-on-write B-tree only ever points at
committed pages, and the dirty pages live in the kernel, not the process — so
kill -9 at any moment leaves the last committed state (tested). An OS crash or
power loss can lose recent commits and, because NOSYNC does not order data and
meta page writes, may damage the file; the cache is disposable, so the caller
should call `sync()` periodically off the reactor thread and wipe the
directory if it fails to open or `verify()` reports damage. ``writemap=False``:
pages are written with pwrite from private buffers, so a stray write in the
process cannot reach the database and the file grows only as used.
``readahead=False``: the cache may exceed RAM and is read randomly. The
writer lock is a robust process-shared mutex, so a process killed inside a
write transaction does not wedge the others (tested).

Chunks are 65520 bytes: with the 16-byte overflow page header each fills
exactly 16 4-KiB overflow pages. A writer stores 4 chunks (~256 KiB) per
transaction as they arrive, amortising the commit cost without holding more
than that in memory.

Space. Used space is the sum of the page counts of every database, which LMDB
keeps in each database record, so it costs no scan. A write that would take it
past 90% of the map first evicts least recently used entries (following
``atime``) towards 80%; after 64 entries an eviction stops as soon as the write
fits under 90%, so no single write evicts for long. A write that still hits
MapFullError (freed pages can be pinned by old readers) evicts more and
retries. When nothing is left to evict the write is refused:
`BodyWriter.write` becomes a no-op and `commit` returns None. Map-full never
reaches the caller of a write; deletions need no room first, but if even a
deletion cannot get pages `StoreFull` is raised. A map another process has
grown (MapResizedError) is adopted and the transaction begun again; a
transaction LMDB finds too large (TxnFullError) is refused as `TxnFull`, a
`StoreFull`.

Short write transactions. The writer lock is shared by every process, so no
write transaction is unbounded: purges, clear and repairs change at most
`_WRITE_BATCH` entries per transaction (the `*_batches` generators yield after
each, so the server can run its reactor in between), access flushes write at
most `_ACCESS_BATCH` records, and a transaction frees at most `_FREE_BATCH`
body chunks — a larger body's remaining chunks are recorded in ``pending``
with the `_LEFTOVER` stamp and freed by the next transactions (an eviction
ends its transaction there and goes on in a new one).

Changes. After each commit, `on_change` is called with the URLs whose entries
the transaction stored, replaced, marked or deleted (None when unknown), so
the memory tiers of every process can drop what they hold of them.

Access recency. `touch` only notes the head key in memory; `flush_access`
persists the notes, skipping entries whose stored access time is less than
`ACCESS_RESOLUTION` seconds old.

Blocking times, measured on a loaded 2-vCPU VM (ext4, 1 GiB map, 2000
entries; median / p99): `variants` hit 17 / 80-200 µs, miss 2 / 25 µs;
`read_body` of 20 KB 7 / 80 µs; `BodyWriter.write` of 64 KiB 40-80 µs
averaged, the call that stores 4 chunks (one 256 KiB transaction) 500 µs /
5 ms; `commit` with a 2 KB body 90 / 600 µs, with a 256 KiB tail 380 µs / 2 ms;
`delete_url` 56 / 400 µs; `flush_access` of 100 touches 0.8 ms. Writing 100 KB
entries into a full 64 MiB map (evicting) 0.5 / 4.8 ms, max 9 ms; eviction
costs ~70 µs per entry, so at most ~5 ms per write.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TypeVar

import lmdb
from twisted.logger import Logger

from accel.cache.entry import CorruptEntry, EntryHead, decode_head, encode_head

__all__ = ["BodyWriter", "CorruptEntry", "DiskStore", "IncompatibleStore", "StoreFull"]

log = Logger()

CHUNK_SIZE = 16 * 4096 - 16
ACCESS_RESOLUTION = 30.0
HIGH_WATER = 0.90
LOW_WATER = 0.80
ORPHAN_AGE = 600.0

_FORMAT = b"accel-cache/1"
_URL_KEY_MAX = 400
_DIGEST = 16
_SEP = b"\x00"
_BATCH = 256
_WRITE_ATTEMPTS = 4
_CHUNKS_PER_TXN = 4
_EVICT_BATCH = 64
_WRITE_BATCH = 256  # entries one purge, clear or repair transaction changes at most
_FREE_BATCH = 256  # body chunks (16 MiB) one transaction frees at most; the rest in the next ones
_ACCESS_BATCH = 1024  # access records one flush transaction writes at most
_LEFTOVER = b"\x00" * 8  # the pending stamp of a deleted entry's body whose chunks are not all freed yet
_TXN_SLACK_PAGES = 16  # pages a write transaction may copy besides its data

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_T = TypeVar("_T")
# (txn, limit, after): up to `limit` matching (head key, head), in key order, with keys after `after`.
_Finder = Callable[[lmdb.Transaction, int, bytes], list[tuple[bytes, EntryHead]]]
_Action = Callable[[lmdb.Transaction, bytes, EntryHead], None]


class IncompatibleStore(Exception):
    """The directory holds an LMDB environment that is not an accel cache of this format."""


class StoreFull(Exception):
    """No pages even after evicting everything evictable.

    Writes turn this into a refused entry; only deletions and maintenance,
    which need a few pages too, can raise it (when the map is entirely taken
    by bodies being written or pinned by old readers).
    """


class TxnFull(StoreFull):
    """A write transaction changed more pages than LMDB allows in one (MDB_TXN_FULL); batched
    operations retry with smaller batches, other writes are refused like a full store."""


class _NeedRoom(Exception):
    """Internal: a write transaction found used space above the high-water mark."""


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST).digest()


def url_key(url: str) -> bytes:
    """The head-key prefix shared by all variants of `url`."""
    raw = _utf8(url)
    if len(raw) <= _URL_KEY_MAX:
        return raw
    return raw[: _URL_KEY_MAX - _DIGEST - 1] + b"\xff" + _digest(raw)


def _prefix_scan_key(url_prefix: str) -> bytes:
    """A key prefix covering every head whose URL starts with `url_prefix`."""
    return _utf8(url_prefix)[: _URL_KEY_MAX - _DIGEST - 1]


def head_key(url: str, secondary_key: str) -> bytes:
    return url_key(url) + _SEP + _digest(_utf8(secondary_key))


def _tag_key(tag: str) -> bytes:
    raw = _utf8(tag)
    return raw if len(raw) <= _URL_KEY_MAX else _digest(raw)


def _chunk_key(body_id: bytes, index: int) -> bytes:
    return body_id + _U32.pack(index)


def _millis(now: float) -> bytes:
    return _U64.pack(max(0, int(now * 1000)))


def _first(items: Iterable[_T], limit: int) -> list[_T]:
    """Up to `limit` items, in order."""
    taken = []
    for item in items:
        taken.append(item)
        if len(taken) >= limit:
            break
    return taken


def _after(prefix: bytes, after: bytes) -> bytes:
    """Where a scan of `prefix` resumes: just past key `after`, or at the start."""
    return after + b"\x00" if after else prefix


def _pages(length: int) -> int:
    """Whole pages LMDB needs to store a value of `length` bytes (upper bound)."""
    return (length + 16 + 4095) // 4096


class DiskStore:
    """The LMDB-backed cache store in directory `path`; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = 1 << 30,
        max_readers: int = 126,
        max_body_size: int | None = None,
        orphan_age: float = ORPHAN_AGE,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[set[str] | None], None] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.max_body_size = map_size // 4 if max_body_size is None else max_body_size
        self._clock = clock
        self._touched: dict[tuple[str, str], None] = {}  # (url, secondary key) of heads used since the last flush
        self.on_change = on_change  # called after a commit with the URLs it changed (None: unknown)
        self._changes: set[str] | None = set()  # URLs the open write transaction changed; None: unknown
        self._free_budget = _FREE_BATCH
        self._leftovers = False  # a transaction left chunks of a deleted body for the next ones
        self._freeing = False
        self.write_transactions = 0  # committed, for tests and stats
        self._env = lmdb.open(
            self.path,
            map_size=map_size,
            max_readers=max_readers,
            max_dbs=8,
            subdir=True,
            sync=False,
            writemap=False,
            readahead=False,
        )
        try:
            self._open_dbs()
            self.collect_orphans(clock() - orphan_age)
        except BaseException:
            self._env.close()
            raise

    def _open_dbs(self) -> None:
        env = self._env
        fresh = env.stat()["entries"] == 0
        with env.begin(write=True) as txn:
            self._meta = env.open_db(b"meta", txn=txn)
            if fresh:
                txn.put(b"format", _FORMAT, db=self._meta)
            marker = txn.get(b"format", db=self._meta)
            if marker != _FORMAT:
                raise IncompatibleStore(f"{self.path}: format {marker!r}, expected {_FORMAT!r}")
            self._heads = env.open_db(b"heads", txn=txn)
            self._bodies = env.open_db(b"bodies", txn=txn)
            self._pending = env.open_db(b"pending", txn=txn)
            self._tags = env.open_db(b"tags", txn=txn, dupsort=True)
            self._access = env.open_db(b"access", txn=txn)
            self._atime = env.open_db(b"atime", txn=txn)
        self._all_dbs = (
            self._meta, self._heads, self._bodies, self._pending,
            self._tags, self._access, self._atime,
        )
        self._adopt_map_size()

    def _adopt_map_size(self) -> None:
        self.map_size = self._env.info()["map_size"]
        self._high_water = int(self.map_size * HIGH_WATER)
        self._low_water = int(self.map_size * LOW_WATER)

    def _begin(self, write: bool = False, db=None) -> lmdb.Transaction:
        """A transaction; when another process has grown the map, adopt its size and begin again."""
        try:
            return self._env.begin(write=write, db=db)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            self._adopt_map_size()
            log.info("{path}: another process grew the map to {size} bytes", path=self.path, size=self.map_size)
            return self._env.begin(write=write, db=db)

    def close(self) -> None:
        self._env.close()

    def sync(self) -> None:
        """Flush committed data to disk (fsync). Call periodically off the reactor thread."""
        self._env.sync(True)

    # -- reading ----------------------------------------------------------

    def variants(self, url: str) -> list[EntryHead]:
        """Every stored head for `url` (one short read transaction)."""
        prefix = url_key(url) + _SEP
        with self._begin(db=self._heads) as txn:
            heads = [head for _, head in self._scan_heads(txn, prefix)]
        return [head for head in heads if head.url == url]

    def read_body(self, head: EntryHead) -> bytes | None:
        """The whole body of `head` (for small bodies), or None if it is missing
        or incomplete."""
        with self._begin(db=self._bodies) as txn:
            chunks = list(self._scan_chunks(txn, head.body_id))
        body = b"".join(chunks)
        return body if len(body) == head.body_length else None

    def iter_body(self, head: EntryHead) -> Iterator[bytes]:
        """Yield the body of `head` chunk by chunk, one short read transaction each.

        No transaction is held between chunks. If the entry is deleted while
        it is being streamed, the next chunk is gone and `CorruptEntry` is
        raised (body ids are never reused, so wrong data is never returned).
        """
        sent = 0
        index = 0
        while sent < head.body_length:
            with self._begin(db=self._bodies) as txn:
                chunk = txn.get(_chunk_key(head.body_id, index))
            if chunk is None:
                raise CorruptEntry(f"{head.url}: body chunk {index} missing")
            sent += len(chunk)
            index += 1
            yield chunk
        if sent != head.body_length:
            raise CorruptEntry(f"{head.url}: body has {sent} bytes, head says {head.body_length}")

    def iter_heads(self, prefix: str = "") -> Iterator[EntryHead]:
        """Every stored head whose URL starts with `prefix`, read in short batches."""
        scan = _prefix_scan_key(prefix)
        start = scan
        while True:
            with self._begin(db=self._heads) as txn:
                batch = self._read_batch(txn, scan, start)
            for _, head in batch:
                if head.url.startswith(prefix):
                    yield head
            if len(batch) < _BATCH:
                return
            start = batch[-1][0] + b"\x00"

    def _read_batch(
        self, txn: lmdb.Transaction, prefix: bytes, start: bytes
    ) -> list[tuple[bytes, EntryHead]]:
        batch = []
        for item in self._scan_heads(txn, prefix, start):
            batch.append(item)
            if len(batch) == _BATCH:
                break
        return batch

    def _scan_heads(
        self, txn: lmdb.Transaction, prefix: bytes, start: bytes | None = None
    ) -> Iterator[tuple[bytes, EntryHead]]:
        """(key, head) for heads whose key starts with `prefix`; corrupt ones are skipped."""
        cursor = txn.cursor(self._heads)
        start = prefix if start is None else start
        if not (cursor.set_range(start) if start else cursor.first()):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            try:
                yield key, decode_head(value)
            except CorruptEntry as exc:
                log.warn("skipping corrupt cache head {key!r}: {why}", key=key, why=str(exc))

    def _scan_chunks(self, txn: lmdb.Transaction, body_id: bytes) -> Iterator[bytes]:
        """The chunks of `body_id` in order, stopping at the first gap."""
        cursor = txn.cursor(self._bodies)
        expected = _chunk_key(body_id, 0)
        if not cursor.set_key(expected):
            return
        for index, (key, value) in enumerate(cursor):
            if key != _chunk_key(body_id, index):
                return
            yield value

    # -- writing ----------------------------------------------------------

    def begin(self, url: str, secondary_key: str) -> BodyWriter:
        """Start writing a new entry; nothing is visible until `BodyWriter.commit`."""
        return BodyWriter(self, url, secondary_key)

    def replace_head(self, head: EntryHead) -> bool:
        """Replace a stored head that has the same body (304 freshening, soft purge).

        Returns False if the entry is gone or now has a different body.
        """
        key = head_key(head.url, head.secondary_key)

        def apply(txn: lmdb.Transaction) -> bool:
            old = self._get_head(txn, key)
            if old is None or old.body_id != head.body_id or old.url != head.url:
                return False
            self._put_head(txn, key, head, old)
            return True

        return self._write_or(apply, _pages(len(encode_head(head))), False)

    def delete_url(self, url: str) -> int:
        """Delete every variant of `url`; return how many were deleted."""
        return sum(self.delete_url_batches(url))

    def delete_prefix(self, url_prefix: str) -> int:
        """Delete every entry whose URL starts with `url_prefix`."""
        return sum(self.delete_prefix_batches(url_prefix))

    def delete_tag(self, tag: str) -> int:
        """Delete every entry tagged `tag`."""
        return sum(self.delete_tag_batches(tag))

    def delete_all(self) -> int:
        """Delete every entry and every body, including bodies still being written."""
        return sum(self.delete_all_batches())

    def mark_stale_url(self, url: str) -> int:
        """Soft-purge every variant of `url`: it must be revalidated before reuse."""
        return sum(self.mark_stale_url_batches(url))

    def mark_stale_prefix(self, url_prefix: str) -> int:
        return sum(self.mark_stale_prefix_batches(url_prefix))

    def mark_stale_tag(self, tag: str) -> int:
        return sum(self.mark_stale_tag_batches(tag))

    # Each *_batches generator makes the change in write transactions of at most `_WRITE_BATCH` entries
    # and yields the count of each one after it committed, so a caller can let others run in between
    # (the server's reactor; other processes always get the writer lock between batches).

    def delete_url_batches(self, url: str) -> Iterator[int]:
        return self._batches(self._url_matches(url), self._delete_entry)

    def delete_prefix_batches(self, url_prefix: str) -> Iterator[int]:
        return self._batches(self._prefix_matches(url_prefix), self._delete_entry)

    def delete_tag_batches(self, tag: str) -> Iterator[int]:
        return self._batches(self._tag_matches(tag), self._delete_entry)

    def mark_stale_url_batches(self, url: str) -> Iterator[int]:
        return self._batches(self._url_matches(url), self._mark_stale)

    def mark_stale_prefix_batches(self, url_prefix: str) -> Iterator[int]:
        return self._batches(self._prefix_matches(url_prefix), self._mark_stale)

    def mark_stale_tag_batches(self, tag: str) -> Iterator[int]:
        return self._batches(self._tag_matches(tag), self._mark_stale)

    def delete_all_batches(self) -> Iterator[int]:
        """Every entry, then every body still being written (its writer fails), batch by batch."""
        yield from self._batches(self._prefix_matches(""), self._delete_entry)

        def free_pending(txn: lmdb.Transaction, limit: int) -> int:
            body_ids = [key for key, _ in _first(txn.cursor(self._pending), limit)]
            for body_id in body_ids:
                self._free_body(txn, body_id)
            return len(body_ids)

        while self._write_batch(free_pending):
            yield 0

    def _batches(self, find: _Finder, action: _Action) -> Iterator[int]:
        """Apply `action` to what `find` returns, at most `_WRITE_BATCH` entries per transaction."""
        after = b""
        exhausted = False

        def apply(txn: lmdb.Transaction, limit: int) -> int:
            nonlocal after, exhausted
            found = find(txn, limit, after)
            for key, head in found:
                action(txn, key, head)
            if found:
                after = found[-1][0]
            exhausted = len(found) < limit
            return len(found)

        while not exhausted:
            count = self._write_batch(apply)
            if count:
                yield count

    def _write_batch(self, apply: Callable[[lmdb.Transaction, int], int]) -> int:
        """One transaction of `apply(txn, limit)`; halves the limit when LMDB says the transaction is full."""
        limit = _WRITE_BATCH
        while True:
            try:
                return self._write(lambda txn: apply(txn, limit))
            except TxnFull:
                if limit == 1:
                    raise
                limit //= 2

    def _url_matches(self, url: str) -> _Finder:
        prefix = url_key(url) + _SEP
        return lambda txn, limit, after: _first(
            ((k, h) for k, h in self._scan_heads(txn, prefix, _after(prefix, after)) if h.url == url), limit
        )

    def _prefix_matches(self, url_prefix: str) -> _Finder:
        scan = _prefix_scan_key(url_prefix)
        return lambda txn, limit, after: _first(
            ((k, h) for k, h in self._scan_heads(txn, scan, _after(scan, after)) if h.url.startswith(url_prefix)),
            limit,
        )

    def _tag_matches(self, tag: str) -> _Finder:
        def find(txn: lmdb.Transaction, limit: int, after: bytes) -> list[tuple[bytes, EntryHead]]:
            cursor = txn.cursor(self._tags)
            found = cursor.set_range_dup(_tag_key(tag), after + b"\x00") if after else cursor.set_key(_tag_key(tag))
            if not found:
                return []
            heads = ((key, self._get_head(txn, key)) for key in cursor.iternext_dup())
            return _first(((key, head) for key, head in heads if head is not None and tag in head.tags), limit)

        return find

    def _mark_stale(self, txn: lmdb.Transaction, key: bytes, head: EntryHead) -> None:
        if not head.stale_marked:
            self._put_head(txn, key, replace(head, stale_marked=True), head)

    # -- access recency -----------------------------------------------------

    def touch(self, head: EntryHead) -> None:
        """Note that `head` was used; persisted by the next `flush_access`. (On every hit: its key is made when
        the access is persisted.)"""
        self._touched[(head.url, head.secondary_key)] = None

    def flush_access(self, now: float) -> int:
        """Persist noted accesses; return how many were updated."""
        return sum(self.flush_access_batches(now))

    def flush_access_batches(self, now: float) -> Iterator[int]:
        """Persist noted accesses, `_ACCESS_BATCH` per transaction; yield each one's count."""
        touched, self._touched = [head_key(url, secondary) for url, secondary in self._touched], {}
        for start in range(0, len(touched), _ACCESS_BATCH):
            batch = touched[start : start + _ACCESS_BATCH]

            def apply(txn: lmdb.Transaction, batch=batch) -> int:
                return sum(self._record_access(txn, key, now) for key in batch)

            yield self._write_or(apply, len(batch) // 32 + 1, 0)

    def _record_access(self, txn: lmdb.Transaction, key: bytes, now: float) -> bool:
        old = txn.get(key, db=self._access)
        if old is None or now - _U64.unpack(old)[0] / 1000 < ACCESS_RESOLUTION:
            return False
        self._set_access(txn, key, now)
        return True

    def _set_access(self, txn: lmdb.Transaction, key: bytes, now: float) -> None:
        self._clear_access(txn, key)
        stamp = _millis(now)
        txn.put(key, stamp, db=self._access)
        txn.put(stamp + key, b"", db=self._atime)

    def _clear_access(self, txn: lmdb.Transaction, key: bytes) -> None:
        old = txn.pop(key, db=self._access)
        if old is not None:
            txn.delete(old + key, db=self._atime)

    # -- maintenance ----------------------------------------------------------

    def collect_orphans(self, older_than: float) -> int:
        """Free bodies whose writer stopped writing before `older_than`.

        Scans only the small ``pending`` database. Also releases reader slots
        of dead processes, which would otherwise keep freed pages from reuse.
        Call at startup (done by the constructor) and periodically. Returns
        the number of bodies freed.
        """
        self._env.reader_check()

        def apply(txn: lmdb.Transaction) -> int:
            cutoff = older_than * 1000
            stale = [
                body_id
                for body_id, stamp in txn.cursor(self._pending)
                if _U64.unpack(stamp)[0] < cutoff
            ]
            for body_id in stale:
                self._free_body(txn, body_id)
            return len(stale)

        return self._write(apply)

    def stats(self) -> dict[str, int]:
        with self._begin() as txn:
            entries = txn.stat(self._heads)["entries"]
            pending = txn.stat(self._pending)["entries"]
            body_bytes = self._db_bytes(txn, self._bodies)
            used = self._used_bytes(txn)
        info = self._env.info()
        return {
            "entries": entries,
            "pending": pending,
            "bytes": body_bytes,
            "used_bytes": used,
            "map_size": info["map_size"],
            "readers": info["num_readers"],
            "max_readers": info["max_readers"],
        }

    def verify(self, repair: bool = False) -> list[str]:
        """Check every head decodes and every body is complete; list the problems.

        Reads the whole store in one read transaction (an admin operation, not for the reactor
        thread; it blocks no writer). With `repair`, the broken entries, dangling index records and
        unreferenced chunks it found are then removed in write transactions of at most `_WRITE_BATCH`
        repairs, each checking that what it removes is still the broken record it found.
        """
        with self._begin() as txn:
            verifier = _Verifier(self, txn)
            problems = verifier.run()
        if repair:
            repairs = verifier.repairs
            for start in range(0, len(repairs), _WRITE_BATCH):
                batch = repairs[start : start + _WRITE_BATCH]
                self._write(lambda txn, batch=batch: [fix(txn) for fix in batch])
        return problems

    # -- internals shared with BodyWriter and _Verifier ------------------------

    def _get_head(self, txn: lmdb.Transaction, key: bytes) -> EntryHead | None:
        data = txn.get(key, db=self._heads)
        if data is None:
            return None
        try:
            return decode_head(data)
        except CorruptEntry:
            return None

    def _put_head(
        self, txn: lmdb.Transaction, key: bytes, head: EntryHead, old: EntryHead | None
    ) -> None:
        """Write `head` under `key` and move tag index entries from `old`'s tags."""
        self._note_change(head.url)
        txn.put(key, encode_head(head), db=self._heads)
        old_tags = set(old.tags) if old is not None else set()
        for tag in old_tags - set(head.tags):
            txn.delete(_tag_key(tag), key, db=self._tags)
        for tag in set(head.tags) - old_tags:
            txn.put(_tag_key(tag), key, db=self._tags)

    def _delete_entry(self, txn: lmdb.Transaction, key: bytes, head: EntryHead | None) -> None:
        """Delete the head at `key` with its body and index records."""
        txn.delete(key, db=self._heads)
        self._clear_access(txn, key)
        if head is None:
            self._changes = None  # a corrupt head: which URL it was is unknown
            return
        self._note_change(head.url)
        for tag in head.tags:
            txn.delete(_tag_key(tag), key, db=self._tags)
        self._free_body(txn, head.body_id)

    def _free_body(self, txn: lmdb.Transaction, body_id: bytes) -> None:
        """Delete a body's chunks, within this transaction's budget of `_FREE_BATCH` chunks; what is
        left is recorded as pending with the `_LEFTOVER` stamp and freed by the next transactions."""
        txn.delete(body_id, db=self._pending)
        if not body_id:
            return
        cursor = txn.cursor(self._bodies)
        if not cursor.set_range(body_id):
            return
        while cursor.key().startswith(body_id):
            if self._free_budget <= 0:
                txn.put(body_id, _LEFTOVER, db=self._pending)
                self._leftovers = True
                return
            self._free_budget -= 1
            if not cursor.delete():
                return

    def _free_leftovers(self) -> None:
        """Free the chunks deleted entries left behind, one bounded transaction at a time."""
        if self._freeing:
            return  # the loop below is already running
        self._freeing = True
        try:
            self._free_leftovers_loop()
        finally:
            self._freeing = False

    def _free_leftovers_loop(self) -> None:
        while self._leftovers:
            self._leftovers = False

            def apply(txn: lmdb.Transaction) -> None:
                leftovers = [key for key, stamp in txn.cursor(self._pending) if stamp == _LEFTOVER]
                for body_id in leftovers:
                    self._free_body(txn, body_id)

            self._write(apply)

    def _note_change(self, url: str) -> None:
        if self._changes is not None:
            self._changes.add(url)

    def _committed(self) -> None:
        """After a write transaction committed: tell every process's memory tier what changed."""
        self.write_transactions += 1
        changes, self._changes = self._changes, set()
        if self.on_change is not None and (changes is None or changes):
            self.on_change(changes)

    def _db_bytes(self, txn: lmdb.Transaction, db: lmdb._Database) -> int:
        stat = txn.stat(db)
        pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return pages * stat["psize"]

    def _used_bytes(self, txn: lmdb.Transaction) -> int:
        """Pages in use by all databases; LMDB keeps the counts, so no scan."""
        return sum(self._db_bytes(txn, db) for db in self._all_dbs)

    def _write(self, apply: Callable[[lmdb.Transaction], _T], new_pages: int = 0) -> _T:
        """Run `apply` in a write transaction, evicting LRU entries to make room.

        `new_pages` estimates the pages the transaction adds; when it is 0
        (deletions, in-place updates) the high-water check is skipped, so
        freeing space never needs room first. Raises `StoreFull` when
        eviction cannot make enough room.
        """
        needed = (new_pages + _TXN_SLACK_PAGES) * 4096
        for attempt in range(_WRITE_ATTEMPTS):
            self._start_transaction()
            try:
                with self._begin(write=True) as txn:
                    if new_pages and self._used_bytes(txn) + needed > self._high_water:
                        raise _NeedRoom
                    result = apply(txn)
            except _NeedRoom:
                evicted = self._evict(needed)
            except lmdb.MapFullError:
                self._env.reader_check()
                evicted = self._evict(needed, at_least=needed * (attempt + 1))
            except lmdb.TxnFullError:
                raise TxnFull(f"{self.path}: too many changes for one write transaction") from None
            else:
                self._committed()
                self._free_leftovers()
                return result
            if not evicted:
                break
        raise StoreFull(f"{self.path}: no room for {needed} bytes after eviction")

    def _start_transaction(self) -> None:
        self._changes = set()
        self._free_budget = _FREE_BATCH

    def _write_or(self, apply: Callable[[lmdb.Transaction], _T], pages: int, default: _T) -> _T:
        try:
            return self._write(apply, pages)
        except StoreFull:
            return default

    def _evict(self, needed: int, at_least: int = 0) -> int:
        """Evict least recently used entries to make room for `needed` bytes, freeing at least
        `at_least` bytes.

        Aims for the low-water mark, but once `_EVICT_BATCH` entries are gone it stops as soon as the
        write fits under the high-water mark, which bounds the time one write can spend evicting; later
        writes continue. A large body is freed `_FREE_BATCH` chunks per transaction: the eviction
        transaction ends after the entry whose body it could not free whole, the rest is freed in
        further transactions, and eviction goes on in a new one if still needed. Pending accesses are
        recorded first so they count. Returns the number evicted: 0 when nothing could be (even an
        eviction can hit map-full while old readers pin the freed pages).
        """
        evicted = 0
        target = enough = None
        while True:
            self._start_transaction()
            try:
                with self._begin(write=True) as txn:
                    if target is None:
                        self._record_touches(txn)
                        ceiling = self._used_bytes(txn) - at_least - needed
                        target = min(self._low_water - needed, ceiling)
                        enough = min(self._high_water - needed, ceiling)
                    batch = self._evict_in(txn, target, enough, evicted)
            except lmdb.MapFullError:
                break
            self._touched.clear()
            self._committed()
            evicted += batch
            if not (batch and self._leftovers):
                break
            self._free_leftovers()
        if evicted:
            log.info("evicted {n} cache entries from {path}", n=evicted, path=self.path)
        return evicted

    def _record_touches(self, txn: lmdb.Transaction) -> None:
        now = self._clock()
        for url, secondary in self._touched:
            self._record_access(txn, head_key(url, secondary), now)

    def _evict_in(self, txn: lmdb.Transaction, target: int, enough: int, before: int) -> int:
        """Evict in this transaction; stop at the water marks or after leaving a body's chunks."""
        evicted = 0
        cursor = txn.cursor(self._atime)
        while cursor.first() and not self._leftovers:
            used = self._used_bytes(txn)
            if used <= target or (before + evicted >= _EVICT_BATCH and used <= enough):
                break
            oldest = cursor.key()
            key = oldest[8:]
            self._delete_entry(txn, key, self._get_head(txn, key))
            txn.delete(oldest, db=self._atime)
            evicted += 1
        return evicted


class BodyWriter:
    """Streams one entry's body into the store; `commit` publishes its head.

    Bytes are re-chunked to `CHUNK_SIZE` and stored `_CHUNKS_PER_TXN` chunks
    (~256 KiB) per short write transaction as soon as that much has arrived,
    so a body is never held in memory whole. If the body exceeds the store's
    `max_body_size`, the store cannot make room, or the pending body is
    removed underneath (purge-all, orphan collection), the writer fails: its
    chunks are freed, later writes are ignored and `commit` returns None.
    """

    def __init__(self, store: DiskStore, url: str, secondary_key: str) -> None:
        self._store = store
        self.url = url
        self.secondary_key = secondary_key
        self.body_id = os.urandom(_DIGEST)
        self._buffer = bytearray()
        self._chunks = 0
        self._length = 0
        self._failed = False
        self._closed = False

    @property
    def failed(self) -> bool:
        return self._failed

    def write(self, data: bytes) -> None:
        if self._failed or self._closed:
            return
        self._length += len(data)
        if self._length > self._store.max_body_size:
            self._fail()
            return
        self._buffer += data
        while len(self._buffer) >= CHUNK_SIZE * _CHUNKS_PER_TXN and self._flush(final=False):
            pass

    def commit(self, head: EntryHead, expected_length: int | None) -> EntryHead | None:
        """Publish `head` with its body_id and body_length filled in.

        Replaces a stored variant with the same secondary key and frees its
        body. Returns the stored head, or None — with the body discarded — if
        the writer failed or the length written differs from `expected_length`.
        """
        if (head.url, head.secondary_key) != (self.url, self.secondary_key):
            raise ValueError("head does not match the writer's url/secondary key")
        if self._closed:
            raise RuntimeError("writer already committed or aborted")
        if self._failed or (expected_length is not None and expected_length != self._length):
            self.abort()
            return None
        stored = replace(head, body_id=self.body_id, body_length=self._length)
        if not self._flush(final=True, head=stored):
            return None
        self._closed = True
        return stored

    def abort(self) -> None:
        """Discard everything written; safe to call more than once."""
        if not self._closed:
            self._discard()
            self._closed = True

    def _fail(self) -> None:
        self._discard()
        self._failed = True

    def _discard(self) -> None:
        self._buffer.clear()
        if self._chunks:
            try:
                self._store._write(lambda txn: self._store._free_body(txn, self.body_id))
            except StoreFull:
                log.warn("could not free body {body}; left for collect_orphans", body=self.body_id.hex())
            self._chunks = 0

    def _flush(self, final: bool, head: EntryHead | None = None) -> bool:
        """Store up to `_CHUNKS_PER_TXN` whole buffered chunks in one transaction.

        When `final`, the rest of the buffer (up to `_CHUNKS_PER_TXN` chunks,
        the last one partial) is stored and `head` is published in the same
        transaction. On failure the writer fails and False is returned.
        """
        cut = min(len(self._buffer), CHUNK_SIZE * _CHUNKS_PER_TXN)
        if not final:
            cut -= cut % CHUNK_SIZE
        pieces = [bytes(self._buffer[i : i + CHUNK_SIZE]) for i in range(0, cut, CHUNK_SIZE)]
        pages = sum(_pages(len(piece)) for piece in pieces) + 1

        def apply(txn: lmdb.Transaction) -> bool:
            if not self._store_chunks(txn, pieces):
                return False
            if head is not None:
                self._publish(txn, head)
            return True

        try:
            ok = self._store._write(apply, pages)
        except StoreFull:
            ok = False
        if not ok:
            self._fail()
            return False
        del self._buffer[:cut]
        self._chunks += len(pieces)
        return True

    def _store_chunks(self, txn: lmdb.Transaction, pieces: list[bytes]) -> bool:
        """Append chunks and refresh the pending record; False if the body was freed (or is being freed)."""
        store = self._store
        if self._chunks and txn.get(self.body_id, db=store._pending) in (None, _LEFTOVER):
            return False
        for offset, piece in enumerate(pieces):
            txn.put(_chunk_key(self.body_id, self._chunks + offset), piece, db=store._bodies)
        if pieces:
            txn.put(self.body_id, _millis(store._clock()), db=store._pending)
        return True

    def _publish(self, txn: lmdb.Transaction, head: EntryHead) -> None:
        store = self._store
        txn.delete(self.body_id, db=store._pending)
        key = head_key(head.url, head.secondary_key)
        if txn.get(key, db=store._heads) is not None:
            store._delete_entry(txn, key, store._get_head(txn, key))
        store._put_head(txn, key, head, None)
        store._set_access(txn, key, store._clock())


class _Verifier:
    """One pass of `DiskStore.verify` over a read transaction; `repairs` fix what it found, given a
    write transaction, if it is still there."""

    def __init__(self, store: DiskStore, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self.problems: list[str] = []
        self.repairs: list[Callable[[lmdb.Transaction], None]] = []
        self.live_bodies: set[bytes] = set()

    def run(self) -> list[str]:
        self.check_heads()
        self.live_bodies.update(key for key, _ in self.txn.cursor(self.store._pending))
        self.check_chunks()
        self.check_index(self.store._access, lambda key, value: key)
        self.check_index(self.store._atime, lambda key, value: key[8:])
        self.check_index(self.store._tags, lambda key, value: value)
        return self.problems

    def check_heads(self) -> None:
        store = self.store
        for key, data in self.txn.cursor(store._heads):
            problem = self.head_problem(key, data)
            if problem is None:
                continue
            self.problems.append(problem)

            def delete_head(txn: lmdb.Transaction, key=key, data=data) -> None:
                if txn.get(key, db=store._heads) == data:
                    store._delete_entry(txn, key, store._get_head(txn, key))

            self.repairs.append(delete_head)

    def head_problem(self, key: bytes, data: bytes) -> str | None:
        try:
            head = decode_head(data)
        except CorruptEntry as exc:
            return f"head {key!r}: {exc}"
        if head_key(head.url, head.secondary_key) != key:
            return f"head {key!r}: stored under the wrong key"
        self.live_bodies.add(head.body_id)
        length = sum(len(chunk) for chunk in self.store._scan_chunks(self.txn, head.body_id))
        if length != head.body_length:
            return f"head {key!r} ({head.url}): body has {length} of {head.body_length} bytes"
        if self.txn.get(key, db=self.store._access) is None:
            return f"head {key!r} ({head.url}): no access record"
        return None

    def check_chunks(self) -> None:
        # Body ids are never reused and a body's chunks are written with its pending record or head, so
        # chunks without either stay unreferenced: freeing them later is safe.
        orphans = {key[:-4] for key, _ in self.txn.cursor(self.store._bodies)} - self.live_bodies
        for body_id in sorted(orphans):
            self.problems.append(f"body {body_id.hex()}: chunks without a head or pending record")
            self.repairs.append(lambda txn, body_id=body_id: self.store._free_body(txn, body_id))

    def check_index(self, db: lmdb._Database, head_key_of: Callable[[bytes, bytes], bytes]) -> None:
        heads = self.store._heads
        for key, value in self.txn.cursor(db):
            if self.txn.get(head_key_of(key, value), db=heads) is not None:
                continue
            self.problems.append(f"index record {key!r} -> {value!r}: head missing")

            def delete_record(txn: lmdb.Transaction, key=key, value=value) -> None:
                if txn.get(head_key_of(key, value), db=heads) is None:
                    txn.delete(key, value, db=db)

            self.repairs.append(delete_record)
