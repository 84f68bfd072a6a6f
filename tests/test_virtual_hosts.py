"""Virtual hosts through accel: each host's routes (and their cache rules) apply, on every path a request can
take, the fast hit path included."""

from __future__ import annotations


from twisted.internet import defer
from twisted.trial import unittest

from accel.config import CacheSettings, Config, Route, RouteCache, parse_origin
from tests.support import get, http_client, start_stack, temporary_directory


def cacheable(request):
    request.setHeader(b"cache-control", b"max-age=600")
    return b"body of " + request.uri


class VirtualHostTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_each_host_gets_its_own_routes_and_cache_rules(self):
        directory = temporary_directory(self, "accel-vhosts-")
        behind = start_stack(self)
        for path in (b"/x", b"/api/x"):
            behind.origin.handlers[path] = cacheable
        origin = parse_origin(behind.origin_url + "/")
        routes = (
            # always revalidated; it keeps its own entries (preserve_host), or the others would share them
            Route(prefix="/", origin=origin, hosts=("strict.test",), cache=RouteCache(max_ttl=0), preserve_host=True),
            Route(prefix="/api/", origin=parse_origin(behind.origin_url + "/api/"), hosts=("*.example.org",)),
            Route(prefix="/api/"),  # excluded for every other host: 404
            Route(prefix="/", origin=origin),
        )
        stack = start_stack(self, Config(cache=CacheSettings(dir=directory)), routes=routes)
        agent = http_client(self)

        def seen(uri: bytes) -> int:
            return len([s for s in behind.origin.seen if s.uri == uri])

        for _ in range(3):
            response, _ = yield get(agent, stack.url + "/x", headers={b"host": b"strict.test"})
            self.assertEqual(response.code, 200)
        self.assertEqual(seen(b"/x"), 3)  # max_ttl = 0 on strict.test: never a hit
        for _ in range(3):
            yield get(agent, stack.url + "/x", headers={b"host": b"www.example.com"})
        self.assertEqual(seen(b"/x"), 4)  # the routes for every host: one fetch, then hits

        response, body = yield get(agent, stack.url + "/api/x", headers={b"host": b"a.example.org"})
        self.assertEqual((response.code, body), (200, b"body of /api/x"))
        response, _ = yield get(agent, stack.url + "/api/x", headers={b"host": b"www.example.com"})
        self.assertEqual(response.code, 404)
