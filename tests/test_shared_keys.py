"""Host aliases share cache entries (issue 16, key normalisation), end to end through real origins: on a route
that does not preserve the client's Host the key names the route's origin (or balancer), so a miss through one
alias is a hit through another, on the fast path and the general one; ProxyPassReverse is applied for each
client served from the shared entry; PURGE and ``accel cache`` find the entries through any alias."""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.trial import unittest

from accel.config import CacheSettings, Config
from tests.support import get, http_client, raw_request, start_stack
from tests.test_balancer import Cluster
from tests.test_cache_e2e import cache_status, origin_hits, responder, temporary_directory
from tests.test_fast_hits import ON_DISK, counted_fast_hits

ALIASES = (b"www.example.com", b"example.com", b"cdn.example.net:8080")


def aliased_stack(testcase, preserve_host: bool = False, **settings):
    directory = temporary_directory(testcase)
    config = Config(cache=CacheSettings(dir=directory, **settings))
    return start_stack(testcase, config=config, preserve_host=preserve_host)


def status_word(response) -> str:
    return cache_status(response).split(";")[1].strip()


def redirecting(origin_url: str):
    """A cacheable redirect naming the origin's own URL space, with a cookie for the origin's host and path."""
    return responder(
        b"moved", cache_control="max-age=600", location=f"{origin_url}/new?x=1", content_location=f"{origin_url}/r",
        set_cookie="id=1; Domain=127.0.0.1; Path=/",
    )


class AliasesShareTests(unittest.TestCase):
    @defer.inlineCallbacks
    def check_aliases_share_one_entry(self, **settings):
        stack = aliased_stack(self, **settings)
        stack.origin.handlers[b"/page"] = responder(b"shared", cache_control="max-age=600")
        agent = http_client(self)
        statuses = []
        for host in ALIASES + ALIASES:
            response, body = yield get(agent, stack.url + "/page", headers={b"host": host})
            self.assertEqual(body, b"shared")
            statuses.append(status_word(response))
        self.assertEqual(statuses, ["fwd=uri-miss"] + ["hit"] * 5)
        self.assertEqual(origin_hits(stack, b"/page"), 1)
        # The origin got its own authority, whichever alias the client named.
        self.assertEqual({seen.header(b"host")[0] for seen in stack.origin.seen}, {stack.origin_url[7:].encode()})
        return stack

    @defer.inlineCallbacks
    def test_aliases_share_one_entry_answered_on_the_fast_path(self):
        stack = yield self.check_aliases_share_one_entry()
        answered = counted_fast_hits(self, stack)
        port = stack.accel_port.getHost().port
        for host in (b"another.alias", b"www.example.com"):
            out = yield raw_request(port, b"GET /page HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host)
            self.assertIn(b"Cache-Status: accel; hit;", out)
        self.assertEqual(answered, [b"/page", b"/page"])
        self.assertEqual(origin_hits(stack, b"/page"), 1)

    def test_aliases_share_one_entry_on_the_general_path(self):
        return self.check_aliases_share_one_entry(**ON_DISK)

    @defer.inlineCallbacks
    def test_routes_that_preserve_the_host_keep_an_entry_per_host(self):
        stack = aliased_stack(self, preserve_host=True)
        stack.origin.handlers[b"/page"] = responder(b"per host", cache_control="max-age=600")
        agent = http_client(self)
        for host in ALIASES + ALIASES:
            yield get(agent, stack.url + "/page", headers={b"host": host})
        self.assertEqual(origin_hits(stack, b"/page"), len(ALIASES))
        self.assertEqual({seen.header(b"host")[0] for seen in stack.origin.seen}, set(ALIASES))

    @defer.inlineCallbacks
    def test_vary_applies_within_the_shared_entry(self):
        stack = aliased_stack(self)
        stack.origin.handlers[b"/v"] = responder(b"varied", cache_control="max-age=600", vary="Accept-Language")
        agent = http_client(self)
        statuses = []
        for host, language in ((b"a.example", b"de"), (b"b.example", b"de"), (b"b.example", b"fr"), (b"a.example", b"fr")):
            response, _ = yield get(agent, stack.url + "/v", headers={b"host": host, b"accept-language": language})
            statuses.append(status_word(response))
        self.assertEqual(statuses, ["fwd=uri-miss", "hit", "fwd=vary-miss", "hit"])
        self.assertEqual(origin_hits(stack, b"/v"), 2)

    @defer.inlineCallbacks
    def test_an_unsafe_request_through_one_alias_invalidates_what_another_stored(self):
        stack = aliased_stack(self)
        stack.origin.handlers[b"/doc"] = responder(b"doc", cache_control="max-age=600")
        agent = http_client(self)
        yield get(agent, stack.url + "/doc", headers={b"host": b"a.example"})
        response, _ = yield get(agent, stack.url + "/doc", method=b"DELETE", headers={b"host": b"b.example"})
        self.assertEqual(response.code, 200)
        response, _ = yield get(agent, stack.url + "/doc", headers={b"host": b"a.example"})
        self.assertEqual(status_word(response), "fwd=uri-miss")


class ReverseOnSharedEntryTests(unittest.TestCase):
    """ProxyPassReverse on a shared entry: each alias sees its own host in Location, Content-Location and the
    cookie's Domain, however the response is served."""

    def expect(self, response, host: str, scheme: str = "http"):
        self.assertEqual(response.headers.getRawHeaders(b"location"), [f"{scheme}://{host}/new?x=1".encode()])
        self.assertEqual(response.headers.getRawHeaders(b"content-location"), [f"{scheme}://{host}/r".encode()])
        domain = host.split(":")[0]
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [f"id=1; Domain={domain}; Path=/".encode()])

    @defer.inlineCallbacks
    def check_each_alias_sees_its_own_host(self, **settings):
        stack = aliased_stack(self, store_set_cookie="keep", **settings)
        stack.origin.handlers[b"/r"] = redirecting(stack.origin_url)
        answered = counted_fast_hits(self, stack)
        agent = http_client(self)
        for host in ("a.example", "b.example:8080", "a.example", "c.example", "b.example:8080"):
            response, _ = yield get(agent, stack.url + "/r", headers={b"host": host.encode()})
            self.expect(response, host)
        self.assertEqual(origin_hits(stack, b"/r"), 1)
        self.assertEqual(answered, [])  # such responses are rewritten on the general path
        # what is stored is what the origin sent
        [(head, _, _)] = stack.accel_site.cache.store.lookup(stack.origin_url + "/r")
        self.assertIn(("location", f"{stack.origin_url}/new?x=1"), head.fields)
        self.assertEqual(head.reverse_origin, stack.origin_url + "/")

    def test_each_alias_sees_its_own_host_from_the_memory_tier(self):
        return self.check_each_alias_sees_its_own_host()

    def test_each_alias_sees_its_own_host_from_the_disk_tier(self):
        return self.check_each_alias_sees_its_own_host(**ON_DISK)

    @defer.inlineCallbacks
    def test_a_304_and_a_range_from_the_shared_entry_are_rewritten_too(self):
        stack = aliased_stack(self)
        stack.origin.handlers[b"/r"] = responder(b"moved", cache_control="max-age=600", etag='"e"',
                                                 content_location=f"{stack.origin_url}/r")
        agent = http_client(self)
        yield get(agent, stack.url + "/r", headers={b"host": b"a.example"})
        response, _ = yield get(agent, stack.url + "/r", headers={b"host": b"b.example", b"if-none-match": b'"e"'})
        self.assertEqual((response.code, response.headers.getRawHeaders(b"content-location")),
                         (304, [b"http://b.example/r"]))
        response, body = yield get(agent, stack.url + "/r", headers={b"host": b"c.example", b"range": b"bytes=0-1"})
        self.assertEqual((response.code, body, response.headers.getRawHeaders(b"content-location")),
                         (206, b"mo", [b"http://c.example/r"]))
        self.assertEqual(origin_hits(stack, b"/r"), 1)

    @defer.inlineCallbacks
    def test_a_location_a_304_adds_to_the_shared_entry_is_rewritten_for_each_alias(self):
        stack = aliased_stack(self)
        moved = f"{stack.origin_url}/moved".encode()

        def stale_then_304(request):
            request.setHeader(b"etag", b'"e"')
            if request.getHeader(b"if-none-match") == b'"e"':
                request.setHeader(b"cache-control", b"max-age=600")
                request.setHeader(b"content-location", moved)
                request.setResponseCode(304)
                return b""
            request.setHeader(b"cache-control", b"max-age=0")
            return b"body"

        stack.origin.handlers[b"/late"] = stale_then_304
        agent = http_client(self)
        statuses = []
        for host in (b"a.example", b"b.example", b"c.example"):
            response, _ = yield get(agent, stack.url + "/late", headers={b"host": host})
            statuses.append(status_word(response))
            if host != b"a.example":
                self.assertEqual(response.headers.getRawHeaders(b"content-location"), [b"http://%s/moved" % host])
        self.assertEqual(statuses, ["fwd=uri-miss", "fwd=stale", "hit"])

    @defer.inlineCallbacks
    def test_a_balancer_route_keys_by_the_balancer_and_rewrites_the_answering_members_urls(self):
        directory = temporary_directory(self)
        cluster = Cluster(self, members=("", ""), extra=f'[cache]\ndir = "{directory}"')
        for member in cluster.members:
            member.origin.handlers[b"/r"] = responder(b"moved", cache_control="max-age=600",
                                                      location=f"{member.url}/new")
        for host in ("a.example", "b.example", "a.example"):
            response, _ = yield cluster.get("/r", headers={b"host": host.encode()})
            self.assertEqual(response.headers.getRawHeaders(b"location"), [f"http://{host}/new".encode()])
        self.assertEqual(sum(cluster.counts(b"/r")), 1)
        self.assertEqual(len(cluster.site.cache.store.disk.variants("http://app/r")), 1)


class PurgeThroughAliasTests(unittest.TestCase):
    @defer.inlineCallbacks
    def stored_through(self, stack, agent, host: bytes, *paths: bytes):
        for path in paths:
            stack.origin.handlers[path] = responder(b"x", cache_control="max-age=600")
            response, _ = yield get(agent, stack.url + path.decode(), headers={b"host": host})
            self.assertEqual(status_word(response), "fwd=uri-miss")

    @defer.inlineCallbacks
    def purge(self, stack, agent, host: bytes, path: str, mode: bytes | None = None) -> dict:
        headers = {b"host": host} if mode is None else {b"host": host, b"x-purge-method": mode}
        response, body = yield get(agent, stack.url + path, method=b"PURGE", headers=headers)
        return {"code": response.code, **json.loads(body)}

    @defer.inlineCallbacks
    def test_a_purge_through_another_alias_removes_the_shared_entry(self):
        stack = aliased_stack(self)
        agent = http_client(self)
        yield self.stored_through(stack, agent, b"a.example", b"/one")
        answer = yield self.purge(stack, agent, b"b.example", "/one")
        self.assertEqual((answer["code"], answer["purged"], answer["key"]), (200, 1, stack.origin_url + "/one"))
        response, _ = yield get(agent, stack.url + "/one", headers={b"host": b"a.example"})
        self.assertEqual(status_word(response), "fwd=uri-miss")

    @defer.inlineCallbacks
    def test_prefix_and_all_purges_through_another_alias(self):
        stack = aliased_stack(self)
        agent = http_client(self)
        yield self.stored_through(stack, agent, b"a.example", b"/img/1", b"/img/2", b"/doc")
        answer = yield self.purge(stack, agent, b"b.example", "/img/", b"prefix")
        self.assertEqual((answer["code"], answer["purged"]), (200, 2))
        answer = yield self.purge(stack, agent, b"c.example", "/", b"all")
        self.assertEqual((answer["code"], answer["purged"]), (200, 1))
        self.assertEqual(stack.accel_site.cache.store.disk.stats()["entries"], 0)

    @defer.inlineCallbacks
    def test_on_a_route_that_preserves_the_host_a_purge_is_for_that_host(self):
        stack = aliased_stack(self, preserve_host=True)
        agent = http_client(self)
        yield self.stored_through(stack, agent, b"a.example", b"/one")
        answer = yield self.purge(stack, agent, b"b.example", "/one")
        self.assertEqual(answer["code"], 404)
        answer = yield self.purge(stack, agent, b"a.example", "/one")
        self.assertEqual((answer["code"], answer["key"]), (200, "http://a.example/one"))


class CommandLineTests(unittest.TestCase):
    """``accel cache`` in another process, on entries the server stored through aliases."""

    @defer.inlineCallbacks
    def test_show_and_purge_with_config_map_any_alias_to_the_origins_key(self):
        from tests.test_cache_cli import ROOT
        from twisted.internet.utils import getProcessOutputAndValue
        import sys

        stack = aliased_stack(self)
        directory = stack.config.cache.dir
        config = os.path.join(directory, "accel.toml")
        with open(config, "w") as f:
            f.write(f'[cache]\ndir = "{directory}"\n[[route]]\nprefix = "/"\norigin = "{stack.origin_url}/"\n')
        agent = http_client(self)
        for path in (b"/a", b"/img/1", b"/img/2"):
            stack.origin.handlers[path] = responder(b"x", cache_control="max-age=600")
            yield get(agent, stack.url + path.decode(), headers={b"host": b"www.example.com"})

        @defer.inlineCallbacks
        def cli(*args):
            out, err, code = yield getProcessOutputAndValue(
                sys.executable, ["-c", "from accel.cli.main import main; main()", "cache", "--config", config, *args],
                env=dict(os.environ), path=ROOT)
            return code, out.decode(), err.decode()

        code, out, err = yield cli("show", "--json", "http://example.com/a")
        self.assertEqual((code, json.loads(out)["url"]), (0, stack.origin_url + "/a"), err)
        code, out, err = yield cli("purge", "http://cdn.example.net/a")
        self.assertEqual(code, 0, err)
        self.assertIn(f"purged 1 entry (url: {stack.origin_url}/a", out)
        code, out, err = yield cli("purge", "--prefix", "https://example.com/img/")
        self.assertEqual(code, 0, err)
        self.assertIn("purged 2 entries", out)
        response, _ = yield get(agent, stack.url + "/img/1", headers={b"host": b"www.example.com"})
        self.assertEqual(status_word(response), "fwd=uri-miss")
