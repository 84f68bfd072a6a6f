"""Tests for the memory + disk combination (accel.cache.tiers)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from accel.cache.entry import EntryHead
from accel.cache.epoch import PurgeEpoch, url_bucket
from accel.cache.memory import MemoryTier
from accel.cache.store import DiskStore
from accel.cache.tiers import TieredStore


NOW = 1_000_000.0


def make_head(url: str, secondary_key: str = "", tags: tuple[str, ...] = ()) -> EntryHead:
    return EntryHead(
        url=url, secondary_key=secondary_key, vary_names=(), status=200, reason="OK",
        fields=(("content-type", "text/plain"),), request_time=1.0, response_time=2.0,
        body_length=0, stored_at=2.0, tags=tags,
    )


@pytest.fixture
def disk(tmp_path):
    store = DiskStore(tmp_path / "cache", map_size=64 << 20, clock=lambda: NOW)
    yield store
    store.close()


def tiered(disk: DiskStore, tmp_path) -> TieredStore:
    """A TieredStore as one process would build it; several share one disk and epoch file."""
    memory = MemoryTier(max_bytes=1 << 20, max_objects=100, max_object_size=64 * 1024)
    return TieredStore(disk, memory, PurgeEpoch(tmp_path / "cache" / "purge-epoch"))


@pytest.fixture
def cache(disk, tmp_path) -> TieredStore:
    return tiered(disk, tmp_path)


def store(cache: TieredStore, url: str, body: bytes, secondary_key: str = "", **kw) -> EntryHead:
    writer = cache.begin(url, secondary_key)
    writer.write(body)
    stored = cache.commit(writer, make_head(url, secondary_key, **kw), len(body), body=body)
    assert stored is not None
    return stored


def count_disk_reads(cache: TieredStore, monkeypatch) -> list[str]:
    calls: list[str] = []
    variants = cache.disk.variants
    monkeypatch.setattr(cache.disk, "variants", lambda url: calls.append(url) or variants(url))
    return calls


def test_lookup_promotes_into_memory(cache, monkeypatch):
    stored = store(cache, "http://x/a", b"hello")
    reads = count_disk_reads(cache, monkeypatch)
    assert cache.lookup("http://x/a") == [(stored, b"hello", None)]
    assert cache.lookup("http://x/a") == [(stored, b"hello", None)]
    assert reads == ["http://x/a"]
    assert cache.memory.stats()["objects"] == 1
    assert cache.lookup("http://x/missing") == []


def test_large_bodies_are_head_only_in_memory(cache, monkeypatch):
    body = b"L" * 200_000
    stored = store(cache, "http://x/large", body)
    assert cache.lookup("http://x/large") == [(stored, None, None)]
    reads = count_disk_reads(cache, monkeypatch)
    assert cache.lookup("http://x/large") == [(stored, None, None)]
    assert reads == []
    assert b"".join(cache.disk.iter_body(stored)) == body


def test_commit_joins_a_url_group_already_in_memory(cache, monkeypatch):
    gzip = store(cache, "http://x/v", b"gz", "ae=gzip")
    cache.lookup("http://x/v")
    plain = store(cache, "http://x/v", b"plain", "ae=")
    reads = count_disk_reads(cache, monkeypatch)
    found = sorted(cache.lookup("http://x/v"), key=lambda variant: variant[0].secondary_key)
    assert found == [(plain, b"plain", None), (gzip, b"gz", None)]
    assert reads == []


def test_commit_of_a_url_not_in_memory_leaves_memory_alone(cache):
    store(cache, "http://x/new", b"data")
    assert not cache.memory.has_url("http://x/new")


def test_lookup_touches_disk_entries_for_lru(cache):
    store(cache, "http://x/a", b"a")
    cache.lookup("http://x/a")
    cache.lookup("http://x/a")
    assert cache.disk.flush_access(NOW + 60) == 1


def test_purge_url_hard_and_soft(cache):
    store(cache, "http://x/a", b"a")
    store(cache, "http://x/b", b"b")
    cache.lookup("http://x/a")
    cache.lookup("http://x/b")
    assert cache.purge_url("http://x/a") == 1
    assert cache.lookup("http://x/a") == []
    assert cache.purge_url("http://x/b", soft=True) == 1
    [(head, body, _)] = cache.lookup("http://x/b")
    assert head.stale_marked and body == b"b"


def test_purge_prefix_tag_and_all(cache):
    store(cache, "http://x/p/1", b"1")
    store(cache, "http://x/p/2", b"2", tags=("red",))
    store(cache, "http://x/q", b"3", tags=("red",))
    store(cache, "http://x/r", b"4")
    for url in ("http://x/p/1", "http://x/p/2", "http://x/q", "http://x/r"):
        cache.lookup(url)
    assert cache.purge_prefix("http://x/p/") == 2
    assert cache.purge_tag("red", soft=True) == 1
    assert cache.lookup("http://x/q")[0][0].stale_marked
    assert cache.purge_tag("red") == 1
    assert cache.lookup("http://x/q") == []
    assert cache.purge_all() == 1
    assert cache.lookup("http://x/r") == []
    assert cache.memory.stats()["objects"] == 0


def test_purge_in_another_process_drops_that_url_from_memory(disk, tmp_path):
    here, there = tiered(disk, tmp_path), tiered(disk, tmp_path)
    store(here, "http://x/a", b"a")
    store(here, "http://x/b", b"b")
    here.lookup("http://x/a")
    here.lookup("http://x/b")
    assert there.purge_url("http://x/a") == 1
    assert here.lookup("http://x/a") == []
    assert here.memory.has_url("http://x/b")  # its bucket did not change: still served from memory
    assert here.lookup("http://x/b")[0][1] == b"b"


def test_own_purge_keeps_unrelated_memory_entries(cache, monkeypatch):
    store(cache, "http://x/a", b"a")
    store(cache, "http://x/b", b"b")
    cache.lookup("http://x/a")
    cache.lookup("http://x/b")
    cache.purge_url("http://x/a")
    reads = count_disk_reads(cache, monkeypatch)
    assert cache.lookup("http://x/b")[0][1] == b"b"
    assert reads == []


def test_freshen_updates_both_tiers(cache):
    stored = store(cache, "http://x/f", b"f")
    cache.lookup("http://x/f")
    fresh = replace(stored, response_time=50.0)
    assert cache.freshen(fresh)
    assert cache.lookup("http://x/f") == [(fresh, b"f", None)]
    assert cache.disk.variants("http://x/f") == [fresh]


def test_set_extra_is_returned_by_lookup(cache):
    stored = store(cache, "http://x/e", b"e")
    cache.lookup("http://x/e")
    assert cache.set_extra(stored, b"precomputed")
    assert cache.lookup("http://x/e") == [(stored, b"e", b"precomputed")]


def test_failed_commit_stores_nothing(cache):
    writer = cache.begin("http://x/bad", "")
    writer.write(b"12345")
    assert cache.commit(writer, make_head("http://x/bad"), 6) is None
    assert cache.lookup("http://x/bad") == []


# -- memory coherent with the disk of every process -----------------------------------------------------


def test_a_replacement_by_another_process_reaches_memory(disk, tmp_path):
    here, there = tiered(disk, tmp_path), tiered(disk, tmp_path)
    old = store(here, "http://x/big", b"o" * 200_000)
    assert here.lookup("http://x/big") == [(old, None, None)]  # head-only in memory
    new = store(there, "http://x/big", b"n" * 150_000)  # frees the old body
    found = here.lookup("http://x/big")
    assert found == [(new, None, None)]
    assert b"".join(here.disk.iter_body(found[0][0])) == b"n" * 150_000


def test_an_eviction_by_another_process_reaches_memory(tmp_path):
    ticks = itertools.count()
    disk = DiskStore(tmp_path / "cache", map_size=8 << 20, clock=lambda: NOW + next(ticks) / 1000)
    try:
        here, there = tiered(disk, tmp_path), tiered(disk, tmp_path)
        store(here, "http://x/small", b"s")
        assert here.lookup("http://x/small")[0][1] == b"s"
        for n in range(64):  # the other process fills the disk (8 MiB: about 16 fillers) until small is evicted
            if not disk.variants("http://x/small"):
                break
            store(there, f"http://x/filler/{n}", b"f" * 500_000)
        else:
            raise AssertionError("64 fillers of 500 kB in an 8 MiB map, and small is still stored")
        assert here.lookup("http://x/small") == []
    finally:
        disk.close()


def test_a_variant_added_by_another_process_is_found(disk, tmp_path):
    here, there = tiered(disk, tmp_path), tiered(disk, tmp_path)
    gzip = store(here, "http://x/v", b"gz", "ae=gzip")
    here.lookup("http://x/v")
    plain = store(there, "http://x/v", b"plain", "ae=")
    found = sorted(here.lookup("http://x/v"), key=lambda variant: variant[0].secondary_key)
    assert found == [(plain, b"plain", None), (gzip, b"gz", None)]


REPLACER = """
import os, sys
sys.path.insert(0, {root!r})
from accel.cache.epoch import PurgeEpoch
from accel.cache.memory import MemoryTier
from accel.cache.store import DiskStore
from accel.cache.tiers import TieredStore
from tests.test_tiers import make_head

directory = {directory!r}
store = TieredStore(DiskStore(directory, map_size=64 << 20), MemoryTier(1 << 20, 100),
                    PurgeEpoch(os.path.join(directory, "purge-epoch")))
writer = store.begin("http://x/shared", "")
writer.write(b"from the other process")
store.commit(writer, make_head("http://x/shared"), 22)
"""


def test_a_replacement_by_a_real_second_process_reaches_memory(disk, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    here = tiered(disk, tmp_path)
    store(here, "http://x/shared", b"from this process")
    assert here.lookup("http://x/shared")[0][1] == b"from this process"
    root = str(Path(__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", REPLACER.format(root=root, directory=disk.path)], check=True, timeout=30)
    assert here.lookup("http://x/shared")[0][1] == b"from the other process"


def test_a_url_with_too_many_variants_leaves_memory_alone(cache, monkeypatch):
    other = store(cache, "http://x/other", b"other")
    cache.lookup("http://x/other")
    heads = [store(cache, "http://x/many", b"v" * 100, f"k={n}") for n in range(150)]  # > max_objects (100)
    bodies = []
    read_body = cache.disk.read_body
    monkeypatch.setattr(cache.disk, "read_body", lambda head: bodies.append(head) or read_body(head))
    found = cache.lookup("http://x/many")
    assert sorted(head.secondary_key for head, _, _ in found) == sorted(head.secondary_key for head in heads)
    assert all(body is None for _, body, _ in found)  # streamed from disk when served
    assert bodies == []  # no body was read to find out it would not fit
    assert not cache.memory.has_url("http://x/many")
    assert cache.lookup("http://x/other") == [(other, b"other", None)]  # still in memory
    assert bodies == []


def test_a_url_with_too_many_bytes_of_variants_leaves_memory_alone(disk, tmp_path, monkeypatch):
    cache = TieredStore(disk, MemoryTier(max_bytes=100_000, max_objects=100, max_object_size=60_000),
                        PurgeEpoch(tmp_path / "cache" / "purge-epoch"))
    store(cache, "http://x/other", b"other")
    cache.lookup("http://x/other")
    for n in range(3):
        store(cache, "http://x/wide", b"w" * 50_000, f"k={n}")  # each fits, the group does not
    reads = []
    read_body = cache.disk.read_body
    monkeypatch.setattr(cache.disk, "read_body", lambda head: reads.append(head) or read_body(head))
    assert len(cache.lookup("http://x/wide")) == 3
    assert reads == [] and cache.memory.has_url("http://x/other")


def test_a_variant_that_would_overflow_its_group_evicts_nothing_else(disk, tmp_path):
    cache = TieredStore(disk, MemoryTier(max_bytes=100_000, max_objects=100, max_object_size=60_000),
                        PurgeEpoch(tmp_path / "cache" / "purge-epoch"))
    store(cache, "http://x/other", b"other")
    cache.lookup("http://x/other")
    store(cache, "http://x/wide", b"w" * 50_000, "k=0")
    cache.lookup("http://x/wide")
    assert cache.memory.has_url("http://x/wide")
    store(cache, "http://x/wide", b"w" * 50_000, "k=1")  # the group no longer fits on its own
    assert not cache.memory.has_url("http://x/wide")
    assert cache.memory.has_url("http://x/other")


def test_a_url_found_nowhere_is_not_read_from_disk_again(cache, monkeypatch):
    reads = count_disk_reads(cache, monkeypatch)
    assert cache.lookup("http://x/none") == []
    assert cache.lookup("http://x/none") == []
    assert reads == ["http://x/none"]


def test_a_url_stored_after_it_was_found_absent_is_found(cache):
    assert cache.lookup("http://x/late") == []
    stored = store(cache, "http://x/late", b"late")
    assert cache.lookup("http://x/late") == [(stored, b"late", None)]


def test_a_url_another_process_stores_after_it_was_found_absent_is_found(disk, tmp_path):
    here, there = tiered(disk, tmp_path), tiered(disk, tmp_path)
    assert here.lookup("http://x/shared") == []
    stored = store(there, "http://x/shared", b"from there")
    assert here.lookup("http://x/shared") == [(stored, b"from there", None)]


def test_a_wide_change_forgets_what_was_absent(disk, tmp_path, monkeypatch):
    here, there = tiered(disk, tmp_path), tiered(disk, tmp_path)
    assert here.lookup("http://x/wide") == []
    there.epoch.changed(None)  # a change too wide to name its URLs: only the epoch moves
    reads = count_disk_reads(here, monkeypatch)
    assert here.lookup("http://x/wide") == []
    assert reads == ["http://x/wide"]


def test_lookup_memory_answers_only_while_the_group_is_current(disk, tmp_path):
    here, there = tiered(disk, tmp_path), tiered(disk, tmp_path)
    store(here, "http://x/a", b"a")
    assert here.lookup_memory("http://x/a") == []  # not read into memory yet
    here.lookup("http://x/a")
    bucket = url_bucket("http://x/a")
    for known in (None, bucket):
        assert [item.body for item in here.lookup_memory("http://x/a", known)] == [b"a"]
    assert here.disk.flush_access(NOW + 60) == 1  # the memory hits counted toward the disk tier's LRU
    assert there.purge_url("http://x/a") == 1
    assert here.lookup_memory("http://x/a", bucket) == []
    assert here.lookup_memory("http://x/a") == []


def test_a_body_of_known_length_is_stored_as_its_last_bytes_arrive(cache):
    """accel.cache.layer.EntryWriter commits before the relay writes the last bytes to the client: a client that
    has the whole response finds it stored, whichever process its next request reaches."""
    from accel.cache.layer import EntryWriter

    writer = EntryWriter(cache, make_head("http://x/known"), expected=6, max_size=1 << 20, keep_up_to=1 << 20,
                         clock=lambda: NOW)
    writer.write(b"abc")
    assert cache.lookup("http://x/known") == []
    writer.write(b"def")
    [(head, body, _)] = cache.lookup("http://x/known")
    assert (head.body_length, body) == (6, b"abcdef")
    assert writer.finish(True) == head  # the relay's end finds it committed already
