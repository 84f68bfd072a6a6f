"""The hot in-process memory tier in front of the disk store.

A byte- and count-bounded LRU of complete entries. Entries are grouped by URL:
a URL's group holds every variant (one item per Vary secondary key) that the
process knows of, and recency and eviction apply to whole groups. This keeps an
invariant the tiered lookup relies on — if the memory tier has a URL at all, it
has all of that URL's variants — so a hit on a partial group can never hide a
variant that only exists on disk and turn every request for it into a miss.

A group is admitted only if it fits the limits on its own: its size is checked before its bodies are read
(``group_fits``) and before it grows (``put``), so a URL with too many variants is served from disk rather
than emptying the tier. Each group carries a ``stamp`` (the cross-process generation it was read at; see
``accel.cache.tiers``).

Items whose body is outside the size window are kept head-only (``body`` is
None; the caller streams the body from disk) so that groups stay complete.
Each item also carries an opaque ``extra`` slot (the HTTP layer keeps
precomputed header bytes there); bytes-like extras count toward the limit, and
so does an extra object's ``memory_charge`` (the compressed bodies it keeps).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from accel.cache.entry import EntryHead

_ITEM_OVERHEAD = 256  # rough bytes of Python object overhead per item
_FIELD_OVERHEAD = 16


class _Group(dict):
    """A URL's items by secondary key, with the group's total charge and its stamp."""

    __slots__ = ("charge", "stamp")

    def __init__(self, stamp: Any = None) -> None:
        super().__init__()
        self.charge = 0
        self.stamp = stamp


@dataclass(slots=True)
class MemoryItem:
    head: EntryHead
    body: bytes | None
    extra: Any
    charge: int  # bytes counted against max_bytes


class MemoryTier:
    """LRU of URL groups bounded by total bytes and total item count."""

    def __init__(
        self,
        max_bytes: int,
        max_objects: int,
        min_object_size: int = 0,
        max_object_size: int | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_objects = max_objects
        self.min_object_size = min_object_size
        self.max_object_size = max_bytes // 8 if max_object_size is None else max_object_size
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self._bytes = 0
        self._count = 0
        self.hits = 0  # lookups answered from memory (accel.cache.fast counts its remembered answers here too)
        self._misses = 0
        self._evictions = 0

    def accepts(self, body_length: int) -> bool:
        """Whether a body of this length may be held in memory."""
        return self.min_object_size <= body_length <= self.max_object_size

    def has_url(self, url: str) -> bool:
        """Whether `url` has a group (no effect on recency)."""
        return url in self._groups

    def stamp(self, url: str) -> Any:
        """The stamp of `url`'s group; None when there is no group."""
        group = self._groups.get(url)
        return None if group is None else group.stamp

    def set_stamp(self, url: str, stamp: Any) -> None:
        group = self._groups.get(url)
        if group is not None:
            group.stamp = stamp

    def group_fits(self, heads: list[EntryHead]) -> bool:
        """Whether a group of these heads, with the bodies this tier accepts, fits the limits on its own:
        checked before reading the bodies."""
        charge = sum(
            item_charge(head, head.body_length if self.accepts(head.body_length) else 0) for head in heads
        )
        return len(heads) <= self.max_objects and charge <= self.max_bytes

    def put_group(self, url: str, items: list[tuple[EntryHead, bytes | None]], stamp: Any) -> bool:
        """Replace `url`'s group with `items` (every variant); False, keeping nothing of the URL and
        evicting nothing, when it does not fit on its own."""
        self.drop_url(url)
        group = _Group(stamp)
        for head, body in items:
            if body is not None and not self.accepts(len(body)):
                return False
            item = MemoryItem(head, body, None, _charge(head, body, None))
            group[head.secondary_key] = item
            group.charge += item.charge
        if len(group) > self.max_objects or group.charge > self.max_bytes:
            return False
        self._groups[url] = group
        self._bytes += group.charge
        self._count += len(group)
        self._evict()
        return url in self._groups

    def stamped_variants(self, url: str, stamp: Any) -> list[MemoryItem]:
        """``get_variants`` when `url`'s group has the stamp `stamp`; else [] (nothing counted)."""
        group = self._groups.get(url)
        if group is None or group.stamp != stamp:
            return []
        self.hits += 1
        self._groups.move_to_end(url)
        return list(group.values())

    def get_variants(self, url: str) -> list[MemoryItem]:
        """All items stored for `url`, marking the group most recently used."""
        group = self._groups.get(url)
        if group is None:
            self._misses += 1
            return []
        self.hits += 1
        self._groups.move_to_end(url)
        return list(group.values())

    def put(self, head: EntryHead, body: bytes | None, extra: Any = None) -> bool:
        """Store or replace the item for (head.url, head.secondary_key).

        `body` None stores the head only. Returns False — and drops the URL's
        group so it never stays partial — when the body is outside the size
        window or the group cannot fit within the limits.
        """
        if body is not None and not self.accepts(len(body)):
            self.drop_url(head.url)
            return False
        item = MemoryItem(head, body, extra, _charge(head, body, extra))
        group = self._groups.get(head.url)
        if group is None:
            group = self._groups[head.url] = _Group()
        self._account(group, group.pop(head.secondary_key, None), -1)
        group[head.secondary_key] = item
        self._account(group, item, +1)
        if len(group) > self.max_objects or group.charge > self.max_bytes:
            self.drop_url(head.url)  # too large on its own: evicting others would not make it fit
            return False
        self._groups.move_to_end(head.url)
        self._evict()
        return head.url in self._groups

    def update_head(self, head: EntryHead) -> bool:
        """Replace a stored item's head (e.g. freshened by a 304), keeping its body.

        The item's `extra` is reset since it was derived from the old head.
        Returns False when there is no item with the same body.
        """
        old = self._groups.get(head.url, {}).get(head.secondary_key)
        if old is None or old.head.body_id != head.body_id:
            return False
        return self.put(head, old.body)

    def set_extra(self, head: EntryHead, extra: Any) -> bool:
        """Attach `extra` to the item holding exactly `head`."""
        item = self._groups.get(head.url, {}).get(head.secondary_key)
        if item is None or item.head != head:
            return False
        return self.put(head, item.body, extra)

    def drop_url(self, url: str) -> int:
        """Forget every variant of `url`; return how many items were dropped."""
        group = self._groups.pop(url, None)
        if group is None:
            return 0
        self._bytes -= group.charge
        self._count -= len(group)
        return len(group)

    def drop_prefix(self, prefix: str) -> int:
        """Forget every URL starting with `prefix` (O(number of URLs))."""
        urls = [url for url in self._groups if url.startswith(prefix)]
        return sum(self.drop_url(url) for url in urls)

    def drop_tag(self, tag: str) -> int:
        """Forget every URL with a variant tagged `tag` (O(number of items))."""
        urls = [
            url
            for url, group in self._groups.items()
            if any(tag in item.head.tags for item in group.values())
        ]
        return sum(self.drop_url(url) for url in urls)

    def clear(self) -> None:
        self._groups.clear()
        self._bytes = 0
        self._count = 0

    def stats(self) -> dict[str, int]:
        return {
            "objects": self._count,
            "urls": len(self._groups),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "max_objects": self.max_objects,
            "hits": self.hits,
            "misses": self._misses,
            "evictions": self._evictions,
        }

    def _account(self, group: _Group, item: MemoryItem | None, sign: int) -> None:
        if item is not None:
            group.charge += sign * item.charge
            self._bytes += sign * item.charge
            self._count += sign

    def _evict(self) -> None:
        """Drop least recently used groups until both limits hold."""
        while self._groups and (self._bytes > self.max_bytes or self._count > self.max_objects):
            url = next(iter(self._groups))
            self._evictions += self.drop_url(url)


def item_charge(head: EntryHead, body_length: int) -> int:
    """Bytes an item holding `head` and a body of `body_length` bytes counts against the limit."""
    size = _ITEM_OVERHEAD + len(head.url) + len(head.secondary_key)
    return size + body_length + sum(len(name) + len(value) + _FIELD_OVERHEAD for name, value in head.fields)


def _charge(head: EntryHead, body: bytes | None, extra: Any) -> int:
    size = item_charge(head, len(body) if body is not None else 0)
    if isinstance(extra, (bytes, bytearray, memoryview)):
        size += len(extra)
    else:
        size += getattr(extra, "memory_charge", 0)  # what an extra object holds (a response's codings)
    return size
