"""HTTP PURGE (accel.cache.purge): a real loopback server answering PURGE from a real LMDB store."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap

from dataclasses import replace

from twisted.internet import defer, reactor
from twisted.internet.address import IPv6Address, UNIXAddress
from twisted.trial import unittest
from twisted.web import resource, server

from accel.cache.entry import EntryHead
from accel.cache.epoch import PurgeEpoch
from accel.cache.memory import MemoryTier
from accel.cache.store import DiskStore
from accel.cache.tiers import TieredStore
from accel.config import CacheSettings, PurgeSettings, Route, parse_origin
from accel.cache.purge import PurgeHandler, prefix_keys, url_keys
from accel.proxy.routing import RouteTable
from tests.support import get, http_client, temporary_directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "www.example.com"
MAP_SIZE = 32 << 20


def make_head(url: str, secondary_key: str = "", tags: tuple[str, ...] = (), vary=()) -> EntryHead:
    return EntryHead(
        url=url, secondary_key=secondary_key, vary_names=tuple(vary), status=200, reason="OK",
        fields=(("content-type", "text/plain"), ("cache-control", "max-age=600")),
        request_time=1.0, response_time=2.0, body_length=0, stored_at=2.0, tags=tags,
    )


def put(store: TieredStore, url: str, body: bytes = b"body", secondary_key: str = "", **kw) -> EntryHead:
    writer = store.begin(url, secondary_key)
    writer.write(body)
    stored = store.commit(writer, make_head(url, secondary_key, **kw), len(body), body=body)
    assert stored is not None
    return stored


def open_tiered(directory: str) -> TieredStore:
    disk = DiskStore(directory, map_size=MAP_SIZE)
    memory = MemoryTier(max_bytes=1 << 20, max_objects=100, max_object_size=64 * 1024)
    return TieredStore(disk, memory, PurgeEpoch(os.path.join(directory, "purge-epoch")))


class _PurgeOnly(resource.Resource):
    """Stands in for ReverseProxy.render: PURGE goes to the handler, anything else is an 'origin' hit."""

    isLeaf = True

    def __init__(self, handler: PurgeHandler):
        super().__init__()
        self.handler = handler
        self.other = 0

    def render(self, request):
        if request.method == b"PURGE":
            self.handler.handle(request, request.uri.decode("latin-1"))
            return server.NOT_DONE_YET
        self.other += 1
        return b"origin"


class PurgeTestCase(unittest.TestCase):
    purge = PurgeSettings()
    cache_settings = CacheSettings()

    def setUp(self):
        self.dir = temporary_directory(self, "accel-purge-")
        self.store = open_tiered(self.dir)
        self.addCleanup(self.store.epoch.close)
        self.addCleanup(self.store.disk.close)
        self.handler = PurgeHandler(
            self.store, self.purge, self.cache_settings, lambda host: host.split(":")[0] == HOST, reactor
        )
        self.resource = _PurgeOnly(self.handler)
        port = reactor.listenTCP(0, server.Site(self.resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.agent = http_client(self)

    @defer.inlineCallbacks
    def send(self, target: str, host: str = HOST, **fields):
        headers = {b"host": host.encode()}
        headers.update({name.replace("_", "-").encode(): value.encode() for name, value in fields.items()})
        response, body = yield get(self.agent, self.url + target, method=b"PURGE", headers=headers)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        return response.code, json.loads(body)

    def urls(self) -> list[str]:
        return sorted({head.url for head in self.store.disk.iter_heads()})


class UrlPurgeTests(PurgeTestCase):
    @defer.inlineCallbacks
    def test_every_vary_variant_of_both_schemes_is_purged(self):
        for key in ('[["accept-encoding","gzip"]]', '[["accept-encoding","br"]]', '[["accept-encoding",null]]'):
            put(self.store, f"http://{HOST}/page?a=1", secondary_key=key, vary=("accept-encoding",))
        put(self.store, f"https://{HOST}/page?a=1")
        put(self.store, f"http://{HOST}/page?a=2")
        put(self.store, f"http://{HOST}/page")
        self.assertEqual(len(self.store.lookup(f"http://{HOST}/page?a=1")), 3)  # now in memory too
        code, doc = yield self.send("/page?a=1")
        self.assertEqual(code, 200)
        self.assertEqual(doc["status"], "ok")
        self.assertEqual(doc["purged"], 4)
        self.assertEqual(doc["mode"], "url")
        self.assertEqual(doc["key"], f"http://{HOST}/page?a=1")
        self.assertEqual(doc["keys"], [f"http://{HOST}/page?a=1", f"https://{HOST}/page?a=1"])
        self.assertEqual(self.store.lookup(f"http://{HOST}/page?a=1"), [])
        self.assertEqual(self.urls(), [f"http://{HOST}/page", f"http://{HOST}/page?a=2"])
        self.assertEqual(self.resource.other, 0)

    @defer.inlineCallbacks
    def test_nothing_stored_is_404_json(self):
        code, doc = yield self.send("/nothing")
        self.assertEqual(code, 404)
        self.assertEqual(doc["status"], "not found")
        self.assertEqual(doc["purged"], 0)

    @defer.inlineCallbacks
    def test_host_case_and_default_port_are_normalised(self):
        put(self.store, f"http://{HOST}/x")
        code, doc = yield self.send("/x", host="WWW.Example.com:80")
        self.assertEqual((code, doc["purged"]), (200, 1))

    @defer.inlineCallbacks
    def test_unknown_host_is_404_and_purges_nothing(self):
        put(self.store, f"http://{HOST}/x")
        put(self.store, "http://other.example/x")
        code, doc = yield self.send("/x", host="other.example")
        self.assertEqual(code, 404)
        self.assertEqual(doc["status"], "not found")
        self.assertEqual(len(self.urls()), 2)

    @defer.inlineCallbacks
    def test_unknown_method_field_is_400(self):
        code, doc = yield self.send("/x", x_purge_method="regex")
        self.assertEqual(code, 400)
        self.assertIn("X-Purge-Method", doc["detail"])

class QueryOptionTests(PurgeTestCase):
    cache_settings = CacheSettings(sort_query=True, drop_params=("utm_*",), share_schemes=True)

    @defer.inlineCallbacks
    def test_key_uses_the_cache_key_options(self):
        put(self.store, f"http://{HOST}/q?a=1&b=2")
        code, doc = yield self.send("/q?b=2&utm_source=x&a=1")
        self.assertEqual((code, doc["purged"]), (200, 1))
        self.assertEqual(doc["keys"], [f"http://{HOST}/q?a=1&b=2"])

    def test_key_helpers(self):
        self.assertEqual(url_keys("H:80", "/a?utm_x=1", self.cache_settings), ["http://h/a"])
        self.assertEqual(prefix_keys("h", "img/", CacheSettings()), ["http://h/img/", "https://h/img/"])

    def test_key_helpers_through_routes(self):
        """A route that does not preserve the Host keys by its origin: the keys of any alias name it. A prefix
        covers the routes of the host under it; "all" (the prefix "/") every route of the host."""
        origin, api = parse_origin("http://10.0.0.5:8080/"), parse_origin("http://10.0.0.9/v1/")
        routes = RouteTable((
            Route(prefix="/", origin=origin),
            Route(prefix="/img/api/", origin=api),
            Route(prefix="/", origin=origin, hosts=("own.example",), preserve_host=True),
        ))
        shared = CacheSettings(share_schemes=True)
        for host in ("a.example", "B.example:80"):
            self.assertEqual(url_keys(host, "/x", shared, routes), ["http://10.0.0.5:8080/x"])
        self.assertEqual(url_keys("own.example", "/x", shared, routes), ["http://own.example/x"])
        self.assertEqual(prefix_keys("a.example", "/img/", shared, routes),
                         ["http://10.0.0.5:8080/img/", "http://10.0.0.9/v1/"])
        self.assertEqual(prefix_keys("a.example", "/", shared, routes),
                         ["http://10.0.0.5:8080/", "http://10.0.0.9/v1/"])
        self.assertEqual(prefix_keys("own.example", "/", shared, routes), ["http://own.example/"])


class PrefixTagAllTests(PurgeTestCase):
    @defer.inlineCallbacks
    def test_prefix(self):
        for path in ("/img/a.png", "/img/b/c.png", "/imgx", "/other"):
            put(self.store, f"http://{HOST}{path}")
        put(self.store, f"https://{HOST}/img/z")
        put(self.store, f"http://{HOST}.evil/img/a.png")
        code, doc = yield self.send("/img/", x_purge_method="prefix")
        self.assertEqual((code, doc["mode"], doc["purged"]), (200, "prefix", 3))
        self.assertEqual(doc["key"], f"http://{HOST}/img/")
        self.assertEqual(self.urls(), [f"http://{HOST}.evil/img/a.png", f"http://{HOST}/imgx", f"http://{HOST}/other"])

    @defer.inlineCallbacks
    def test_tags(self):
        put(self.store, f"http://{HOST}/a", tags=("product-1", "list"))
        put(self.store, f"http://{HOST}/b", tags=("product-2",))
        put(self.store, f"http://{HOST}/c", tags=("product-3",))
        put(self.store, f"http://{HOST}/d")
        self.store.lookup(f"http://{HOST}/a")
        code, doc = yield self.send("/", surrogate_key="product-1 product-2 product-1")
        self.assertEqual((code, doc["mode"], doc["purged"]), (200, "tag", 2))
        self.assertEqual(doc["tags"], ["product-1", "product-2"])
        self.assertEqual(self.urls(), [f"http://{HOST}/c", f"http://{HOST}/d"])
        self.assertEqual(self.store.lookup(f"http://{HOST}/a"), [])

    @defer.inlineCallbacks
    def test_tag_method_without_tags_is_400(self):
        code, _ = yield self.send("/", x_purge_method="tag")
        self.assertEqual(code, 400)

    @defer.inlineCallbacks
    def test_unknown_tag_is_404(self):
        put(self.store, f"http://{HOST}/a", tags=("t",))
        code, doc = yield self.send("/", surrogate_key="nope")
        self.assertEqual((code, doc["purged"]), (404, 0))

    @defer.inlineCallbacks
    def test_all_is_scoped_to_the_host(self):
        put(self.store, f"http://{HOST}/a")
        put(self.store, f"https://{HOST}/b/c")
        put(self.store, f"http://{HOST}:8080/a")
        put(self.store, "http://other.example/a")
        code, doc = yield self.send("/ignored", x_purge_method="all")
        self.assertEqual((code, doc["mode"], doc["purged"]), (200, "all", 2))
        self.assertEqual(self.urls(), ["http://other.example/a", f"http://{HOST}:8080/a"])


class RefusalTests(PurgeTestCase):
    purge = PurgeSettings(allow=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")))

    @defer.inlineCallbacks
    def test_address_outside_allow_is_refused_and_logged(self):
        put(self.store, f"http://{HOST}/a")
        logged = []
        from accel.cache import purge as module
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        code, doc = yield self.send("/a")
        self.assertEqual((code, doc["status"]), (403, "forbidden"))
        self.assertEqual(len(self.urls()), 1)
        refusals = [e for e in logged if e.get("log_namespace") == module.__name__ and e.get("address")]
        self.assertEqual([e["address"] for e in refusals], ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_refused_before_the_host_is_looked_at(self):
        code, _ = yield self.send("/a", host="unknown.example")
        self.assertEqual(code, 403)

    def test_ipv4_mapped_addresses_match_ipv4_networks(self):
        handler = PurgeHandler(self.store, self.purge, CacheSettings(), lambda h: True, reactor)
        self.assertTrue(handler.allowed(IPv6Address("TCP", "::ffff:10.1.2.3", 1)))
        self.assertTrue(handler.allowed(IPv6Address("TCP", "::1", 1)))
        self.assertFalse(handler.allowed(IPv6Address("TCP", "::ffff:127.0.0.1", 1)))
        self.assertFalse(handler.allowed(UNIXAddress("/run/accel.sock")))

    def test_unix_socket_peers_only_when_allow_lists_unix(self):
        unix = UNIXAddress("/run/accel.sock")
        settings = replace(self.purge, allow_unix_peers=True)
        self.assertTrue(PurgeHandler(self.store, settings, CacheSettings(), lambda h: True, reactor).allowed(unix))


class SecretTests(PurgeTestCase):
    purge = PurgeSettings(secret="s3cret", secret_header="x-purge-secret")

    @defer.inlineCallbacks
    def test_missing_secret_is_403(self):
        put(self.store, f"http://{HOST}/a")
        code, doc = yield self.send("/a")
        self.assertEqual((code, doc["detail"]), (403, "missing or wrong secret"))
        self.assertEqual(len(self.urls()), 1)

    @defer.inlineCallbacks
    def test_wrong_secret_is_403(self):
        put(self.store, f"http://{HOST}/a")
        code, _ = yield self.send("/a", x_purge_secret="s3cre")
        self.assertEqual(code, 403)
        self.assertEqual(len(self.urls()), 1)

    @defer.inlineCallbacks
    def test_right_secret_purges(self):
        put(self.store, f"http://{HOST}/a")
        code, doc = yield self.send("/a", x_purge_secret="s3cret")
        self.assertEqual((code, doc["purged"]), (200, 1))


CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from accel.cache.epoch import PurgeEpoch
    from accel.cache.memory import MemoryTier
    from accel.cache.store import DiskStore
    from accel.cache.tiers import TieredStore

    directory, url = sys.argv[1], sys.argv[2]
    store = TieredStore(DiskStore(directory, map_size={map_size}),
                        MemoryTier(max_bytes=1 << 20, max_objects=100),
                        PurgeEpoch(os.path.join(directory, "purge-epoch")))
    found = len(store.lookup(url))
    print(found, store.memory.has_url(url), flush=True)
    sys.stdin.readline()
    print(len(store.lookup(url)), flush=True)
    """
)


class CrossProcessTests(PurgeTestCase):
    @defer.inlineCallbacks
    def test_purge_is_visible_to_another_process_before_the_answer(self):
        url = f"http://{HOST}/shared"
        put(self.store, url, secondary_key="a")
        put(self.store, url, secondary_key="b")
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(root=ROOT, map_size=MAP_SIZE), self.dir, url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.addCleanup(child.wait)
        self.addCleanup(child.stdin.close)
        self.assertEqual(child.stdout.readline().split(), ["2", "True"])  # served from its memory tier
        code, doc = yield self.send("/shared")
        self.assertEqual((code, doc["purged"]), (200, 2))
        child.stdin.write("check\n")
        child.stdin.flush()
        self.assertEqual(child.stdout.readline().strip(), "0")


class ThroughTheServerTests(unittest.TestCase):
    """PURGE through the real accel stack."""

    @defer.inlineCallbacks
    def test_purged_url_is_fetched_from_the_origin_again(self):
        from accel.config import Config
        from tests.support import start_stack

        directory = temporary_directory(self, "accel-purge-e2e-")
        stack = start_stack(self, config=Config(cache=CacheSettings(dir=directory, map_size=MAP_SIZE)))

        def cacheable(request):
            request.setHeader(b"cache-control", b"max-age=600")
            request.setHeader(b"surrogate-key", b"t")
            return b"hello"

        stack.origin.handlers[b"/p"] = cacheable
        agent = http_client(self)
        for _ in range(2):
            yield get(agent, stack.url + "/p")
        self.assertEqual(len(stack.origin.seen), 1)
        response, body = yield get(agent, stack.url + "/p", method=b"PURGE")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body)["purged"], 1)
        yield get(agent, stack.url + "/p")
        yield get(agent, stack.url + "/p")
        self.assertEqual([s.method for s in stack.origin.seen], [b"GET", b"GET"])  # PURGE never reached it
        response, body = yield get(agent, stack.url + "/", method=b"PURGE", headers={b"surrogate-key": b"t"})
        self.assertEqual((response.code, json.loads(body)["mode"]), (200, "tag"))


class SoftPurgeThroughTheServerTests(unittest.TestCase):
    """A soft purge keeps the entries but makes the next use revalidate: If-None-Match reaches the origin,
    its 304 freshens the entry, and the client is told ``fwd=stale; fwd-status=304``."""

    @defer.inlineCallbacks
    def soft_purge(self, fields: dict, purged: int, target: str = "/p/1"):
        from accel.config import Config
        from tests.support import start_stack

        directory = temporary_directory(self, "accel-purge-e2e-")
        stack = start_stack(self, config=Config(cache=CacheSettings(dir=directory, map_size=MAP_SIZE)))

        def validated(request):
            request.setHeader(b"cache-control", b"max-age=600")
            request.setHeader(b"etag", b'"v1"')
            request.setHeader(b"surrogate-key", b"t" if request.path.startswith(b"/p/") else b"other")
            if request.getHeader(b"if-none-match") == b'"v1"':
                request.setResponseCode(304)
                return b""
            return b"hello"

        for path in (b"/p/1", b"/p/2", b"/q"):
            stack.origin.handlers[path] = validated
        agent = http_client(self)
        for path in ("/p/1", "/p/2", "/q", "/p/1"):
            yield get(agent, stack.url + path)
        self.assertEqual(len(stack.origin.seen), 3)
        response, body = yield get(agent, stack.url + target, method=b"PURGE", headers=fields)
        self.assertEqual((response.code, json.loads(body)["purged"], json.loads(body)["soft"]), (200, purged, True))

        response, body = yield get(agent, stack.url + "/p/1")
        self.assertEqual((response.code, body), (200, b"hello"))
        self.assertEqual(response.headers.getRawHeaders(b"cache-status"), [b"accel; fwd=stale; fwd-status=304"])
        revalidation = stack.origin.seen[-1]
        self.assertEqual((revalidation.uri, revalidation.header(b"if-none-match")), (b"/p/1", [b'"v1"']))
        response, _ = yield get(agent, stack.url + "/p/1")  # freshened by the 304: a hit again
        self.assertTrue(response.headers.getRawHeaders(b"cache-status")[0].startswith(b"accel; hit"))
        response, _ = yield get(agent, stack.url + "/q")  # matched by no soft purge here
        self.assertTrue(response.headers.getRawHeaders(b"cache-status")[0].startswith(b"accel; hit"))
        self.assertEqual(len(stack.origin.seen), 4)

    def test_url(self):
        return self.soft_purge({b"x-purge-soft": b"1"}, purged=1)

    def test_fastly_soft_purge_is_a_synonym(self):
        return self.soft_purge({b"fastly-soft-purge": b"1"}, purged=1)

    def test_prefix(self):
        return self.soft_purge({b"x-purge-soft": b"true", b"x-purge-method": b"prefix"}, purged=2, target="/p/")

    def test_tag(self):
        return self.soft_purge({b"x-purge-soft": b"1", b"surrogate-key": b"t"}, purged=2, target="/")


class BatchTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_large_purge_lets_the_reactor_run_between_its_transactions(self):
        from accel.cache import store as store_module

        self.patch(store_module, "_WRITE_BATCH", 10)
        directory = temporary_directory(self, "accel-purge-")
        store = open_tiered(directory)
        self.addCleanup(store.epoch.close)
        self.addCleanup(store.disk.close)
        for n in range(25):
            put(store, f"http://{HOST}/img/{n}")
        handler = PurgeHandler(store, PurgeSettings(), CacheSettings(share_schemes=True), lambda h: True, reactor)
        before = store.disk.write_transactions
        seen_by_other_work = []

        def other_work():  # what the reactor does between the purge's steps: e.g. serve a request
            seen_by_other_work.append(store.disk.write_transactions - before)
            if not result.called:
                reactor.callLater(0, other_work)

        reactor.callLater(0, other_work)
        result = handler.purge("prefix", HOST, "/img/", [], soft=False)  # the first step runs now
        document = yield result
        self.assertEqual(document["purged"], 25)
        self.assertEqual(store.disk.write_transactions - before, 3)  # 10, 10 and 5 entries
        self.assertIn(1, seen_by_other_work)  # ran after the first transaction...
        self.assertIn(2, seen_by_other_work)  # ...and between the second and the third
        self.assertEqual(list(store.disk.iter_heads()), [])
