"""Tests for the LMDB disk store (accel.cache.store) and head encoding (accel.cache.entry)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accel.cache.entry import CorruptEntry, EntryHead, decode_head, encode_head
from accel.cache import store as store_module
from accel.cache.store import CHUNK_SIZE, DiskStore, IncompatibleStore, StoreFull, _chunk_key

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_head(url: str, secondary_key: str = "", **changes) -> EntryHead:
    head = EntryHead(
        url=url,
        secondary_key=secondary_key,
        vary_names=("accept-encoding",) if secondary_key else (),
        status=200,
        reason="OK",
        fields=(("content-type", "text/plain"), ("cache-control", "max-age=60")),
        request_time=100.0,
        response_time=101.0,
        body_length=0,
        stored_at=101.0,
    )
    return replace(head, **changes)


def put(store: DiskStore, url: str, body: bytes, secondary_key: str = "", **changes) -> EntryHead:
    writer = store.begin(url, secondary_key)
    writer.write(body)
    stored = writer.commit(make_head(url, secondary_key, **changes), len(body))
    assert stored is not None
    return stored


def run_child(code: str, *, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=30, check=check,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    disk = DiskStore(tmp_path / "cache", map_size=64 << 20, clock=clock)
    yield disk
    disk.close()


# -- entry encoding -------------------------------------------------------------

text = st.text(max_size=20)


@settings(max_examples=50, deadline=None)
@given(
    url=text,
    secondary_key=text,
    fields=st.lists(st.tuples(text, text), max_size=5).map(tuple),
    tags=st.lists(text, max_size=3).map(tuple),
    stale=st.booleans(),
    body_id=st.binary(max_size=16),
    times=st.tuples(*[st.floats(allow_nan=False, allow_infinity=False)] * 3),
)
def test_head_round_trips(url, secondary_key, fields, tags, stale, body_id, times):
    head = make_head(
        url, secondary_key, fields=fields, tags=tags, stale_marked=stale, body_id=body_id,
        request_time=times[0], response_time=times[1], stored_at=times[2], body_length=7,
    )
    assert decode_head(encode_head(head)) == head


def test_the_origin_to_rewrite_from_round_trips_and_older_records_have_none():
    head = make_head("http://o/r", fields=(("location", "http://o/x"),), reverse_origin="http://o:8080/app/")
    assert decode_head(encode_head(head)) == head
    plain = make_head("http://o/p")
    assert b'"ro"' not in encode_head(plain) and decode_head(encode_head(plain)).reverse_origin == ""


def test_lone_surrogates_round_trip():
    head = make_head("http://x/\udcff", fields=(("x-raw", "caf\udce9"),))
    assert decode_head(encode_head(head)) == head


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xfe", b"[1,2]", b'{"v":99}', b'{"v":1}',
     encode_head(make_head("http://x/")).replace(b'"status":200', b'"status":"200"'),
     encode_head(make_head("http://x/")).replace(b'"body":""', b'"body":"zz"')],
)
def test_corrupt_records_raise_corrupt_entry(data):
    with pytest.raises(CorruptEntry):
        decode_head(data)


# -- commit and lookup ------------------------------------------------------------

def test_commit_then_variants_and_body(store):
    body = os.urandom(3 * CHUNK_SIZE + 123)
    stored = put(store, "http://example.com/a?b=1", body, tags=("t1",))
    assert stored.body_length == len(body) and len(stored.body_id) == 16
    assert store.variants("http://example.com/a?b=1") == [stored]
    assert store.read_body(stored) == body
    assert b"".join(store.iter_body(stored)) == body
    assert store.variants("http://example.com/a") == []
    assert store.variants("http://example.com/a?b=12") == []


def test_empty_body(store):
    stored = put(store, "http://x/empty", b"")
    assert store.read_body(stored) == b""
    assert list(store.iter_body(stored)) == []


def test_variants_by_secondary_key(store):
    gzip = put(store, "http://x/v", b"gz", "accept-encoding=gzip")
    plain = put(store, "http://x/v", b"plain", "accept-encoding=")
    assert sorted(store.variants("http://x/v"), key=lambda h: h.secondary_key) == [plain, gzip]


def test_commit_replaces_same_variant_and_frees_old_body(store):
    old = put(store, "http://x/r", b"a" * 200_000)
    new = put(store, "http://x/r", b"b" * 10)
    assert store.variants("http://x/r") == [new]
    assert store.read_body(old) is None
    assert store.stats()["entries"] == 1
    assert store.stats()["bytes"] < 3 * 4096
    assert store.verify() == []


def test_small_writes_are_rechunked(store):
    writer = store.begin("http://x/small", "")
    for _ in range(3000):
        writer.write(b"x" * 100)
    stored = writer.commit(make_head("http://x/small"), None)
    chunks = list(store.iter_body(stored))
    assert [len(c) for c in chunks] == [CHUNK_SIZE] * 4 + [300_000 - 4 * CHUNK_SIZE]


def test_uncommitted_write_is_invisible(store):
    writer = store.begin("http://x/u", "")
    writer.write(b"z" * (5 * CHUNK_SIZE + 5))
    assert store.variants("http://x/u") == []
    assert store.stats()["pending"] == 1
    writer.abort()
    assert store.stats()["pending"] == 0
    assert store.stats()["bytes"] == 0
    assert store.verify() == []


def test_length_mismatch_stores_nothing(store):
    writer = store.begin("http://x/short", "")
    writer.write(b"q" * (CHUNK_SIZE + 10))
    assert writer.commit(make_head("http://x/short"), CHUNK_SIZE + 11) is None
    assert store.variants("http://x/short") == []
    assert store.stats() | {"readers": 0} == store.stats() | {
        "entries": 0, "pending": 0, "bytes": 0, "readers": 0}


def test_commit_checks_head_matches_writer(store):
    writer = store.begin("http://x/a", "")
    with pytest.raises(ValueError):
        writer.commit(make_head("http://x/b"), None)


def test_long_urls_do_not_collide(store):
    base = "http://x/" + "p" * 1000
    one = put(store, base + "1", b"one", tags=("t" * 600,))
    two = put(store, base + "2", b"two")
    assert store.variants(base + "1") == [one]
    assert store.variants(base + "2") == [two]
    assert store.delete_prefix(base + "1") == 1
    assert store.variants(base + "2") == [two]
    assert store.delete_tag("t" * 600) == 0
    assert store.verify() == []


def test_iter_body_raises_when_entry_vanishes_mid_stream(store):
    stored = put(store, "http://x/stream", b"s" * (3 * CHUNK_SIZE))
    chunks = store.iter_body(stored)
    next(chunks)
    store.delete_url("http://x/stream")
    with pytest.raises(CorruptEntry):
        list(chunks)


# -- deletion, soft purge, freshening ----------------------------------------------

def test_delete_url_prefix_tag_all(store):
    put(store, "http://x/a", b"1", "k=1", tags=("red",))
    put(store, "http://x/a", b"2", "k=2")
    put(store, "http://x/ab", b"3", tags=("red", "blue"))
    put(store, "http://x/b/c", b"4", tags=("blue",))
    put(store, "http://y/", b"5")
    assert store.delete_url("http://x/a") == 2
    assert store.variants("http://x/ab") != []
    assert store.delete_tag("red") == 1
    assert store.delete_tag("red") == 0
    assert store.delete_prefix("http://x/") == 1
    assert [h.url for h in store.iter_heads()] == ["http://y/"]
    writer = store.begin("http://z/", "")
    writer.write(b"w" * 4 * CHUNK_SIZE)
    assert store.delete_all() == 1
    writer.write(b"w" * 4 * CHUNK_SIZE)
    assert writer.commit(make_head("http://z/"), None) is None
    assert store.stats()["entries"] == 0 and store.stats()["bytes"] == 0
    assert store.verify() == []


def test_mark_stale_keeps_body(store):
    put(store, "http://x/a", b"1", tags=("red",))
    put(store, "http://x/b", b"2", tags=("red",))
    put(store, "http://x/c", b"3")
    assert store.mark_stale_url("http://x/a") == 1
    assert store.mark_stale_tag("red") == 2
    assert store.mark_stale_prefix("http://x/c") == 1
    for head in store.iter_heads():
        assert head.stale_marked
        assert store.read_body(head) is not None
    assert store.verify() == []


def test_replace_head_keeps_body_and_retags(store):
    stored = put(store, "http://x/f", b"body", tags=("old",))
    fresh = replace(stored, response_time=500.0, tags=("new",))
    assert store.replace_head(fresh)
    assert store.variants("http://x/f") == [fresh]
    assert store.read_body(fresh) == b"body"
    assert store.delete_tag("old") == 0
    assert store.delete_tag("new") == 1
    assert not store.replace_head(fresh)


def test_replace_head_refuses_a_replaced_body(store):
    stored = put(store, "http://x/f", b"v1")
    put(store, "http://x/f", b"v2")
    assert not store.replace_head(replace(stored, response_time=9.0))


def test_iter_heads_in_batches(store):
    for i in range(300):
        put(store, f"http://x/{i:03d}", b"")
    put(store, "http://y/", b"")
    heads = list(store.iter_heads("http://x/"))
    assert [h.url for h in heads] == [f"http://x/{i:03d}" for i in range(300)]
    assert len(list(store.iter_heads())) == 301


# -- crash safety, restart, other processes ---------------------------------------------

def test_orphaned_body_from_killed_writer(tmp_path, clock):
    path = tmp_path / "cache"
    result = run_child(f"""
        import os, signal
        from accel.cache.store import DiskStore
        store = DiskStore({str(path)!r}, map_size=64 << 20, clock=lambda: {clock.now!r})
        writer = store.begin("http://x/half", "")
        writer.write(b"h" * 300_000)
        os.kill(os.getpid(), signal.SIGKILL)
    """, check=False)
    assert result.returncode == -9
    store = DiskStore(path, map_size=64 << 20, clock=clock)
    try:
        assert store.variants("http://x/half") == []
        assert store.stats()["pending"] == 1
        assert store.collect_orphans(older_than=clock.now - 3600) == 0
        assert store.collect_orphans(older_than=clock.now + 3600) == 1
        assert store.stats()["bytes"] == 0
        assert store.verify() == []
    finally:
        store.close()


def test_killed_inside_write_transaction(tmp_path):
    path = tmp_path / "cache"
    DiskStore(path, map_size=64 << 20).close()
    result = run_child(f"""
        import os, signal
        from accel.cache.store import DiskStore
        store = DiskStore({str(path)!r}, map_size=64 << 20)
        txn = store._env.begin(write=True)
        txn.put(b"http://x/torn\\x00", b"garbage", db=store._heads)
        os.kill(os.getpid(), signal.SIGKILL)
    """, check=False)
    assert result.returncode == -9
    store = DiskStore(path, map_size=64 << 20)
    try:
        assert store.variants("http://x/torn") == []
        put(store, "http://x/after", b"ok")
        assert store.verify() == []
    finally:
        store.close()


def test_restart_serves_committed_entries(tmp_path, clock):
    path = tmp_path / "cache"
    first = DiskStore(path, map_size=64 << 20, clock=clock)
    stored = put(first, "http://x/keep", b"k" * 100_000, tags=("t",))
    first.close()
    second = DiskStore(path, map_size=64 << 20, clock=clock)
    try:
        assert second.variants("http://x/keep") == [stored]
        assert second.read_body(stored) == b"k" * 100_000
        assert second.delete_tag("t") == 1
    finally:
        second.close()


def test_other_process_sees_and_makes_deletions(store):
    put(store, "http://x/one", b"1")
    put(store, "http://x/two", b"2")
    result = run_child(f"""
        from accel.cache.store import DiskStore
        store = DiskStore({store.path!r}, map_size=64 << 20)
        print(len(store.variants("http://x/one")), store.delete_url("http://x/two"))
    """)
    assert result.stdout.split() == ["1", "1"]
    assert store.variants("http://x/two") == []
    store.delete_url("http://x/one")
    result = run_child(f"""
        from accel.cache.store import DiskStore
        print(len(DiskStore({store.path!r}, map_size=64 << 20).variants("http://x/one")))
    """)
    assert result.stdout.split() == ["0"]


def test_refuses_a_foreign_lmdb_environment(tmp_path):
    env = lmdb.open(str(tmp_path / "other"))
    with env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    env.close()
    with pytest.raises(IncompatibleStore):
        DiskStore(tmp_path / "other")


# -- size bound and eviction ----------------------------------------------------------

def test_eviction_keeps_recently_touched_entries(tmp_path, clock):
    store = DiskStore(tmp_path / "small", map_size=4 << 20, clock=clock)
    try:
        hot = put(store, "http://x/hot", b"h" * 50_000)
        for i in range(200):
            clock.now += 60
            put(store, f"http://x/{i}", os.urandom(100_000))
            store.touch(hot)
            store.flush_access(clock.now)
        stats = store.stats()
        assert stats["used_bytes"] <= 0.9 * stats["map_size"]
        assert 10 < stats["entries"] < 40
        assert store.variants("http://x/hot") == [hot]
        assert store.variants("http://x/0") == []
        assert store.variants("http://x/199") != []
        assert store.verify() == []
    finally:
        store.close()


def test_access_is_persisted_at_most_every_30_seconds(store, clock):
    head = put(store, "http://x/a", b"a")
    store.touch(head)
    assert store.flush_access(clock.now + 10) == 0
    store.touch(head)
    assert store.flush_access(clock.now + 31) == 1
    assert store.flush_access(clock.now + 100) == 0


def test_oversized_body_is_refused_not_raised(tmp_path, clock):
    store = DiskStore(tmp_path / "small", map_size=4 << 20, clock=clock)
    try:
        keep = put(store, "http://x/keep", b"k" * 1000)
        writer = store.begin("http://x/huge", "")
        for _ in range(40):
            writer.write(b"x" * 65536)
        assert writer.failed
        assert writer.commit(make_head("http://x/huge"), None) is None
        assert store.variants("http://x/keep") == [keep]
        assert store.stats()["pending"] == 0
    finally:
        store.close()


def test_body_larger_than_the_map_hits_map_full_safely(tmp_path, clock):
    store = DiskStore(tmp_path / "small", map_size=2 << 20, max_body_size=1 << 30, clock=clock)
    try:
        put(store, "http://x/old", b"o" * 100_000)
        writer = store.begin("http://x/huge", "")
        for _ in range(50):
            writer.write(b"x" * 65536)
        assert writer.commit(make_head("http://x/huge"), None) is None
        assert store.stats()["pending"] == 0
        after = put(store, "http://x/after", b"a" * 100_000)
        assert store.variants("http://x/after") == [after]
        assert store.verify() == []
    finally:
        store.close()


# -- verify ----------------------------------------------------------------------------

def test_verify_finds_and_repairs_damage(store):
    good = put(store, "http://x/good", b"g" * 1000)
    broken = put(store, "http://x/broken", b"b" * (2 * CHUNK_SIZE))
    with store._env.begin(write=True) as txn:
        txn.put(b"http://x/junk\x00" + b"0" * 16, b"{not json", db=store._heads)
        txn.delete(broken.body_id + (1).to_bytes(4, "big"), db=store._bodies)
        txn.put(b"\x01" * 16 + bytes(4), b"stray", db=store._bodies)
    assert store.read_body(broken) is None
    problems = store.verify()
    assert len(problems) == 3, problems
    assert len(store.verify(repair=True)) == 3
    assert store.verify() == []
    assert [h.url for h in store.iter_heads()] == [good.url]


def test_map_full_while_a_reader_pins_freed_pages(tmp_path, clock):
    store = DiskStore(tmp_path / "small", map_size=2 << 20, clock=clock)
    try:
        reader = store._env.begin()  # like a stuck reader in another process
        results = []
        for i in range(40):
            writer = store.begin(f"http://x/{i}", "")
            writer.write(os.urandom(100_000))
            results.append(writer.commit(make_head(f"http://x/{i}"), None))
        assert None in results
        reader.abort()
        assert put(store, "http://x/after", b"a" * 100_000).body_length == 100_000
        assert store.verify() == []
    finally:
        store.close()


# -- bounded write transactions --------------------------------------------------------------------------


def test_a_prefix_purge_spans_bounded_transactions(store, monkeypatch):
    monkeypatch.setattr(store_module, "_WRITE_BATCH", 8)
    for n in range(20):
        put(store, f"http://x/p/{n:02}", b"b", tags=("t",))
    put(store, "http://x/q", b"kept")
    before = store.write_transactions
    batches = store.delete_prefix_batches("http://x/p/")
    assert next(batches) == 8
    assert store.write_transactions == before + 1
    assert len(list(store.iter_heads("http://x/p/"))) == 12  # the rest waits for the next step
    assert list(batches) == [8, 4]
    assert store.write_transactions == before + 3  # the short batch shows nothing is left
    assert [head.url for head in store.iter_heads()] == ["http://x/q"]
    assert store.verify() == []


@pytest.mark.parametrize("kind", ["url", "prefix", "tag"])
def test_soft_purges_batch_and_count_every_entry(store, monkeypatch, kind):
    monkeypatch.setattr(store_module, "_WRITE_BATCH", 3)
    for n in range(7):
        put(store, "http://x/v", b"b", f"k={n}", tags=("t",))
    target = {"url": "http://x/v", "prefix": "http://x/", "tag": "t"}[kind]
    batches = getattr(store, f"mark_stale_{kind}_batches")(target)
    assert list(batches) == [3, 3, 1]
    assert all(head.stale_marked for head in store.variants("http://x/v"))
    assert sum(getattr(store, f"mark_stale_{kind}_batches")(target)) == 7  # marked again, counted again


def test_clear_and_access_flush_batch(store, monkeypatch, clock):
    monkeypatch.setattr(store_module, "_WRITE_BATCH", 4)
    monkeypatch.setattr(store_module, "_ACCESS_BATCH", 4)
    heads = [put(store, f"http://x/{n}", b"b") for n in range(10)]
    clock.now += 60
    for head in heads:
        store.touch(head)
    assert list(store.flush_access_batches(clock())) == [4, 4, 2]
    writer = store.begin("http://x/being-written", "")
    writer.write(b"w" * (CHUNK_SIZE * 5))  # a pending body: clear frees it too
    monkeypatch.setattr(store_module, "_FREE_BATCH", 2)
    clearing = store.delete_all_batches()
    assert sum(clearing) == 10
    assert store.stats()["entries"] == store.stats()["pending"] == 0
    writer.write(b"w" * (CHUNK_SIZE * 4))  # its writer notices and stores nothing
    assert writer.commit(make_head("http://x/being-written"), None) is None
    assert store.verify() == [] and store.variants("http://x/being-written") == []


def test_a_large_body_is_freed_over_several_transactions(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(store_module, "_FREE_BATCH", 4)
    store = DiskStore(tmp_path / "cache", map_size=64 << 20, clock=clock)
    try:
        head = put(store, "http://x/large", b"L" * (CHUNK_SIZE * 10))
        put(store, "http://x/small", b"s")
        before = store.write_transactions
        assert store.delete_url("http://x/large") == 1
        assert store.write_transactions - before == 3  # 4 + 4 + 2 chunks
        assert list(store._scan_chunks(store._begin(), head.body_id)) == []
        assert store.stats()["pending"] == 0 and store.verify() == []
    finally:
        store.close()


def test_eviction_frees_a_large_body_in_bounded_transactions(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(store_module, "_FREE_BATCH", 16)
    store = DiskStore(tmp_path / "cache", map_size=16 << 20, clock=clock)
    try:
        put(store, "http://x/large", b"L" * (CHUNK_SIZE * 60))  # ~4 MiB, the least recently used
        for n in range(40):
            clock.now += 60
            put(store, f"http://x/{n}", b"f" * 300_000)
        assert store.variants("http://x/large") == []
        assert store.stats()["pending"] == 0 and store.verify() == []
    finally:
        store.close()


def test_a_full_transaction_is_retried_with_smaller_batches(store, monkeypatch):
    for n in range(6):
        put(store, f"http://x/{n}", b"b")
    limits = []

    def apply(txn, limit):
        limits.append(limit)
        if limit > 64:
            raise lmdb.TxnFullError("too many dirty pages")
        return 0

    assert store._write_batch(apply) == 0
    assert limits == [256, 128, 64]
    # Any other write that hits it is refused like a full store: PURGE answers 503, a write is not stored.
    with pytest.raises(StoreFull):
        store._write(lambda txn: (_ for _ in ()).throw(lmdb.TxnFullError("too many dirty pages")))


def test_verify_repairs_in_bounded_transactions(store, monkeypatch):
    monkeypatch.setattr(store_module, "_WRITE_BATCH", 2)
    heads = [put(store, f"http://x/{n}", b"b" * 10) for n in range(5)]
    with store._env.begin(write=True) as txn:
        for head in heads:
            txn.delete(_chunk_key(head.body_id, 0), db=store._bodies)
    before = store.write_transactions
    assert len(store.verify(repair=True)) == 5
    assert store.write_transactions - before == 3
    assert store.verify() == [] and list(store.iter_heads()) == []


def test_a_map_grown_by_another_process_is_adopted(tmp_path, clock):
    store = DiskStore(tmp_path / "cache", map_size=8 << 20, clock=clock)
    try:
        put(store, "http://x/a", b"a")
        run_child(f"""
            from accel.cache.store import DiskStore
            from tests.test_store import put
            store = DiskStore({store.path!r}, map_size=64 << 20)
            for n in range(6):  # 12 MiB: pages beyond the first process's 8 MiB map
                put(store, f"http://x/b{{n}}", b"b" * (2 << 20))
        """)
        assert len(store.variants("http://x/b5")) == 1  # not lmdb.MapResizedError
        put(store, "http://x/c", b"c")
        assert store.map_size == 64 << 20
    finally:
        store.close()


def test_changes_are_reported_after_commit(store):
    seen = []
    store.on_change = seen.append
    put(store, "http://x/a", b"a")
    put(store, "http://x/a", b"A")  # replaced
    store.delete_url("http://x/a")
    assert seen == [{"http://x/a"}] * 3
