"""The memory tier and the disk store combined, kept coherent across processes.

Lookups try this process's memory tier first and fall back to the shared disk store, promoting what
they read. What a memory tier holds stays what the disk holds, whichever process changed the disk:

- every committed change to an entry (stored, replaced, freshened, marked stale, deleted, evicted) bumps
  the generation of its URL's bucket in the shared `PurgeEpoch` file (`DiskStore.on_change`), and a
  lookup drops a URL's group whose stamp is not its bucket's current generation (one shared-memory read);
- a change too wide to name URL by URL (purge-all, many entries at once) bumps the epoch, and a lookup
  that sees a new epoch drops the whole memory tier;
- a URL found on neither tier is remembered as absent with its bucket's generation (a bounded table), so
  the next miss for it costs no disk read until something is stored in its bucket;
- a body found missing when it is streamed (evicted between lookup and read) drops the URL's group too
  (`forget`); the caller treats the request as a miss.

Purges and other long changes come as batches (`purge_batches`): each yields after one bounded write
transaction has committed, so the server can let its reactor run between them. Every other call is
short and synchronous (for the reactor thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from accel.cache.entry import EntryHead
from accel.cache.epoch import PurgeEpoch, url_bucket
from accel.cache.memory import MemoryTier
from accel.cache.store import BodyWriter, DiskStore

Variant = tuple[EntryHead, bytes | None, Any]

_ABSENT_REMEMBERED = 4096  # URLs remembered as absent from the disk (the table is emptied when full)


class TieredStore:
    def __init__(self, disk: DiskStore, memory: MemoryTier, epoch: PurgeEpoch) -> None:
        self.disk = disk
        self.memory = memory
        self.epoch = epoch
        self._seen_epoch = epoch.current()
        self.from_memory = True  # whether the last ``lookup`` was answered by the memory tier
        self._absent: dict[str, int] = {}  # URL → its bucket's generation when the disk held nothing for it
        disk.on_change = epoch.changed

    def lookup(self, url: str) -> list[Variant]:
        """Every stored variant of `url` as (head, body or None, extra).

        A None body means the body is not in memory; stream it with ``disk.iter_body(head)``. Use
        counts toward the disk tier's LRU.
        """
        self._sync_epoch()
        bucket = url_bucket(url)
        stamp = self.memory.stamp(url)
        if stamp is not None and stamp == self.epoch.generation(bucket):
            items = self.memory.get_variants(url)
            for item in items:
                self.disk.touch(item.head)
            self.from_memory = True
            return [(item.head, item.body, item.extra) for item in items]
        if self._absent.get(url) == self.epoch.generation(bucket):
            self.from_memory = True
            return []  # nothing stored in its bucket since the disk held nothing for it
        self.memory.drop_url(url)  # changed on disk since it was read (or never stamped)
        self.from_memory = False
        return self._promote(url, bucket)

    def counters(self, bucket: int) -> tuple[int, int]:
        """(epoch, generation of ``bucket``) as they are now. Read before ``lookup_memory``: what it returns
        stays what the disk holds while ``epoch.unchanged`` holds for both."""
        return self.epoch.current(), self.epoch.generation(bucket)

    def lookup_memory(self, url: str, bucket: int | None = None) -> list:
        """The memory tier's items for `url` (MemoryItem: head, body, extra); [] when it holds none or its
        group changed on disk since it was read (then ``lookup`` reads the disk tier). Use counts toward the
        disk tier's LRU. ``bucket``: ``url_bucket(url)`` when the caller knows it (once per URL, not per hit)."""
        epoch = self.epoch
        if epoch.current() != self._seen_epoch:
            self._sync_epoch()
        items = self.memory.stamped_variants(url, epoch.generation(url_bucket(url) if bucket is None else bucket))
        for item in items:
            self.disk.touch(item.head)
        return items

    def _promote(self, url: str, bucket: int) -> list[Variant]:
        """Read `url`'s variants from disk and keep them in memory if the whole group fits.

        The group's size is checked before any body is read: a group too large for the memory tier is
        returned head-only (bodies streamed from disk) and leaves the tier as it was.
        """
        stamp = self.epoch.generation(bucket)  # read first: a change after it is seen by the next lookup
        heads = self.disk.variants(url)
        if not heads:
            if len(self._absent) >= _ABSENT_REMEMBERED:
                self._absent.clear()
            self._absent[url] = stamp
            return []
        self._absent.pop(url, None)
        for head in heads:
            self.disk.touch(head)
        if not self.memory.group_fits(heads):
            return [(head, None, None) for head in heads]
        found: list[Variant] = []
        for head in heads:
            kept = self.memory.accepts(head.body_length)
            body = self.disk.read_body(head) if kept else None
            if body is None and kept:
                continue  # deleted or damaged since the heads were read
            found.append((head, body, None))
        if found:
            self.memory.put_group(url, [(head, body) for head, body, _ in found], stamp)
        return found

    def forget(self, url: str) -> None:
        """Drop `url` from memory: what it holds is no longer on disk."""
        self.memory.drop_url(url)

    def begin(self, url: str, secondary_key: str) -> BodyWriter:
        return self.disk.begin(url, secondary_key)

    def commit(
        self,
        writer: BodyWriter,
        head: EntryHead,
        expected_length: int | None,
        body: bytes | None = None,
    ) -> EntryHead | None:
        """Publish a written entry; pass `body` if the caller still has it in memory.

        If this process's memory tier holds the URL, the new variant joins it (head-only when the body
        is too large or not given); otherwise the next lookup promotes all variants from disk.
        """
        before = self.epoch.generation(url_bucket(head.url))
        stored = writer.commit(head, expected_length)
        if stored is not None:
            self._sync_epoch()
            if self._only_our_change(head.url, before):
                self._remember(stored, body)
        return stored

    def _only_our_change(self, url: str, before: int) -> bool:
        """After this process changed `url` on disk: if its group was current and nobody else changed the
        bucket meanwhile, stamp the group with the new generation and return True; else drop it."""
        bucket = url_bucket(url)
        if self.memory.stamp(url) == before and self.epoch.generation(bucket) == before + 1:
            self.memory.set_stamp(url, before + 1)
            return True
        self.memory.drop_url(url)
        return False

    def _remember(self, head: EntryHead, body: bytes | None) -> None:
        if not self.memory.has_url(head.url):
            return
        if not self.memory.accepts(head.body_length):
            self.memory.put(head, None)
        elif body is not None:
            self.memory.put(head, body)
        else:
            self.memory.drop_url(head.url)

    def freshen(self, head: EntryHead) -> bool:
        """Replace a stored head keeping its body (e.g. after a 304)."""
        before = self.epoch.generation(url_bucket(head.url))
        if not self.disk.replace_head(head):
            self.memory.drop_url(head.url)
            return False
        if self._only_our_change(head.url, before):
            self.memory.update_head(head)
        return True

    def set_extra(self, head: EntryHead, extra: Any) -> bool:
        """Attach precomputed data (e.g. header bytes) to a memory-resident variant."""
        return self.memory.set_extra(head, extra)

    def purge_url(self, url: str, soft: bool = False) -> int:
        return sum(self.purge_batches("url", url, soft))

    def purge_prefix(self, url_prefix: str, soft: bool = False) -> int:
        return sum(self.purge_batches("prefix", url_prefix, soft))

    def purge_tag(self, tag: str, soft: bool = False) -> int:
        return sum(self.purge_batches("tag", tag, soft))

    def purge_all(self, soft: bool = False) -> int:
        return sum(self.purge_batches("all", "", soft))

    def purge_batches(self, mode: str, target: str, soft: bool = False) -> Iterator[int]:
        """Purge (`soft`: mark stale) the entries of URL, prefix, tag or all, one bounded write
        transaction per step; yields each step's count. Each step is visible to every process when it
        is yielded (see the module docstring); this process's memory copies go at the end."""
        disk, memory = self.disk, self.memory
        if mode == "url":
            yield from disk.mark_stale_url_batches(target) if soft else disk.delete_url_batches(target)
            memory.drop_url(target)
        elif mode == "prefix":
            yield from disk.mark_stale_prefix_batches(target) if soft else disk.delete_prefix_batches(target)
            memory.drop_prefix(target)
        elif mode == "tag":
            yield from disk.mark_stale_tag_batches(target) if soft else disk.delete_tag_batches(target)
            memory.drop_tag(target)
        elif mode == "all":
            yield from disk.mark_stale_prefix_batches("") if soft else disk.delete_all_batches()
            memory.clear()
            self.epoch.bump()
            self._seen_epoch = self.epoch.current()
        else:
            raise ValueError(f"unknown purge mode {mode!r}")

    def _sync_epoch(self) -> None:
        current = self.epoch.current()
        if current != self._seen_epoch:
            self.memory.clear()
            self._absent.clear()
            self._seen_epoch = current
