"""The cache end to end: a real origin on loopback counts what reaches it; a real LMDB in a temp dir."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.web.client import ResponseFailed
from twisted.trial import unittest
from twisted.web import server

from accel.app import build_site
from accel.config import CacheSettings, Config, Route, RouteCache, parse_origin
from tests.support import get, http_client, start_stack, temporary_directory, turns, until


def cached_stack(testcase, **settings):
    directory = temporary_directory(testcase)
    config = Config(cache=CacheSettings(dir=directory, **settings))
    return start_stack(testcase, config=config)


def responder(body: bytes = b"hello world", **fields):
    """An origin handler answering with ``body`` and the given header fields (underscores → dashes)."""

    def handle(request):
        for name, value in fields.items():
            request.setHeader(name.replace("_", "-").encode(), value.encode())
        return body

    return handle


def origin_hits(stack, path: bytes) -> int:
    return sum(1 for seen in stack.origin.seen if seen.uri.split(b"?")[0] == path)


def cache_status(response) -> str:
    return (response.headers.getRawHeaders(b"cache-status") or [b""])[0].decode()


class HitAndMissTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_second_request_is_a_hit_with_age(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/a"] = responder(cache_control="max-age=60", etag='"v1"')
        agent = http_client(self)
        first, body1 = yield get(agent, stack.url + "/a")
        second, body2 = yield get(agent, stack.url + "/a")
        self.assertEqual((body1, body2), (b"hello world", b"hello world"))
        self.assertEqual(origin_hits(stack, b"/a"), 1)
        self.assertEqual(cache_status(first), "accel; fwd=uri-miss; fwd-status=200; stored")
        self.assertTrue(cache_status(second).startswith("accel; hit; ttl="))
        self.assertEqual(len(second.headers.getRawHeaders(b"age")), 1)
        self.assertEqual(second.headers.getRawHeaders(b"etag"), [b'"v1"'])
        self.assertEqual(second.length, 11)

    @defer.inlineCallbacks
    def test_responses_that_must_not_be_stored(self):
        stack = cached_stack(self)
        cases = {
            b"/no-store": responder(cache_control="no-store, max-age=60"),
            b"/private": responder(cache_control="private, max-age=60"),
            b"/cookie": responder(cache_control="max-age=60", set_cookie="session=secret"),
            b"/vary-star": responder(cache_control="max-age=60", vary="*"),
        }
        stack.origin.handlers.update(cases)
        agent = http_client(self)
        for path in cases:
            for _ in range(2):
                response, _ = yield get(agent, stack.url + path.decode())
            self.assertEqual(origin_hits(stack, path), 2, path)
        # One client's cookie is never replayed to another: the second client got its own.
        response, _ = yield get(agent, stack.url + "/cookie")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"session=secret"])
        self.assertEqual(origin_hits(stack, b"/cookie"), 3)

    @defer.inlineCallbacks
    def test_authorization_requests_are_stored_only_when_the_response_allows(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/plain"] = responder(cache_control="max-age=60")
        stack.origin.handlers[b"/public"] = responder(cache_control="public, max-age=60")
        agent = http_client(self)
        for path in ("/plain", "/public"):
            for _ in range(2):
                yield get(agent, stack.url + path, headers={b"authorization": b"Basic dTpw"})
        self.assertEqual(origin_hits(stack, b"/plain"), 2)
        self.assertEqual(origin_hits(stack, b"/public"), 1)

    @defer.inlineCallbacks
    def test_vary_keeps_one_variant_per_normalised_request_field(self):
        stack = cached_stack(self)

        def by_encoding(request):
            request.setHeader(b"cache-control", b"max-age=60")
            request.setHeader(b"vary", b"Accept-Encoding")
            return b"encoding=" + (request.getHeader(b"accept-encoding") or b"none")

        stack.origin.handlers[b"/v"] = by_encoding
        agent = http_client(self)
        _, gzip1 = yield get(agent, stack.url + "/v", headers={b"accept-encoding": b"gzip, br"})
        _, plain = yield get(agent, stack.url + "/v")
        _, gzip2 = yield get(agent, stack.url + "/v", headers={b"accept-encoding": b"br,gzip"})
        # The origin sees Accept-Encoding reduced to the codings accel can serve (README: Vary)
        self.assertEqual((gzip1, plain, gzip2), (b"encoding=br, gzip", b"encoding=none", b"encoding=br, gzip"))
        self.assertEqual(origin_hits(stack, b"/v"), 2)

    @defer.inlineCallbacks
    def test_only_if_cached_miss_is_504(self):
        stack = cached_stack(self)
        response, _ = yield get(http_client(self), stack.url + "/nothing", headers={b"cache-control": b"only-if-cached"})
        self.assertEqual(response.code, 504)
        self.assertEqual(cache_status(response), "accel; detail=only-if-cached")
        self.assertEqual(stack.origin.seen, [])

    @defer.inlineCallbacks
    def test_502_and_504_from_the_cache_path_carry_cache_status(self):
        closed = reactor.listenTCP(0, server.Site(None), interface="127.0.0.1")
        number = closed.getHost().port
        yield closed.stopListening()
        behind = start_stack(self)
        routes = (
            Route(prefix="/gone/", origin=parse_origin(f"http://127.0.0.1:{number}/")),
            Route(prefix="/", origin=parse_origin(behind.origin_url + "/"), response_timeout=0.2),
        )
        stack = start_stack(self, Config(cache=CacheSettings(dir=temporary_directory(self))), routes=routes)
        agent = http_client(self)
        answers = []
        for path, method in (("/gone/x", b"GET"), ("/hang", b"GET"), ("/gone/x", b"POST")):
            response, _ = yield get(agent, stack.url + path, method=method)
            answers.append((response.code, cache_status(response)))
        self.assertEqual(answers, [
            (502, "accel; fwd=uri-miss; detail=origin-unreachable"),
            (504, "accel; fwd=uri-miss; detail=origin-timeout"),
            (502, "accel; fwd=method; detail=origin-unreachable"),
        ])

    @defer.inlineCallbacks
    def test_head_is_answered_from_a_stored_get(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/h"] = responder(b"0123456789", cache_control="max-age=60")
        agent = http_client(self)
        yield get(agent, stack.url + "/h")
        response, body = yield get(agent, stack.url + "/h", method=b"HEAD")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"10"])  # HEAD: kept as a field
        self.assertEqual(origin_hits(stack, b"/h"), 1)

    @defer.inlineCallbacks
    def test_cache_disable_by_route_and_by_pattern(self):
        directory = temporary_directory(self)
        stack = start_stack(self)
        origin = parse_origin(stack.origin_url + "/")
        routes = (
            Route(prefix="/", origin=origin, cache=RouteCache(disable=("/account/", "*.php"))),
            Route(prefix="/api/", origin=parse_origin(stack.origin_url + "/api/"), cache=RouteCache(enabled=False)),
        )
        front = start_stack(self, config=Config(cache=CacheSettings(dir=directory)), routes=routes)
        handler = responder(cache_control="max-age=60")
        for path in (b"/api/x", b"/account/me", b"/index.php", b"/page"):
            stack.origin.handlers[path] = handler
        agent = http_client(self)
        for path in ("/api/x", "/account/me", "/index.php", "/page"):
            for _ in range(2):
                response, _ = yield get(agent, front.url + path)
        self.assertEqual([origin_hits(stack, p) for p in (b"/api/x", b"/account/me", b"/index.php", b"/page")], [2, 2, 2, 1])
        self.assertEqual(cache_status(response).split(";")[0], "accel")

    @defer.inlineCallbacks
    def test_cdn_cache_control_takes_precedence_and_is_not_passed_on(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/cdn"] = responder(cache_control="no-store", cdn_cache_control="max-age=60")
        agent = http_client(self)
        yield get(agent, stack.url + "/cdn")
        response, _ = yield get(agent, stack.url + "/cdn")
        self.assertEqual(origin_hits(stack, b"/cdn"), 1)
        self.assertIsNone(response.headers.getRawHeaders(b"cdn-cache-control"))
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])

    @defer.inlineCallbacks
    def test_entries_survive_a_restart(self):
        directory = temporary_directory(self)
        stack = start_stack(self, config=Config(cache=CacheSettings(dir=directory)))
        stack.origin.handlers[b"/keep"] = responder(cache_control="max-age=600")
        agent = http_client(self)
        host = {b"host": b"www.example.test"}  # the key includes the host, and the port changes
        yield get(agent, stack.url + "/keep", headers=host)
        yield stack.accel_port.stopListening()
        stack.accel_site.close()
        config = replace(stack.config, cache=CacheSettings(dir=directory))
        site = build_site(config, reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(lambda: (port.stopListening(), site.close()))
        response, body = yield get(agent, f"http://127.0.0.1:{port.getHost().port}/keep", headers=host)
        self.assertEqual(body, b"hello world")
        self.assertEqual(origin_hits(stack, b"/keep"), 1, cache_status(response))
        self.assertTrue(cache_status(response).startswith("accel; hit"))

    @defer.inlineCallbacks
    def test_large_bodies_stream_from_the_disk_tier(self):
        stack = cached_stack(self, memory_max_object_size=1024)
        size = 3 * 1024 * 1024 + 17
        stack.origin.handlers[b"/large"] = responder(bytes(range(256)) * (size // 256) + b"x" * (size % 256), cache_control="max-age=60")
        agent = http_client(self)
        _, first = yield get(agent, stack.url + "/large")
        response, second = yield get(agent, stack.url + "/large")
        self.assertEqual(len(second), size)
        self.assertEqual(first, second)
        self.assertTrue(cache_status(response).startswith("accel; hit"))
        ranged, part = yield get(agent, stack.url + "/large", headers={b"range": b"bytes=70000-70009"})
        self.assertEqual((ranged.code, part), (206, first[70000:70010]))

    @defer.inlineCallbacks
    def test_truncated_origin_response_is_never_stored(self):
        stack = cached_stack(self)
        for _ in range(2):
            # The client sees the cut: Content-Length 1000, 10 bytes, then the connection closes.
            failure = yield self.assertFailure(get(http_client(self), stack.url + "/truncate"), ResponseFailed)
            self.assertTrue(any(reason.check(ConnectionLost, ConnectionDone) for reason in failure.reasons))
        self.assertEqual(origin_hits(stack, b"/truncate"), 2)
        self.assertEqual(list(stack.accel_site.cache.store.disk.iter_heads()), [])


class ValidationTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_stale_entry_is_revalidated_and_freshened_by_304(self):
        stack = cached_stack(self)

        def validated(request):
            request.setHeader(b"cache-control", b"max-age=0")
            request.setHeader(b"etag", b'"v1"')
            if request.getHeader(b"if-none-match") == b'"v1"':
                request.setResponseCode(304)
                request.setHeader(b"x-fresh", b"yes")
                return b""
            return b"body-v1"

        stack.origin.handlers[b"/val"] = validated
        agent = http_client(self)
        yield get(agent, stack.url + "/val")
        response, body = yield get(agent, stack.url + "/val", headers={b"if-none-match": b'"client"'})
        self.assertEqual((response.code, body), (200, b"body-v1"))
        self.assertEqual(cache_status(response), "accel; fwd=stale; fwd-status=304")
        self.assertEqual(response.headers.getRawHeaders(b"x-fresh"), [b"yes"])
        second = stack.origin.seen[1]
        self.assertEqual(second.header(b"if-none-match"), [b'"v1"'])  # ours, not the client's

    @defer.inlineCallbacks
    def test_client_conditionals_are_answered_from_the_cache(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/c"] = responder(
            cache_control="max-age=60", etag='"abc"', last_modified="Sat, 01 Jan 2022 00:00:00 GMT"
        )
        agent = http_client(self)
        first, _ = yield get(agent, stack.url + "/c", headers={b"if-none-match": b'"abc"'})
        self.assertEqual(first.code, 304)  # stored in full first, then answered from the store
        response, body = yield get(agent, stack.url + "/c", headers={b"if-none-match": b'W/"abc"'})
        self.assertEqual((response.code, body), (304, b""))
        self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'"abc"'])
        response, _ = yield get(agent, stack.url + "/c", headers={b"if-modified-since": b"Sun, 02 Jan 2022 00:00:00 GMT"})
        self.assertEqual(response.code, 304)
        response, body = yield get(agent, stack.url + "/c", headers={b"if-none-match": b'"other"'})
        self.assertEqual((response.code, body), (200, b"hello world"))
        self.assertEqual(origin_hits(stack, b"/c"), 1)
        self.assertEqual(stack.origin.seen[0].header(b"if-none-match"), [])

    @defer.inlineCallbacks
    def stored_then_origin_fails(self, cache_control: str, **settings):
        """Store a response with ``cache_control``, make the origin answer 503, request it again."""
        stack = cached_stack(self, **settings)
        state = {"fail": False}

        def flaky(request):
            if state["fail"]:
                request.setResponseCode(503)
                return b"down"
            request.setHeader(b"cache-control", cache_control.encode())
            return b"good"

        stack.origin.handlers[b"/flaky"] = flaky
        agent = http_client(self)
        yield get(agent, stack.url + "/flaky")
        state["fail"] = True
        response, body = yield get(agent, stack.url + "/flaky")
        return response, body

    @defer.inlineCallbacks
    def test_stale_if_error_serves_stale_when_the_origin_fails(self):
        response, body = yield self.stored_then_origin_fails("max-age=0, stale-if-error=600")
        self.assertEqual((response.code, body), (200, b"good"))
        self.assertIn("fwd-status=503", cache_status(response))

    @defer.inlineCallbacks
    def test_must_revalidate_forbids_stale_on_error(self):
        response, body = yield self.stored_then_origin_fails("max-age=0, must-revalidate", grace=600)
        self.assertEqual((response.code, body), (503, b"down"))

    @defer.inlineCallbacks
    def test_stale_while_revalidate_serves_stale_and_refreshes_in_the_background(self):
        stack = cached_stack(self)
        versions = iter([b"one", b"two", b"three"])

        def changing(request):
            request.setHeader(b"cache-control", b"max-age=0, stale-while-revalidate=600")
            return next(versions)

        stack.origin.handlers[b"/swr"] = changing
        agent = http_client(self)
        yield get(agent, stack.url + "/swr")
        response, body = yield get(agent, stack.url + "/swr")
        self.assertEqual(body, b"one")
        self.assertTrue(cache_status(response).startswith("accel; hit; ttl=-"))
        yield until(lambda: origin_hits(stack, b"/swr") == 2 and stack.accel_site.cache.layers[0].revalidating == set())
        _, body = yield get(agent, stack.url + "/swr")
        self.assertEqual(body, b"two")

    @defer.inlineCallbacks
    def test_unsafe_methods_invalidate_the_target_and_location(self):
        stack = cached_stack(self)
        for path in (b"/item", b"/list"):
            stack.origin.handlers[path] = responder(cache_control="max-age=600")

        def created(request):
            request.setResponseCode(201)
            request.setHeader(b"location", b"/list")
            return b""

        stack.origin.handlers[b"/item"] = lambda request: (
            created(request) if request.method == b"POST" else responder(cache_control="max-age=600")(request)
        )
        agent = http_client(self)
        for path in ("/item", "/list"):
            yield get(agent, stack.url + path)
        yield get(agent, stack.url + "/item", method=b"POST")
        for path in ("/item", "/list"):
            yield get(agent, stack.url + path)
        self.assertEqual(origin_hits(stack, b"/item"), 3)
        self.assertEqual(origin_hits(stack, b"/list"), 2)


class RangeTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_ranges_from_a_stored_response(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/r"] = responder(b"0123456789abcdef", cache_control="max-age=60", content_type="text/plain", etag='"r1"')
        agent = http_client(self)
        yield get(agent, stack.url + "/r")
        single, body = yield get(agent, stack.url + "/r", headers={b"range": b"bytes=2-5"})
        self.assertEqual((single.code, body), (206, b"2345"))
        self.assertEqual(single.headers.getRawHeaders(b"content-range"), [b"bytes 2-5/16"])
        suffix, body = yield get(agent, stack.url + "/r", headers={b"range": b"bytes=-3"})
        self.assertEqual(body, b"def")
        multi, body = yield get(agent, stack.url + "/r", headers={b"range": b"bytes=0-1,10-11"})
        self.assertEqual(multi.code, 206)
        content_type = multi.headers.getRawHeaders(b"content-type")[0]
        self.assertTrue(content_type.startswith(b"multipart/byteranges; boundary="))
        self.assertIn(b"Content-Range: bytes 0-1/16\r\n\r\n01", body)
        self.assertIn(b"Content-Range: bytes 10-11/16\r\n\r\nab", body)
        self.assertEqual(multi.length, len(body))
        unsatisfiable, _ = yield get(agent, stack.url + "/r", headers={b"range": b"bytes=100-"})
        self.assertEqual(unsatisfiable.code, 416)
        self.assertEqual(unsatisfiable.headers.getRawHeaders(b"content-range"), [b"bytes */16"])
        changed, body = yield get(agent, stack.url + "/r", headers={b"range": b"bytes=0-1", b"if-range": b'"r0"'})
        self.assertEqual((changed.code, body), (200, b"0123456789abcdef"))
        self.assertEqual(origin_hits(stack, b"/r"), 1)

    @defer.inlineCallbacks
    def test_a_206_from_the_origin_is_not_stored_as_the_whole_object(self):
        stack = cached_stack(self, range_fetch_max=0)  # Range misses pass through: the 206 path

        def partial(request):
            request.setHeader(b"cache-control", b"max-age=60")
            if request.getHeader(b"range"):
                request.setResponseCode(206)
                request.setHeader(b"content-range", b"bytes 0-1/10")
                return b"01"
            return b"0123456789"

        stack.origin.handlers[b"/p"] = partial
        agent = http_client(self)
        response, body = yield get(agent, stack.url + "/p", headers={b"range": b"bytes=0-1"})
        self.assertEqual((response.code, body), (206, b"01"))
        _, body = yield get(agent, stack.url + "/p")
        self.assertEqual(body, b"0123456789")
        self.assertEqual(origin_hits(stack, b"/p"), 2)


class CollapsingTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_concurrent_misses_make_one_origin_request(self):
        stack = cached_stack(self)
        pending = []

        def slow(request):
            request.setHeader(b"cache-control", b"max-age=60")
            pending.append(request)
            return server.NOT_DONE_YET

        stack.origin.handlers[b"/slow"] = slow
        agent = http_client(self)
        waiting = [get(agent, stack.url + "/slow") for _ in range(20)]
        yield until(lambda: pending)
        yield turns(50)
        self.assertEqual(len(pending), 1)
        pending[0].write(b"collapsed body")
        pending[0].finish()
        results = yield defer.gatherResults(waiting)
        self.assertEqual({body for _, body in results}, {b"collapsed body"})
        self.assertEqual(origin_hits(stack, b"/slow"), 1)
        statuses = [cache_status(r) for r, _ in results]
        self.assertEqual(sum("collapsed" in s for s in statuses), 19)

    @defer.inlineCallbacks
    def test_uncacheable_response_releases_waiters_and_marks_hit_for_miss(self):
        stack = cached_stack(self)
        pending = []

        def slow_private(request):
            request.setHeader(b"cache-control", b"private")
            pending.append(request)
            return server.NOT_DONE_YET

        stack.origin.handlers[b"/private"] = slow_private
        agent = http_client(self)
        waiting = [get(agent, stack.url + "/private") for _ in range(5)]
        yield until(lambda: pending)
        pending[0].write(b"mine")
        pending[0].finish()
        yield until(lambda: len(pending) == 5)
        for request in pending[1:]:
            request.write(b"mine")
            request.finish()
        yield defer.gatherResults(waiting)
        layer = stack.accel_site.cache.layers[0]
        self.assertTrue(any(k.endswith("/private") for k in layer.hit_for_miss))


class HitForMissTableTests(unittest.TestCase):
    def test_the_hit_for_miss_table_stays_bounded(self):
        from accel.cache import layer as caching

        stack = cached_stack(self)
        layer = stack.accel_site.cache.layers[0]
        now = [1000.0]
        layer.clock = lambda: now[0]
        self.patch(caching, "_MEMO_SIZE", 10)
        for i in range(25):
            layer.remember_hit_for_miss(f"http://a/{i}")
        self.assertLessEqual(len(layer.hit_for_miss), 10)
        self.assertIn("http://a/24", layer.hit_for_miss)
        now[0] += layer.settings.hit_for_miss_ttl + 1
        layer.remember_hit_for_miss("http://a/new")
        self.assertEqual(list(layer.hit_for_miss), ["http://a/new"])
