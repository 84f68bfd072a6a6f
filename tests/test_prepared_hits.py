"""The prepared path for plain cache hits: the pure freshness helpers agree with ``evaluate``, the prepared
response is byte for byte the one the general path writes, and the front end's per-connection caches."""

from __future__ import annotations

import re

import itertools
import os
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from accel.cache import policy
from accel.cache.policy import CachePolicy, StoredResponse
from accel.http.accesslog import PerTurnWriter
from accel.http.dates import HTTPDate
from accel.http.server import AccelSite
from tests.support import raw_request, temporary_directory
from tests.test_cache_e2e import cached_stack, responder

T0 = 1_700_000_000.0
DATE_T0 = "Tue, 14 Nov 2023 22:13:20 GMT"  # T0 as an HTTP-date

RESPONSE_FIELDS = [
    (("cache-control", "max-age=60"),),
    (("cache-control", "max-age=60, no-cache"),),
    (("cache-control", "s-maxage=10, max-age=60"),),
    (("cache-control", "max-age=60, must-revalidate"),),
    (("cache-control", "max-age=5, stale-while-revalidate=100"),),
    (("cache-control", "max-age=0"),),
    (("date", DATE_T0), ("expires", "Tue, 14 Nov 2023 22:14:20 GMT")),
    (("date", DATE_T0), ("expires", "0")),
    (("date", DATE_T0), ("last-modified", "Tue, 14 Nov 2023 12:13:20 GMT")),
    (("cdn-cache-control", "max-age=30"), ("cache-control", "no-store")),
    (),
]
POLICIES = [CachePolicy(), CachePolicy(default_ttl=100.0, max_ttl=20.0)]


def stored(fields, stale_marked=False, status=200) -> StoredResponse:
    return StoredResponse(
        status=status, fields=fields, request_time=T0, response_time=T0, initial_age=2.0, vary_names=(),
        secondary_key="[]", stale_marked=stale_marked,
    )


class FreshnessTests(unittest.TestCase):
    def test_freshness_is_what_evaluate_computes(self):
        for fields, pol in itertools.product(RESPONSE_FIELDS, POLICIES):
            known = policy.freshness(stored(fields), pol)
            self.assertEqual(known.directives, policy.response_directives(fields, pol)[0])
            self.assertEqual(known.lifetime, policy.freshness_lifetime(200, fields, pol, response_time=T0))

    def test_plain_request_decision_agrees_with_evaluate(self):
        plain_requests = [(), (("host", "example.com"), ("accept", "text/html"))]
        for fields, pol, stale_marked, later, request in itertools.product(
            RESPONSE_FIELDS, POLICIES, (False, True), (0.0, 4.0, 9.0, 30.0, 59.0, 3600.0), plain_requests
        ):
            response = stored(fields, stale_marked)
            now = T0 + later
            decision = policy.evaluate("GET", request, [response], pol, now)
            fresh = policy.fresh_for_plain_request(response, policy.freshness(response, pol), now)
            if isinstance(decision, policy.Fresh):
                self.assertEqual(fresh, decision, (fields, stale_marked, later))
            else:
                self.assertIsNone(fresh, (fields, stale_marked, later, decision))

    def test_evaluate_with_known_freshness_decides_the_same(self):
        requests = [(), (("cache-control", "max-age=3"),), (("cache-control", "no-cache"),),
                    (("cache-control", "min-fresh=40"),), (("cache-control", "max-stale=100"),),
                    (("pragma", "no-cache"),), (("cache-control", "only-if-cached"),)]
        for fields, pol, later, request in itertools.product(RESPONSE_FIELDS, POLICIES, (0.0, 9.0, 70.0), requests):
            responses = [stored(fields), stored(fields + (("x-other", "1"),), status=203)]
            known = {id(r): policy.freshness(r, pol) for r in responses}
            self.assertEqual(
                policy.evaluate("GET", request, responses, pol, T0 + later, lambda r: known[id(r)]),
                policy.evaluate("GET", request, responses, pol, T0 + later),
            )

    def test_most_recent_first_of_one(self):
        response = stored((("date", "not a date"),))
        self.assertEqual(policy.most_recent_first([response]), [response])
        self.assertEqual(policy.most_recent_first([]), [])


class HTTPDateTests(unittest.TestCase):
    def test_formats_like_twisted_and_once_per_second(self):
        now = [T0 + 0.25]
        date = HTTPDate(lambda: now[0])
        self.assertEqual(date(), http.datetimeToString(T0))
        first = date()
        now[0] = T0 + 0.75
        self.assertIs(date(), first)
        now[0] = T0 + 1.0
        self.assertEqual(date(), http.datetimeToString(T0 + 1))


class Both(Resource):
    """Answers every request twice over — once through write_prepared, once the ordinary way — on two
    channels, so the bytes can be compared."""

    isLeaf = True

    def __init__(self, prepared: bool, own=()):
        super().__init__()
        self.prepared = prepared
        self.own = own
        self.accepted = None

    def render(self, request):
        for name, value in self.own:
            request.setHeader(name, value)
        body = b"0123456789"
        if self.prepared:
            section = b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\nX-A: 1\r\nAge: 3\r\nContent-Length: 10\r\n\r\n"
            self.accepted = request.write_prepared(
                203, b"Non-Authoritative", section, frozenset({b"X-A", b"Age", b"Content-Length"}), b"Date", body
            )
            if not self.accepted:
                return b"general path"
            request.finish()
            return NOT_DONE_YET
        request.setResponseCode(203, b"Non-Authoritative")
        request.responseHeaders.removeHeader(b"date")
        for name, value in ((b"date", b"Tue, 14 Nov 2023 22:13:20 GMT"), (b"x-a", b"1"), (b"age", b"3"),
                            (b"content-length", b"10")):
            request.responseHeaders.addRawHeader(name, value)
        return body


def exchange(resource, data: bytes) -> tuple[bytes, object]:
    site = AccelSite(resource, reactor=MemoryReactorClock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return re.sub(rb"X-Request-Id: [^\r]*", b"X-Request-Id: -", transport.value()), channel  # unique to each


class WritePreparedTests(unittest.TestCase):
    def test_same_bytes_as_the_ordinary_way(self):
        for data in (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # pipelined
        ):
            prepared, _ = exchange(Both(True), data)
            ordinary, _ = exchange(Both(False), data)
            self.assertEqual(prepared, ordinary, data)
            self.assertIn(b"HTTP/1.", prepared)

    def test_refuses_when_an_own_field_is_taken(self):
        resource = Both(True, own=[(b"x-a", b"0")])
        out, _ = exchange(resource, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertFalse(resource.accepted)
        self.assertTrue(out.endswith(b"general path"))
        self.assertIn(b"X-A: 0\r\n", out)

    def test_connection_addresses_are_asked_once(self):
        _, channel = exchange(Both(True), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        self.assertIs(channel.getHost(), channel.getHost())
        self.assertIs(channel.getPeer(), channel.getPeer())
        self.assertFalse(channel.isSecure())


class AccessLogTests(unittest.TestCase):
    def test_the_access_log_is_never_renamed(self):
        directory = temporary_directory(self)
        path = os.path.join(directory, "access.log")
        site = AccelSite(Both(False), access_log=path, reactor=MemoryReactorClock())
        site.startFactory()
        line = "x" * 99 + "\n"
        for _ in range(11_000):  # over Twisted LogFile's 1 MB rotation size
            site._logFile.write(line)
        site.stopFactory()
        self.assertEqual(os.listdir(directory), ["access.log"])
        self.assertEqual(os.path.getsize(path), 11_000 * 100)


class PerTurnWriterTests(unittest.TestCase):
    def test_lines_of_one_turn_are_written_together_at_the_next(self):
        class File:
            def __init__(self):
                self.writes, self.flushes, self.closed = [], 0, False

            def write(self, text):
                self.writes.append(text)

            def flush(self):
                self.flushes += 1

            def close(self):
                self.closed = True

        clock = Clock()
        file = File()
        writer = PerTurnWriter(file, clock)
        writer.write("a\n")
        writer.write("b\n")
        self.assertEqual(file.writes, [])
        clock.advance(0)
        self.assertEqual((file.writes, file.flushes), (["a\nb\n"], 1))
        clock.advance(0)
        self.assertEqual(file.flushes, 1)
        writer.write("c\n")
        writer.close()
        self.assertEqual((file.writes, file.closed), (["a\nb\n", "c\n"], True))
        self.assertEqual(clock.getDelayedCalls(), [])


FIXED = time.time()


def fixed_clock(stack):
    for layer in stack.accel_site.cache.layers:
        layer.clock = lambda: FIXED


def count_general_serves(testcase, stack) -> list:
    calls = []
    for layer in stack.accel_site.cache.layers:
        original = layer.serve

        def serve(*args, original=original, **kwargs):
            calls.append(args[0].request.method)
            return original(*args, **kwargs)

        layer.serve = serve
    return calls


def head_and_body(raw: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


class PreparedPathTests(unittest.TestCase):
    """A plain hit on the prepared path equals what the general path writes for the same stored response
    (a request with a Pragma that is not no-cache takes the general path to the same 200)."""

    def test_prepared_hit_equals_general_hit(self):
        return self.check_prepared_hit_equals_general_hit()

    def test_prepared_hit_equals_general_hit_with_the_body_on_disk(self):
        return self.check_prepared_hit_equals_general_hit(memory_max_object_size=4)

    @defer.inlineCallbacks
    def check_prepared_hit_equals_general_hit(self, **settings):
        stack = cached_stack(self, **settings)
        fixed_clock(stack)
        stack.origin.handlers[b"/p"] = responder(
            body=b"prepared body", cache_control="max-age=600", etag='"v1"', surrogate_key="a b",
            cdn_cache_control="max-age=900", x_extra="1",
        )
        port = stack.accel_port.getHost().port
        first = yield raw_request(port, b"GET /p HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        self.assertIn(b"fwd=uri-miss", first)
        general = count_general_serves(self, stack)
        for method, version in itertools.product((b"GET", b"HEAD"), (b"HTTP/1.1", b"HTTP/1.0")):
            request = b"%s /p %s\r\nHost: example.com\r\nConnection: close\r\n" % (method, version)
            prepared = yield raw_request(port, request + b"\r\n")
            before = len(general)
            slow = yield raw_request(port, request + b"Pragma: x\r\n\r\n")
            self.assertEqual(len(general), before + 1)
            blank = lambda out: re.sub(rb"X-Request-Id: [^\r]*", b"X-Request-Id: -", out)  # unique to each
            self.assertEqual(blank(prepared), blank(slow), method)
            lines, body = head_and_body(prepared)
            self.assertEqual(lines[0], version + b" 200 OK")
            # CDN-Cache-Control (targeted, RFC 9213) wins over Cache-Control; less the second the Date is behind
            self.assertTrue({b"Cache-Status: accel; hit; ttl=899", b"Cache-Status: accel; hit; ttl=900"} & set(lines))
            self.assertIn(b"Content-Length: 13", lines)
            self.assertFalse([l for l in lines if l.lower().startswith((b"surrogate-key", b"cdn-cache-control"))])
            self.assertEqual(body, b"" if method == b"HEAD" else b"prepared body")
        self.assertEqual(len(general), 4)  # only the Pragma requests
        items = stack.accel_site.cache.store.memory.get_variants(stack.origin_url + "/p")  # the key names the origin
        self.assertEqual([item.body is None for item in items], ["memory_max_object_size" in settings])
        self.assertEqual(sum(1 for seen in stack.origin.seen if seen.uri == b"/p"), 1)

    @defer.inlineCallbacks
    def test_requests_with_complications_take_the_general_path(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/c"] = responder(cache_control="max-age=600", etag='"v1"')
        port = stack.accel_port.getHost().port
        yield raw_request(port, b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        general = count_general_serves(self, stack)
        # (If-None-Match and If-Modified-Since of a fresh response are the fast path's: tests/test_fast_hits.py)
        complications = [b"Cache-Control: max-stale=5", b"Pragma: x", b"Range: bytes=0-1", b'If-Match: "v1"',
                         b"If-Unmodified-Since: Tue, 14 Nov 2099 22:13:20 GMT", b'If-Range: "v1"']
        for field in complications:
            yield raw_request(port, b"GET /c HTTP/1.1\r\nHost: h\r\n%s\r\nConnection: close\r\n\r\n" % field)
        self.assertEqual(len(general), len(complications))
        response = yield raw_request(port, b'GET /c HTTP/1.1\r\nHost: h\r\nIf-None-Match: "v1"\r\nConnection: close\r\n\r\n')
        self.assertTrue(response.startswith(b"HTTP/1.1 304 Not Modified\r\n"))

    @defer.inlineCallbacks
    def test_soft_purged_and_stale_responses_are_not_served_as_fresh(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/s"] = responder(cache_control="max-age=60")
        port = stack.accel_port.getHost().port
        request = b"GET /s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        yield raw_request(port, request)
        hit = yield raw_request(port, request)
        self.assertIn(b"Cache-Status: accel; hit; ttl=", hit)
        for layer in stack.accel_site.cache.layers:
            layer.clock = lambda: time.time() + 120  # stale now
        stale = yield raw_request(port, request)
        self.assertIn(b"fwd=stale", stale)
        self.assertEqual(sum(1 for seen in stack.origin.seen if seen.uri == b"/s"), 2)
        stack.accel_site.cache.store.purge_url(stack.origin_url + "/s", soft=True)
        purged = yield raw_request(port, request)
        self.assertIn(b"fwd=stale", purged)
        self.assertEqual(sum(1 for seen in stack.origin.seen if seen.uri == b"/s"), 3)

    @defer.inlineCallbacks
    def test_access_log_shows_prepared_hits(self):
        directory = temporary_directory(self)
        path = os.path.join(directory, "access.log")
        stack = cached_stack(self)
        stack.accel_site.stopFactory()
        stack.accel_site.access_log = path
        stack.accel_site.startFactory()
        stack.origin.handlers[b"/l"] = responder(body=b"12345", cache_control="max-age=60")
        port = stack.accel_port.getHost().port
        for method in (b"GET", b"GET", b"HEAD"):
            yield raw_request(port, b"%s /l HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % method)
        stack.accel_site.stopFactory()
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertIn('"GET /l HTTP/1.1" 200 5 ', lines[0])
        self.assertTrue(lines[0].endswith(" cache=miss"))
        self.assertIn('"GET /l HTTP/1.1" 200 5 ', lines[1])
        self.assertTrue(lines[1].endswith(" cache=hit"))
        self.assertIn('"HEAD /l HTTP/1.1" 200 - ', lines[2])
        self.assertTrue(lines[2].endswith(" cache=hit"))
        self.assertIn(f"origin={stack.origin_url}", lines[1])
