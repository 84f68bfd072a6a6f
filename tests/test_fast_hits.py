"""One behaviour, two paths: the same requests answered by the connection's fast path (memory tier on) and by
the general path (bodies kept on disk, so every hit goes through ReverseProxy and the cache layer) give the
same status, fields (values of Date and Age aside), body, Cache-Status, access-log line, limits, error pages
and HSTS. Also: pipelined requests on one connection, a fast hit behind a slow miss."""

from __future__ import annotations

import os
import re
import time

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest
from twisted.web.server import NOT_DONE_YET

from accel.cache.fast import FastHits
from accel.config import CacheSettings, TLSSettings
from accel.http.connection import HTTPConnection
from tests.support import RawClient, get, raw_request, temporary_directory, until
from tests.test_cache_e2e import cached_stack, origin_hits, responder
from tests.test_tls import OffloadCase
from tests.tls_support import https_client

FIXED = time.time()
ON_DISK = {"memory_max_object_size": 4}  # bodies stay on disk: the fast path never answers


def counted_fast_hits(testcase, stack) -> list:
    """The targets the connections of ``stack`` answer on the fast path from now on."""
    if not hasattr(testcase, "fast_answers"):
        testcase.fast_answers = answers = {}
        original = HTTPConnection.answer_fast

        def answer_fast(connection, message):
            done = original(connection, message)
            if done and connection.site in answers:
                answers[connection.site].append(message.target)
            return done

        testcase.patch(HTTPConnection, "answer_fast", answer_fast)
    return testcase.fast_answers.setdefault(stack.accel_site, [])


def prepare(testcase, **settings):
    stack = cached_stack(testcase, **settings)
    for layer in stack.accel_site.cache.layers:
        layer.clock = lambda: FIXED
    origin = stack.origin.handlers
    origin[b"/a"] = responder(body=b"a body", cache_control="max-age=600", etag='"v1"', x_extra="1")
    origin[b"/vary"] = responder(body=b"varied", cache_control="max-age=600", vary="Accept-Language")
    origin[b"/sts"] = responder(body=b"sts body", cache_control="max-age=600", strict_transport_security="max-age=1")
    origin[b"/tagged"] = responder(body=b"tagged", cache_control="max-age=600", surrogate_key="t1 t2",
                                   cdn_cache_control="max-age=900")
    path = os.path.join(temporary_directory(testcase), "access.log")
    stack.accel_site.stopFactory()
    stack.accel_site.access_log = path
    stack.accel_site.startFactory()
    return stack, path


def fields_and_body(response: bytes):
    """Status line, the fields with the values of Date, Age and X-Request-Id blanked (and Cache-Status's ttl, which is
    the freshness lifetime minus Age: a second may pass between the two stacks' answers), and the body."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = [re.sub(rb"^(Date|Age|X-Request-Id): .*", rb"\1: -", line) for line in lines[1:]]
    fields = [re.sub(rb"^(Cache-Status: .*; ttl=)-?\d+", rb"\1-", line) for line in fields]
    return lines[0], fields, body


def log_lines(path: str, stack) -> list[str]:
    with open(path) as f:
        lines = f.read().splitlines()
    # the timestamp, the duration (%D) and the origin's port differ between the two stacks
    return [re.sub(r"\[[^]]*\]", "[-]", re.sub(r'" (\d+) origin=\S+', '" - origin=-', line)) for line in lines]


@defer.inlineCallbacks
def warm(port: int):
    """Store the responses, and bring them into the memory tier (a response enters it on its first hit)."""
    for request in (b"GET /a", b"GET /vary", b"GET /sts", b"GET /tagged", b"GET /a?q=1", b"GET /vary",
                    b"GET /vary HTTP/1.1\r\nAccept-Language: de"):
        for _ in range(2):
            yield raw_request(port, request + (b"" if b"\r\n" in request else b" HTTP/1.1")
                              + b"\r\nHost: h\r\nConnection: close\r\n\r\n")

REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"HEAD /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.0\r\n\r\n",
    b"GET /a?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t/1\r\nReferer: http://r/\r\nConnection: close\r\n\r\n",
    b"GET /vary HTTP/1.1\r\nHost: h\r\nAccept-Language: de\r\nConnection: close\r\n\r\n",
    b"GET /vary HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /sts HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /tagged HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b'GET /a HTTP/1.1\r\nHost: h\r\nIf-None-Match: "v1"\r\nConnection: close\r\n\r\n',
    b'HEAD /a HTTP/1.1\r\nHost: h\r\nIf-None-Match: W/"x", "v1"\r\nConnection: close\r\n\r\n',
    b'GET /a HTTP/1.1\r\nHost: h\r\nIf-None-Match: "v0"\r\nConnection: close\r\n\r\n',
    b"GET /a HTTP/1.1\r\nHost: h\r\nIf-Modified-Since: Tue, 14 Nov 2090 22:13:20 GMT\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nIf-Modified-Since: Tue, 14 Nov 2000 22:13:20 GMT\r\nConnection: close\r\n\r\n",
    b'GET /vary HTTP/1.1\r\nHost: h\r\nIf-None-Match: "v1"\r\nConnection: close\r\n\r\n',
    b'GET /a HTTP/1.1\r\nHost: h\r\nIf-None-Match: "v1"\r\nPragma: x\r\nConnection: close\r\n\r\n',
    b"GET /a HTTP/1.1\r\nHost: H:80\r\nConnection: close\r\n\r\n",
    b"GET /status/404 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n",
    b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"TRACE /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
]
FAST = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16}  # the requests the fast path answers
# (3, without Host: the catch-all route keys by its origin, so it shares the entry of Host: h)


class OneBehaviourTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_fast_and_general_paths_answer_alike(self):
        fast, fast_log = prepare(self)
        general, general_log = prepare(self, **ON_DISK)
        for stack in (fast, general):
            port = stack.accel_port.getHost().port
            yield warm(port)
        answered = {"fast": counted_fast_hits(self, fast), "general": counted_fast_hits(self, general)}
        for i, request in enumerate(REQUESTS):
            one = yield raw_request(fast.accel_port.getHost().port, request)
            other = yield raw_request(general.accel_port.getHost().port, request)
            self.assertEqual(fields_and_body(one), fields_and_body(other), request[:60])
            if i in FAST:
                self.assertIn(b"Cache-Status: accel; hit; ttl=", one, request[:60])
        self.assertEqual(len(answered["fast"]), len(FAST))
        self.assertEqual(answered["general"], [])
        for stack in (fast, general):
            stack.accel_site.stopFactory()
        lines = log_lines(fast_log, fast)
        self.assertEqual(lines, log_lines(general_log, general))
        answered_lines = lines[-(len(REQUESTS) - 3):]  # 414, 431 and 400 are refused before a request exists
        self.assertEqual(sum(line.endswith("cache=hit") for line in answered_lines), len(FAST) + 1)  # + the general path's 304
        self.assertEqual(sum('" 304 - ' in line for line in answered_lines), 4)

    @defer.inlineCallbacks
    def test_vary_selects_the_matching_variant_on_the_fast_path(self):
        stack, _ = prepare(self)
        port = stack.accel_port.getHost().port
        yield warm(port)
        answered = counted_fast_hits(self, stack)
        hit = yield raw_request(port, b"GET /vary HTTP/1.1\r\nHost: h\r\nAccept-Language: de\r\nConnection: close\r\n\r\n")
        miss = yield raw_request(port, b"GET /vary HTTP/1.1\r\nHost: h\r\nAccept-Language: fr\r\nConnection: close\r\n\r\n")
        self.assertIn(b"; hit;", hit)
        self.assertIn(b"fwd=vary-miss", miss)
        self.assertEqual(answered, [b"/vary"])

    @defer.inlineCallbacks
    def test_the_fast_path_normalises_the_target_as_the_general_path_does(self):
        stack, _ = prepare(self)
        port = stack.accel_port.getHost().port
        yield warm(port)
        answered = counted_fast_hits(self, stack)
        for target in (b"/./a", b"/x/../a", b"/%61"):
            response = yield raw_request(port, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % target)
            self.assertIn(b"; hit;", response, target)
            self.assertTrue(response.endswith(b"a body"))
        unsafe = yield raw_request(port, b"GET /../a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        self.assertTrue(unsafe.startswith(b"HTTP/1.1 400 "), unsafe)
        self.assertEqual(answered, [b"/./a", b"/x/../a", b"/%61"])

    @defer.inlineCallbacks
    def test_a_purge_is_seen_by_the_fast_path(self):
        stack, _ = prepare(self)
        port = stack.accel_port.getHost().port
        request = b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        yield warm(port)
        answered = counted_fast_hits(self, stack)
        self.assertIn(b"; hit;", (yield raw_request(port, request)))
        self.assertEqual(answered, [b"/a"])
        stack.accel_site.cache.store.purge_url(stack.origin_url + "/a")  # the key names the origin
        self.assertIn(b"fwd=uri-miss", (yield raw_request(port, request)))


class RememberedAnswerTests(unittest.TestCase):
    """A fast hit's answer is remembered while its Age and ttl values hold (accel.cache.fast.FastHits._answers):
    the clock and the shared change counters end it, never a stale or a purged response."""

    def setUp(self):
        self.stack, _ = prepare(self)
        self.start = float(int(FIXED))  # a whole second: the origin's Date (whole seconds, not earlier) adds no age
        self.now = [self.start]
        for layer in self.stack.accel_site.cache.layers:
            layer.clock = lambda: self.now[0]
        self.port = self.stack.accel_port.getHost().port
        self.decided = []  # the targets FastHits decided (not answered from a remembered answer)
        original = FastHits._hit

        def decide(fast_hits, where, message, remember_as):
            self.decided.append(message.target)
            return original(fast_hits, where, message, remember_as)

        self.patch(FastHits, "_hit", decide)

    def at(self, offset: float, target: bytes = b"/a", fields: bytes = b""):
        self.now[0] = self.start + offset
        return raw_request(self.port, b"GET %s HTTP/1.1\r\nHost: h\r\n%sConnection: close\r\n\r\n" % (target, fields))

    @defer.inlineCallbacks
    def stored(self, target: bytes):
        for _ in range(2):  # stored, then brought into the memory tier
            yield self.at(0.0, target)
        del self.decided[:]

    @defer.inlineCallbacks
    def test_the_answer_is_remembered_until_its_age_would_change(self):
        yield self.stored(b"/a")
        answers = []
        for offset in (0.25, 0.5, 0.99, 1.01, 1.5, 2.01):
            answers.append(re.search(rb"\r\nAge: (\d+)\r\n", (yield self.at(offset))).group(1))
        self.assertEqual(answers, [b"0", b"0", b"0", b"1", b"1", b"2"])
        self.assertEqual(self.decided, [b"/a", b"/a", b"/a"])  # at 0.25, 1.01 and 2.01; the others remembered

    @defer.inlineCallbacks
    def test_a_response_is_not_served_from_memory_once_it_is_stale(self):
        self.stack.origin.handlers[b"/short"] = responder(body=b"short", cache_control="max-age=2")
        yield self.stored(b"/short")
        self.assertIn(b"; hit; ttl=0", (yield self.at(1.5, b"/short")))
        self.assertIn(b"; hit; ttl=0", (yield self.at(1.99, b"/short")))  # remembered
        self.assertNotIn(b"; hit", (yield self.at(2.0, b"/short")))  # stale at 2 s: the origin is asked
        self.assertEqual(origin_hits(self.stack, b"/short"), 2)

    @defer.inlineCallbacks
    def test_a_change_to_the_stored_response_ends_the_remembered_answer(self):
        yield self.stored(b"/a")
        yield self.at(0.1)
        yield self.at(0.2)
        self.assertEqual(self.decided, [b"/a"])
        # Another process replaces the entry: its bucket's generation moves in the shared counters.
        self.stack.accel_site.cache.store.epoch.changed([self.stack.origin_url + "/a"])
        self.assertIn(b"; hit;", (yield self.at(0.3)))
        self.assertEqual(self.decided, [b"/a", b"/a"])
        self.stack.accel_site.cache.store.purge_url(self.stack.origin_url + "/a")
        self.assertIn(b"fwd=uri-miss", (yield self.at(0.4)))

    @defer.inlineCallbacks
    def test_conditional_and_varying_requests_are_decided_each_time(self):
        yield self.stored(b"/vary")
        yield self.stored(b"/a")
        for _ in range(2):
            yield self.at(0.1, b"/vary")
            yield self.at(0.1, b"/a", b'If-None-Match: "v1"\r\n')
        self.assertEqual(self.decided, [b"/vary", b"/a", b"/vary", b"/a"])

    @defer.inlineCallbacks
    def test_a_response_varying_by_accept_encoding_is_remembered_per_value(self):
        self.stack.origin.handlers[b"/coded"] = lambda request: (
            request.setHeader(b"cache-control", b"max-age=600"), request.setHeader(b"vary", b"Accept-Encoding"),
            b"as " + (request.getHeader(b"accept-encoding") or b"nothing"))[-1]
        gzip = b"Accept-Encoding: gzip\r\n"
        for fields in (b"", gzip):
            for _ in range(2):
                yield self.at(0.0, b"/coded", fields)
        del self.decided[:]
        bodies = []
        for fields in (b"", gzip, b"", gzip, b"Accept-Encoding: br\r\n"):
            bodies.append((yield self.at(0.1, b"/coded", fields)).partition(b"\r\n\r\n")[2])
        self.assertEqual(bodies[:4], [b"as nothing", b"as gzip", b"as nothing", b"as gzip"])
        self.assertEqual(self.decided, [b"/coded", b"/coded", b"/coded"])  # the third: br, not stored (a miss)
        self.assertEqual(origin_hits(self.stack, b"/coded"), 3)

    @defer.inlineCallbacks
    def test_accept_encoding_values_are_remembered_apart(self):
        yield self.stored(b"/a")
        plain = yield self.at(0.1, b"/a")
        gzip = yield self.at(0.1, b"/a", b"Accept-Encoding: gzip\r\n")
        self.assertEqual(self.decided, [b"/a", b"/a"])
        self.assertEqual((yield self.at(0.2, b"/a")).partition(b"\r\n\r\n")[2], plain.partition(b"\r\n\r\n")[2])
        self.assertEqual((yield self.at(0.2, b"/a", b"Accept-Encoding: gzip\r\n")).partition(b"\r\n\r\n")[2],
                         gzip.partition(b"\r\n\r\n")[2])
        self.assertEqual(self.decided, [b"/a", b"/a"])


class PipeliningTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_fast_hit_behind_a_slow_miss_waits_its_turn(self):
        stack, _ = prepare(self)
        port = stack.accel_port.getHost().port
        yield warm(port)
        held = []

        def slow(request):
            held.append(request)
            request.setHeader(b"cache-control", b"max-age=60")
            return NOT_DONE_YET

        stack.origin.handlers[b"/slow"] = slow
        answered = counted_fast_hits(self, stack)
        client = RawClient(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                           b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        # The slow miss at the origin, and both hits behind it read too: queued, or (wrongly) answered. Without
        # that wait, "nothing answered yet" could hold only because accel had not read them yet.
        yield until(lambda: held and (answered or [len(c.queue) for c in stack.accel_site.connections] == [3]))
        self.assertEqual(answered, [])
        held[0].write(b"slow body")
        held[0].finish()
        response = yield client.closed
        self.assertEqual(re.findall(rb"HTTP/1\.1 (\d{3}) ", response), [b"200", b"200", b"200"])
        self.assertLess(response.index(b"slow body"), response.index(b"a body"))
        self.assertEqual(response.count(b"a body"), 2)
        self.assertEqual(answered, [b"/a", b"/a"])


class HSTSOnHitsTests(OffloadCase):
    @defer.inlineCallbacks
    def check_hsts_on_hits(self, **cache):
        settings = TLSSettings(hsts_max_age=600)
        stack = self.start(settings, cache=CacheSettings(dir=temporary_directory(self), **cache))
        stack.origin.handlers[b"/h"] = responder(body=b"hit me", cache_control="max-age=600")
        stack.origin.handlers[b"/own"] = responder(body=b"own body", cache_control="max-age=600",
                                                   strict_transport_security="max-age=1")
        answered = counted_fast_hits(self, stack)
        for path in ("/h", "/own"):
            for _ in range(3):  # a miss, a hit that brings it into the memory tier, a hit from there
                response, body = yield get(https_client(self, self.ca), self.url + path)
                self.assertEqual(response.headers.getRawHeaders(b"strict-transport-security"), [b"max-age=600"])
            self.assertIn(b"; hit;", response.headers.getRawHeaders(b"cache-status")[0])
        response, _ = yield get(https_client(self, self.ca), self.url + "/h", method=b"HEAD")
        self.assertEqual(response.headers.getRawHeaders(b"strict-transport-security"), [b"max-age=600"])
        plain = yield raw_request(stack.accel_port.getHost().port, b"GET /h HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        self.assertNotIn(b"Strict-Transport-Security", plain)
        return answered

    @defer.inlineCallbacks
    def test_hsts_on_fast_hits(self):
        answered = yield self.check_hsts_on_hits()
        self.assertEqual(answered, [b"/h", b"/h"])  # the HTTPS GET and HEAD; the origin's own field: general path

    @defer.inlineCallbacks
    def test_hsts_on_prepared_hits_of_the_general_path(self):
        answered = yield self.check_hsts_on_hits(**ON_DISK)
        self.assertEqual(answered, [])
