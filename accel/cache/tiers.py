"""The memory tier and the disk store combined, kept coherent across processes.

Lookups try this process's memory tier first and fall back to the shared disk
store, promoting what they read. Purges apply to disk, then to memory, then
bump the shared `PurgeEpoch` before returning, so by the time a PURGE is
answered every process will see the new epoch on its next lookup and drop its
memory tier. Every call is short and synchronous (for the reactor thread).
"""

from __future__ import annotations

from typing import Any

from accel.cache.entry import EntryHead
from accel.cache.epoch import PurgeEpoch
from accel.cache.memory import MemoryTier
from accel.cache.store import BodyWriter, DiskStore

Variant = tuple[EntryHead, bytes | None, Any]


class TieredStore:
    def __init__(self, disk: DiskStore, memory: MemoryTier, epoch: PurgeEpoch) -> None:
        self.disk = disk
        self.memory = memory
        self.epoch = epoch
        self._seen_epoch = epoch.current()

    def lookup(self, url: str) -> list[Variant]:
        """Every stored variant of `url` as (head, body or None, extra).

        A None body means the body is too large for memory; stream it with
        ``disk.iter_body(head)``. Use counts toward the disk tier's LRU.
        """
        self._sync_epoch()
        items = self.memory.get_variants(url)
        if items:
            for item in items:
                self.disk.touch(item.head)
            return [(item.head, item.body, item.extra) for item in items]
        return self._promote(url)

    def lookup_memory(self, url: str) -> list:
        """The memory tier's items for `url` (MemoryItem: head, body, extra); [] when it holds none
        (then ``lookup`` reads the disk tier). Use counts toward the disk tier's LRU."""
        self._sync_epoch()
        items = self.memory.get_variants(url)
        for item in items:
            self.disk.touch(item.head)
        return items

    def _promote(self, url: str) -> list[Variant]:
        """Read `url`'s variants from disk and, if they all fit, keep them in memory."""
        found: list[Variant] = []
        for head in self.disk.variants(url):
            body = self.disk.read_body(head) if self.memory.accepts(head.body_length) else None
            if body is None and self.memory.accepts(head.body_length):
                continue  # deleted or damaged since the heads were read
            self.disk.touch(head)
            found.append((head, body, None))
        for head, body, _ in found:
            if not self.memory.put(head, body):
                break  # put() dropped the whole group, so memory never holds part of it
        return found

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

        If this process's memory tier holds the URL, the new variant joins it
        (head-only when the body is too large or not given); otherwise the
        next lookup promotes all variants from disk.
        """
        stored = writer.commit(head, expected_length)
        if stored is not None:
            self._sync_epoch()
            self._remember(stored, body)
        return stored

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
        if not self.disk.replace_head(head):
            self.memory.drop_url(head.url)
            return False
        self.memory.update_head(head)
        return True

    def set_extra(self, head: EntryHead, extra: Any) -> bool:
        """Attach precomputed data (e.g. header bytes) to a memory-resident variant."""
        return self.memory.set_extra(head, extra)

    def purge_url(self, url: str, soft: bool = False) -> int:
        count = self.disk.mark_stale_url(url) if soft else self.disk.delete_url(url)
        self.memory.drop_url(url)
        return self._purged(count)

    def purge_prefix(self, url_prefix: str, soft: bool = False) -> int:
        disk = self.disk
        count = disk.mark_stale_prefix(url_prefix) if soft else disk.delete_prefix(url_prefix)
        self.memory.drop_prefix(url_prefix)
        return self._purged(count)

    def purge_tag(self, tag: str, soft: bool = False) -> int:
        count = self.disk.mark_stale_tag(tag) if soft else self.disk.delete_tag(tag)
        self.memory.drop_tag(tag)
        return self._purged(count)

    def purge_all(self, soft: bool = False) -> int:
        count = self.disk.mark_stale_prefix("") if soft else self.disk.delete_all()
        self.memory.clear()
        return self._purged(count)

    def _purged(self, count: int) -> int:
        """Publish a purge to every process before it is acknowledged."""
        new_epoch = self.epoch.bump()
        if new_epoch == self._seen_epoch + 1:
            self._seen_epoch = new_epoch  # nobody else purged: memory is already current
        return count

    def _sync_epoch(self) -> None:
        current = self.epoch.current()
        if current != self._seen_epoch:
            self.memory.clear()
            self._seen_epoch = current
