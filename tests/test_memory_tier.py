"""Tests for the in-process memory tier (accel.cache.memory)."""

from __future__ import annotations

from dataclasses import replace

from accel.cache.entry import EntryHead
from accel.cache.memory import MemoryTier


def make_head(url: str, secondary_key: str = "", tags: tuple[str, ...] = ()) -> EntryHead:
    return EntryHead(
        url=url, secondary_key=secondary_key, vary_names=(), status=200, reason="OK",
        fields=(), request_time=0.0, response_time=0.0, body_length=0, stored_at=0.0,
        tags=tags, body_id=b"id-" + url.encode() + secondary_key.encode(),
    )


def put(tier: MemoryTier, url: str, size: int, secondary_key: str = "", **kw) -> bool:
    head = replace(make_head(url, secondary_key, **kw), body_length=size)
    return tier.put(head, b"x" * size)


def urls(tier: MemoryTier, *candidates: str) -> list[str]:
    return [url for url in candidates if tier.has_url(url)]


def test_put_and_get_variants():
    tier = MemoryTier(max_bytes=1 << 20, max_objects=100)
    assert tier.get_variants("http://x/a") == []
    assert put(tier, "http://x/a", 10, "k=1")
    assert put(tier, "http://x/a", 20, "k=2")
    items = tier.get_variants("http://x/a")
    assert sorted(len(item.body) for item in items) == [10, 20]
    assert tier.stats()["objects"] == 2 and tier.stats()["urls"] == 1
    assert tier.stats()["hits"] == 1 and tier.stats()["misses"] == 1


def test_replacing_a_variant_keeps_accounting_exact():
    tier = MemoryTier(max_bytes=1 << 20, max_objects=100)
    put(tier, "http://x/a", 1000)
    before = tier.stats()["bytes"]
    put(tier, "http://x/a", 3000)
    assert tier.stats()["objects"] == 1
    assert tier.stats()["bytes"] == before + 2000
    tier.drop_url("http://x/a")
    assert tier.stats()["bytes"] == 0 and tier.stats()["objects"] == 0


def test_byte_limit_evicts_least_recently_used():
    tier = MemoryTier(max_bytes=10_000, max_objects=100, max_object_size=5_000)
    for name in "abc":
        assert put(tier, f"http://x/{name}", 3000)
    tier.get_variants("http://x/a")  # a is now the most recent
    assert put(tier, "http://x/d", 3000)
    assert urls(tier, "http://x/a", "http://x/b", "http://x/c", "http://x/d") == [
        "http://x/a", "http://x/c", "http://x/d"]
    assert tier.stats()["bytes"] <= 10_000
    assert tier.stats()["evictions"] == 1


def test_count_limit_evicts_least_recently_used():
    tier = MemoryTier(max_bytes=1 << 20, max_objects=3)
    for name in "abcd":
        put(tier, f"http://x/{name}", 1)
    assert urls(tier, *(f"http://x/{n}" for n in "abcd")) == [
        "http://x/b", "http://x/c", "http://x/d"]
    assert tier.stats()["objects"] == 3


def test_object_size_window():
    tier = MemoryTier(max_bytes=1 << 20, max_objects=100, min_object_size=10, max_object_size=100)
    assert not put(tier, "http://x/tiny", 9)
    assert not put(tier, "http://x/big", 101)
    assert put(tier, "http://x/ok", 10) and put(tier, "http://x/ok2", 100)
    assert tier.accepts(50) and not tier.accepts(101)
    assert tier.put(make_head("http://x/head-only"), None)
    assert tier.get_variants("http://x/head-only")[0].body is None


def test_default_max_object_size_is_an_eighth():
    tier = MemoryTier(max_bytes=8000, max_objects=10)
    assert tier.accepts(1000) and not tier.accepts(1001)


def test_eviction_and_refusal_drop_whole_url_groups():
    tier = MemoryTier(max_bytes=10_000, max_objects=4, max_object_size=5000)
    put(tier, "http://x/a", 10, "k=1")
    put(tier, "http://x/a", 10, "k=2")
    put(tier, "http://x/b", 10)
    put(tier, "http://x/c", 10)
    put(tier, "http://x/d", 10)  # 5 objects: the oldest group (a, 2 variants) goes
    assert urls(tier, "http://x/a", "http://x/b") == ["http://x/b"]
    assert tier.stats()["objects"] == 3
    assert not put(tier, "http://x/b", 6000, "k=big")  # refused: b must not stay partial
    assert not tier.has_url("http://x/b")


def test_group_larger_than_the_tier_is_not_kept():
    tier = MemoryTier(max_bytes=10_000, max_objects=100, max_object_size=5000)
    assert put(tier, "http://x/a", 4000, "k=1")
    assert put(tier, "http://x/a", 4000, "k=2")
    assert not put(tier, "http://x/a", 4000, "k=3")
    assert tier.stats()["objects"] == 0 and tier.stats()["bytes"] == 0


def test_drop_prefix_tag_and_clear():
    tier = MemoryTier(max_bytes=1 << 20, max_objects=100)
    put(tier, "http://x/a/1", 1, tags=("red",))
    put(tier, "http://x/a/2", 1)
    put(tier, "http://x/b", 1, "k=1")
    put(tier, "http://x/b", 1, "k=2", tags=("blue",))
    assert tier.drop_prefix("http://x/a/") == 2
    assert tier.drop_tag("blue") == 2
    assert tier.stats()["objects"] == 0
    put(tier, "http://x/c", 1)
    tier.clear()
    assert tier.stats()["objects"] == 0 and tier.stats()["bytes"] == 0


def test_update_head_keeps_body_and_resets_extra():
    tier = MemoryTier(max_bytes=1 << 20, max_objects=100)
    head = make_head("http://x/a")
    tier.put(head, b"body", extra=b"HTTP/1.1 200 OK\r\n")
    fresh = replace(head, response_time=99.0)
    assert tier.update_head(fresh)
    [item] = tier.get_variants("http://x/a")
    assert (item.head, item.body, item.extra) == (fresh, b"body", None)
    assert not tier.update_head(replace(fresh, body_id=b"other"))


def test_set_extra_is_charged():
    tier = MemoryTier(max_bytes=1 << 20, max_objects=100)
    head = make_head("http://x/a")
    tier.put(head, b"body")
    before = tier.stats()["bytes"]
    assert tier.set_extra(head, b"h" * 100)
    assert tier.get_variants("http://x/a")[0].extra == b"h" * 100
    assert tier.stats()["bytes"] == before + 100
    assert not tier.set_extra(replace(head, status=404), b"")
