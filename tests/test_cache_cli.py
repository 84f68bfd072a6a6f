"""`accel cache` through click's CliRunner, against LMDB caches written by the real storage code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import lmdb
import pytest
from click.testing import CliRunner

from accel.cli import describe
from accel.cache.entry import EntryHead
from accel.cache.epoch import PurgeEpoch, url_bucket
from accel.cache.memory import MemoryTier
from accel.cache.store import DiskStore
from accel.cache.tiers import TieredStore
from accel.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAP_SIZE = 32 << 20


def head(url, secondary_key="", vary=(), tags=(), fields=(("cache-control", "max-age=600"),), age=100.0, status=200):
    now = time.time()
    return EntryHead(
        url=url, secondary_key=secondary_key, vary_names=tuple(vary), status=status, reason="OK",
        fields=(("content-type", "text/plain"),) + tuple(fields), request_time=now - age - 0.1,
        response_time=now - age, body_length=0, stored_at=now - age, tags=tuple(tags),
    )


def open_tiered(directory) -> TieredStore:
    disk = DiskStore(directory, map_size=MAP_SIZE)
    return TieredStore(disk, MemoryTier(max_bytes=1 << 20, max_objects=100), PurgeEpoch(os.path.join(directory, "purge-epoch")))


def put(store: TieredStore, entry: EntryHead, body: bytes = b"hello") -> None:
    writer = store.begin(entry.url, entry.secondary_key)
    writer.write(body)
    assert store.commit(writer, entry, len(body), body=body) is not None


def close(store: TieredStore) -> None:
    store.epoch.close()
    store.disk.close()


GZIP = '[["accept-encoding","gzip"]]'
PLAIN = '[["accept-encoding",null]]'


@pytest.fixture
def cache_dir(tmp_path):
    directory = str(tmp_path / "cache")
    store = open_tiered(directory)
    put(store, head("http://example.com/page", GZIP, vary=("accept-encoding",), tags=("page", "all")), b"x" * 300)
    put(store, head("http://example.com/page", PLAIN, vary=("accept-encoding",), tags=("page", "all")), b"x" * 700)
    put(store, head("https://example.com/page", tags=("all",)))
    put(store, head("http://example.com/img/a.png", tags=("img",)))
    put(store, head("http://example.com/img/b.png", tags=("img",), age=1000.0))  # stale
    put(store, head("http://other.example/x", fields=(("cache-control", "s-maxage=10, must-revalidate"),), age=50.0))
    close(store)
    return directory


def run(*args, input=None):
    return CliRunner().invoke(main, ["cache", *args], input=input, catch_exceptions=False)


def urls(directory) -> list[str]:
    disk = DiskStore(directory, map_size=MAP_SIZE)
    try:
        return sorted({h.url for h in disk.iter_heads()})
    finally:
        disk.close()


def heads_of(directory, url) -> list[EntryHead]:
    disk = DiskStore(directory, map_size=MAP_SIZE)
    try:
        return disk.variants(url)
    finally:
        disk.close()


# -- ls ---------------------------------------------------------------------------------------------------


def test_ls_table(cache_dir):
    result = run("ls", "--cache-dir", cache_dir)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["URL", "VARIANTS", "SIZE", "STORED", "TTL"]
    page = next(line for line in lines if line.startswith("http://example.com/page "))
    assert page.split()[1:4] == ["2", "1000", "B"]
    assert re.fullmatch(r"8m[0-2]\ds", page.split()[-1])
    stale = next(line for line in lines if line.startswith("http://example.com/img/b.png"))
    assert "stale" in stale
    assert len(lines) == 6


def test_ls_json_prefix_and_limit(cache_dir):
    result = run("--cache-dir", cache_dir, "ls", "--json", "--prefix", "http://example.com/")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["url"] for r in rows] == [
        "http://example.com/img/a.png", "http://example.com/img/b.png", "http://example.com/page",
    ]
    page = rows[2]
    assert (page["variants"], page["bytes"], page["fresh"], page["tier"]) == (2, 1000, True, "disk")
    assert 490 < page["ttl"] <= 500
    assert abs(page["expires_at"] - (page["stored_at"] + 600)) < 0.01
    assert rows[1]["fresh"] is False and rows[1]["ttl"] < 0
    limited = json.loads(run("--cache-dir", cache_dir, "ls", "--json", "--limit", "1").output)
    assert len(limited) == 1


def test_ls_nothing_matched_is_exit_1(cache_dir):
    result = run("ls", "--cache-dir", cache_dir, "--prefix", "http://nowhere/")
    assert result.exit_code == 1
    assert "no stored URL" in result.output


def test_ls_progress_bar_on_many_entries(cache_dir, monkeypatch):
    monkeypatch.setattr(describe, "PROGRESS_THRESHOLD", 1)
    result = run("ls", "--cache-dir", cache_dir)
    assert result.exit_code == 0
    assert "reading entries" in result.stderr
    assert "reading entries" not in result.stdout


# -- show -------------------------------------------------------------------------------------------------


def test_show_variants(cache_dir):
    result = run("show", "http://EXAMPLE.com:80/page", "--cache-dir", cache_dir)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("http://example.com/page  (2 variants)")
    assert "accept-encoding: gzip" in out and "accept-encoding: (absent)" in out
    assert "200 OK" in out
    assert "fresh for 8m" in out and "max-age=600" in out
    assert "cache-control: max-age=600" in out
    assert "tags:          page, all" in out
    assert "300 bytes" in out and "700 bytes" in out


def test_show_json_explains_staleness(cache_dir):
    result = run("show", "--json", "http://other.example/x", "--cache-dir", cache_dir)
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["url"] == "http://other.example/x"
    [variant] = doc["variants"]
    assert variant["fresh"] is False
    assert variant["lifetime"] == 10
    assert 49 < variant["age"] < 52
    assert "s-maxage=10" in variant["why"] and "must be revalidated" in variant["why"]
    assert variant["vary"] == []
    assert ["cache-control", "s-maxage=10, must-revalidate"] in variant["fields"]


def test_show_soft_purged_entry(cache_dir):
    assert run("purge", "--soft", "http://example.com/img/a.png", "--cache-dir", cache_dir).exit_code == 0
    doc = json.loads(run("show", "--json", "http://example.com/img/a.png", "--cache-dir", cache_dir).output)
    assert doc["variants"][0]["stale_marked"] is True
    assert "soft purge" in doc["variants"][0]["why"]


def test_show_nothing_and_bad_url(cache_dir):
    assert run("show", "http://example.com/none", "--cache-dir", cache_dir).exit_code == 1
    result = run("show", "/page", "--cache-dir", cache_dir)
    assert result.exit_code == 2
    assert "absolute" in result.output


# -- stats ------------------------------------------------------------------------------------------------


def test_stats(cache_dir):
    result = run("stats", "--json", "--cache-dir", cache_dir)
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["entries"] == 6
    assert doc["map_size"] == MAP_SIZE  # the size the cache was created with, not a default
    assert 0 < doc["used_bytes"] < MAP_SIZE
    assert doc["readers"] >= 1 and doc["hits"] is None
    human = run("stats", "--cache-dir", cache_dir).output
    assert "entries:       6" in human and "not recorded" in human and "of 32.0 MiB" in human


# -- purge ------------------------------------------------------------------------------------------------


def test_purge_url_both_schemes_all_variants(cache_dir):
    epoch = PurgeEpoch(os.path.join(cache_dir, "purge-epoch"))
    buckets = [url_bucket(f"{scheme}://example.com/page") for scheme in ("http", "https")]
    before = [epoch.generation(bucket) for bucket in buckets]
    result = run("purge", "https://example.com/page", "--cache-dir", cache_dir)
    assert result.exit_code == 0, result.output
    assert "purged 3 entries" in result.output
    # Every server's memory tier sees both URLs changed on its next lookup.
    assert all(epoch.generation(bucket) > old for bucket, old in zip(buckets, before))
    epoch.close()
    assert "http://example.com/page" not in urls(cache_dir)
    assert "https://example.com/page" not in urls(cache_dir)


def test_purge_prefix(cache_dir):
    result = run("purge", "--prefix", "http://example.com/img/", "--json", "--cache-dir", cache_dir)
    doc = json.loads(result.output)
    assert (result.exit_code, doc["purged"], doc["mode"]) == (0, 2, "prefix")
    assert doc["targets"] == ["http://example.com/img/", "https://example.com/img/"]
    assert urls(cache_dir) == ["http://example.com/page", "http://other.example/x", "https://example.com/page"]


def test_purge_tags(cache_dir):
    result = run("purge", "--tag", "img", "--tag", "page", "--cache-dir", cache_dir)
    assert result.exit_code == 0
    assert "purged 4 entries" in result.output
    assert urls(cache_dir) == ["http://other.example/x", "https://example.com/page"]


def test_purge_soft_keeps_entries(cache_dir):
    result = run("purge", "--soft", "--tag", "all", "--cache-dir", cache_dir)
    assert result.exit_code == 0
    assert "marked stale 3 entries" in result.output
    assert [h.stale_marked for h in heads_of(cache_dir, "http://example.com/page")] == [True, True]
    assert heads_of(cache_dir, "http://example.com/img/a.png")[0].stale_marked is False


def test_purge_all(cache_dir):
    result = run("purge", "--all", "--cache-dir", cache_dir)
    assert (result.exit_code, result.output.split()[:2]) == (0, ["purged", "6"])
    assert urls(cache_dir) == []
    assert run("purge", "--all", "--cache-dir", cache_dir).exit_code == 1


def test_purge_nothing_matched_and_usage(cache_dir):
    assert run("purge", "http://example.com/none", "--cache-dir", cache_dir).exit_code == 1
    assert run("purge", "--cache-dir", cache_dir).exit_code == 2
    assert run("purge", "http://example.com/page", "--all", "--cache-dir", cache_dir).exit_code == 2
    assert run("purge", "--prefix", "img/", "--cache-dir", cache_dir).exit_code == 2
    assert len(urls(cache_dir)) == 5


def test_purge_uses_config_key_options(cache_dir, tmp_path):
    store = open_tiered(cache_dir)
    put(store, head("http://127.0.0.1:9/q?a=1&b=2"))  # the route's origin names the key
    close(store)
    config = tmp_path / "accel.toml"
    config.write_text(f'[cache]\ndir = "{cache_dir}"\nsort_query = true\ndrop_params = ["utm_*"]\n'
                      '[[route]]\nprefix = "/"\norigin = "http://127.0.0.1:9/"\n')
    result = run("--config", str(config), "purge", "http://example.com/q?b=2&utm_source=x&a=1")
    assert result.exit_code == 0, result.output
    assert "http://example.com/q?a=1&b=2" not in urls(cache_dir)


def test_purge_reaches_a_running_process(cache_dir):
    """The command runs in another process while this one holds the URL in its memory tier."""
    store = open_tiered(cache_dir)
    try:
        assert len(store.lookup("http://example.com/page")) == 2
        assert store.memory.has_url("http://example.com/page")
        child = subprocess.run(
            [sys.executable, "-c", "from accel.cli.main import main; main()",
             "cache", "purge", "http://example.com/page", "--cache-dir", cache_dir],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert child.returncode == 0, child.stderr
        assert store.lookup("http://example.com/page") == []
    finally:
        close(store)


# -- verify / clear ---------------------------------------------------------------------------------------


def _corrupt(directory) -> None:
    env = lmdb.open(directory, map_size=MAP_SIZE, max_dbs=8)
    try:
        heads = env.open_db(b"heads")
        with env.begin(write=True) as txn:
            txn.put(b"http://example.com/broken\x00" + b"0" * 16, b"{not json", db=heads)
    finally:
        env.close()


def test_verify_clean(cache_dir):
    result = run("verify", "--cache-dir", cache_dir)
    assert result.exit_code == 0
    assert "OK: 6 entries" in result.output


def test_verify_reports_and_repairs(cache_dir):
    _corrupt(cache_dir)
    result = run("verify", "--cache-dir", cache_dir)
    assert result.exit_code == 1
    assert "undecodable head record" in result.output
    result = run("verify", "--repair", "--json", "--cache-dir", cache_dir)
    doc = json.loads(result.output)
    assert result.exit_code == 0 and doc["repaired"] is True and len(doc["problems"]) == 1
    assert run("verify", "--cache-dir", cache_dir).exit_code == 0


def test_clear_asks_first(cache_dir):
    result = run("clear", "--cache-dir", cache_dir, input="n\n")
    assert result.exit_code == 1
    assert len(urls(cache_dir)) == 5
    result = run("clear", "--cache-dir", cache_dir, input="y\n")
    assert result.exit_code == 0 and "cleared 6 entries" in result.output
    assert urls(cache_dir) == []
    assert run("clear", "--yes", "--cache-dir", cache_dir).exit_code == 0


# -- finding the cache ------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    result = run("ls", "--cache-dir", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "no such directory" in result.output
    assert not (tmp_path / "nope").exists()


def test_directory_without_a_cache_is_left_alone(tmp_path):
    result = run("stats", "--cache-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "not an accel cache" in result.output
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("with_data", [False, True])
def test_foreign_lmdb_is_refused_and_not_modified(tmp_path, with_data):
    directory = str(tmp_path / "other")
    env = lmdb.open(directory, map_size=1 << 20)
    if with_data:
        with env.begin(write=True) as txn:
            txn.put(b"key", b"value")
    env.close()
    before = open(os.path.join(directory, "data.mdb"), "rb").read()
    result = run("purge", "--all", "--cache-dir", directory)
    assert result.exit_code == 2
    assert "not an accel cache" in result.output
    assert open(os.path.join(directory, "data.mdb"), "rb").read() == before
    assert sorted(os.listdir(directory)) == ["data.mdb", "lock.mdb"]


def test_not_an_lmdb_file(tmp_path):
    (tmp_path / "data.mdb").write_bytes(b"hello")
    result = run("ls", "--cache-dir", str(tmp_path))
    assert result.exit_code == 2 and "not an accel cache" in result.output


def test_config_without_cache_dir_and_no_location(tmp_path):
    config = tmp_path / "accel.toml"
    config.write_text('[[route]]\nprefix = "/"\norigin = "http://127.0.0.1:9/"\n')
    result = run("ls", "--config", str(config))
    assert result.exit_code == 2 and "no [cache] dir" in result.output
    result = run("ls")
    assert result.exit_code == 2 and "--cache-dir" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache\n")
    assert run("ls", "--config", str(bad)).exit_code == 2


# -- end to end: entries stored by the real server over HTTP ------------------------------------------------

from twisted.internet import defer as _defer  # noqa: E402
from twisted.internet.utils import getProcessOutputAndValue  # noqa: E402
from twisted.trial import unittest as _trial  # noqa: E402

from accel.config import CacheSettings, Config  # noqa: E402
from tests.support import get, http_client, start_stack, temporary_directory  # noqa: E402


def _responder(**fields):
    def handle(request):
        for name, value in fields.items():
            request.setHeader(name.replace("_", "-").encode(), value.encode())
        return b"hello"

    return handle


class EndToEndTests(_trial.TestCase):
    """The server stores through HTTP; `accel cache` runs in another process, as an operator would run it."""

    def setUp(self):
        self.dir = temporary_directory(self, "accel-cli-e2e-")  # removed after the stack (and its store) closed
        self.stack = start_stack(self, config=Config(cache=CacheSettings(dir=self.dir, map_size=MAP_SIZE)))
        origin = self.stack.origin
        origin.handlers[b"/e2e/a"] = _responder(cache_control="max-age=600", surrogate_key="grp one")
        origin.handlers[b"/e2e/b"] = _responder(cache_control="max-age=600", vary="accept-encoding", cache_tag="grp")
        self.agent = http_client(self)
        self.host = self.stack.url.split("://", 1)[1]

    def hits(self, path: bytes) -> int:
        return sum(1 for seen in self.stack.origin.seen if seen.uri == path)

    @_defer.inlineCallbacks
    def cli(self, *args):
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", "from accel.cli.main import main; main()", "cache", *args, "--cache-dir", self.dir],
            env=dict(os.environ), path=ROOT,
        )
        return code, out.decode(), err.decode()

    @_defer.inlineCallbacks
    def test_ls_show_purge_then_the_next_request_reaches_the_origin(self):
        for _ in range(2):
            yield get(self.agent, self.stack.url + "/e2e/a")
        for encoding in ("gzip", "br"):
            yield get(self.agent, self.stack.url + "/e2e/b", headers={b"accept-encoding": encoding.encode()})
        self.assertEqual((self.hits(b"/e2e/a"), self.hits(b"/e2e/b")), (1, 2))

        code, out, err = yield self.cli("ls", "--json")
        self.assertEqual(code, 0, err)
        rows = {row["url"]: row for row in json.loads(out)}
        # The route does not preserve the Host: entries are keyed by the origin's URL, which is what the
        # commands take without --config.
        a, b = f"{self.stack.origin_url}/e2e/a", f"{self.stack.origin_url}/e2e/b"
        self.assertEqual(set(rows), {a, b})
        self.assertEqual((rows[a]["variants"], rows[b]["variants"]), (1, 2))
        self.assertTrue(rows[a]["fresh"])

        code, out, err = yield self.cli("show", "--json", b)
        self.assertEqual(code, 0, err)
        variants = json.loads(out)["variants"]
        self.assertEqual(sorted(v["vary"][0][1] for v in variants), ["br", "gzip"])
        self.assertEqual({tuple(v["tags"]) for v in variants}, {("grp",)})
        self.assertTrue(all(v["fresh"] and v["lifetime"] == 600 for v in variants))

        code, out, err = yield self.cli("purge", a)
        self.assertEqual(code, 0, err)
        self.assertIn("purged 1 entry", out)
        yield get(self.agent, self.stack.url + "/e2e/a")  # was in the server's memory tier: now a miss
        self.assertEqual(self.hits(b"/e2e/a"), 2)

        code, out, err = yield self.cli("purge", "--tag", "grp")  # /e2e/a (stored again) and both /e2e/b
        self.assertEqual(code, 0, err)
        self.assertIn("purged 3 entries", out)
        yield get(self.agent, self.stack.url + "/e2e/b", headers={b"accept-encoding": b"gzip"})
        yield get(self.agent, self.stack.url + "/e2e/a")
        self.assertEqual((self.hits(b"/e2e/a"), self.hits(b"/e2e/b")), (3, 3))


def test_with_config_a_url_maps_through_its_route_to_the_origins_or_balancers_key(tmp_path):
    """Routes that do not preserve the Host key by their origin (a balancer route by the balancer's name), so
    any alias's URL names the entry; a preserve_host route keeps the client's URL."""
    directory = str(tmp_path / "cache")
    store = open_tiered(directory)
    for url in ("http://app/cart", "https://10.0.0.5:8080/v1/a", "http://10.0.0.5:8080/v1/a", "http://own.example/a",
                "http://10.0.0.5:8080/v1/img/1", "https://10.0.0.5:8080/v1/img/2"):
        put(store, head(url))
    close(store)
    config = tmp_path / "accel.toml"
    config.write_text(f'[cache]\ndir = "{directory}"\n'
                      '[[route]]\nhosts = ["shop.example", "*.shop.example"]\nprefix = "/"\norigin = "balancer://app/"\n'
                      '[[route]]\nhosts = ["own.example"]\nprefix = "/"\norigin = "http://10.0.0.5:8080/v1/"\n'
                      'preserve_host = true\n'
                      '[[route]]\nprefix = "/"\norigin = "http://10.0.0.5:8080/v1/"\n'
                      '[balancer.app]\n[[balancer.app.member]]\nurl = "http://10.0.0.7/"\n')
    options = ("--config", str(config))
    assert json.loads(run("show", "--json", "http://www.shop.example/cart", *options).output)["url"] == "http://app/cart"
    assert json.loads(run("show", "--json", "https://example.com/a", *options).output)["url"] == \
        "https://10.0.0.5:8080/v1/a"
    assert json.loads(run("show", "--json", "http://own.example/a", *options).output)["url"] == "http://own.example/a"
    result = run("purge", "http://alias.example/a", *options)
    assert result.exit_code == 0 and "purged 2 entries" in result.output, result.output
    result = run("purge", "--prefix", "http://example.com/img/", *options)
    assert result.exit_code == 0 and "purged 2 entries" in result.output, result.output
    assert urls(directory) == ["http://app/cart", "http://own.example/a"]
    # without --config the URL is the key
    assert run("show", "http://www.shop.example/cart", "--cache-dir", directory).exit_code == 1
    assert run("show", "http://app/cart", "--cache-dir", directory).exit_code == 0


def test_route_ttls_and_shared_schemes_come_from_the_config(cache_dir, tmp_path):
    config = tmp_path / "accel.toml"
    config.write_text(f'[cache]\ndir = "{cache_dir}"\nshare_schemes = true\n'  # (routes keyed by the Host)
                      '[[route]]\nprefix = "/"\norigin = "http://127.0.0.1:9/"\npreserve_host = true\n'
                      '[[route]]\nprefix = "/img/"\norigin = "http://127.0.0.1:9/"\ncache = {max_ttl = 60}\n'
                      'preserve_host = true\n')
    result = run("show", "--json", "https://example.com/img/a.png", "--config", str(config))
    assert result.exit_code == 0, result.output  # https:// looks up the shared (http) entry
    [variant] = json.loads(result.output)["variants"]
    assert variant["lifetime"] == 60 and "capped by the route's max_ttl" in variant["lifetime_basis"]
    assert variant["fresh"] is False


def test_ls_prefix_a_path_matches_it_on_every_host_and_scheme(cache_dir):
    rows = json.loads(run("ls", "--json", "--prefix", "/page", "--cache-dir", cache_dir).output)
    assert [r["url"] for r in rows] == ["http://example.com/page", "https://example.com/page"]
    rows = json.loads(run("ls", "--json", "--prefix", "/x", "--cache-dir", cache_dir).output)
    assert [r["url"] for r in rows] == ["http://other.example/x"]
    assert run("ls", "--prefix", "img/", "--cache-dir", cache_dir).exit_code == 2


def test_stored_times_carry_their_time_zone(cache_dir):
    stored = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")
    assert stored.search(run("ls", "--cache-dir", cache_dir).output)
    assert stored.search(run("show", "http://example.com/img/a.png", "--cache-dir", cache_dir).output)


def damaged_cache(directory: str) -> None:
    """A cache of 200 entries whose LMDB pages past the meta pages are then overwritten, as a failing disk or a
    stray write would."""
    store = open_tiered(directory)
    for i in range(200):
        put(store, head(f"http://example.com/p{i}"), b"x" * 3000)
    close(store)
    with open(os.path.join(directory, "data.mdb"), "r+b") as f:
        f.seek(4096 * 3)
        f.write(b"\xa5" * 4096 * 20)


def test_verify_repair_on_a_damaged_file_says_what_to_do(tmp_path):
    directory = str(tmp_path / "cache")
    damaged_cache(directory)
    result = run("verify", "--repair", "--cache-dir", directory)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"accel: {directory}: the cache is damaged (LMDB: Located page was wrong type) and cannot be repaired in "
        f"place; stop accel, move {directory} away (or delete it) and start accel again with an empty cache")


def test_route_ttls_apply_to_entries_keyed_by_their_origin(tmp_path):
    """A route that does not preserve the Host keys its entries by the origin's URL: their TTL still comes from
    that route's cache rules, not from whatever route the origin's path would match publicly."""
    directory = str(tmp_path / "cache")
    store = open_tiered(directory)
    put(store, head("http://10.0.0.5:8080/v1/a", fields=()))  # no freshness information: only default_ttl gives one
    put(store, head("http://example.com/other", fields=()))
    close(store)
    config = tmp_path / "accel.toml"
    config.write_text(f'[cache]\ndir = "{directory}"\n'
                      '[[route]]\nprefix = "/api/"\norigin = "http://10.0.0.5:8080/v1/"\ncache = {default_ttl = 600}\n'
                      '[[route]]\nprefix = "/"\norigin = "http://10.0.0.9/"\npreserve_host = true\n')
    rows = {r["url"]: r for r in json.loads(run("ls", "--json", "--config", str(config)).output)}
    assert rows["http://10.0.0.5:8080/v1/a"]["fresh"] is True and rows["http://10.0.0.5:8080/v1/a"]["ttl"] > 400
    assert rows["http://example.com/other"]["fresh"] is False
