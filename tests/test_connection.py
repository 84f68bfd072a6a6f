"""The client connection on a StringTransport: requests fed whole, byte by byte and pipelined (as h11's tests
do), the strict checks, persistence, timeouts on a fake clock, and the order of answers when a fast hit
waits behind a slow request."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from accel.cache.fast import FastHit
from accel.config import Limits
from accel.http import connection as connection_module
from accel.http.connection import PIPELINE_LIMIT, SWEEP_TICK, valid_host
from accel.http.listening import with_backlog
from accel.http.server import AccelSite


class Recorder(Resource):
    """Stands in for the proxy: records what reached it; ``/slow...`` waits until ``finish_slow``."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []
        self.slow = []

    def render(self, request):
        self.seen.append((request.method, request.uri))
        if request.path.startswith(b"/slow"):
            self.slow.append(request)
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"text/plain")
        return b"general " + request.uri

    def finish_slow(self):
        request = self.slow.pop(0)
        request.write(b"slow done")
        request.finish()


LARGE_FAST_BODY = bytes(range(256)) * 256  # 64 KiB: sent after its header section, not joined to it


def fast_hit_for(target: bytes):
    """A FastHit as accel.cache.fast makes them, for ``/fast`` and ``/fast-large`` only."""
    body = {b"/fast": b"fast body", b"/fast-large": LARGE_FAST_BODY}.get(target)
    if body is None:
        return None
    section = b"Age: 0\r\nCache-Status: accel; hit; ttl=60\r\nContent-Length: %d\r\n" % len(body)
    return FastHit(200, b"OK", section, body, False, frozenset(), "http://origin", 0, 60, "/")


class FakeFastHits:
    not_plain = frozenset({b"cache-control", b"range"})
    conditional = frozenset({b"if-none-match"})

    def __init__(self):
        self.asked = []

    def answer(self, secure, message, peer):
        self.asked.append((message.target, message.conditional))
        return fast_hit_for(message.target)


class Connection:
    def __init__(self, limits=Limits(), fast=False):
        self.clock = MemoryReactorClock()
        self.resource = Recorder()
        self.fast = FakeFastHits() if fast else None
        self.site = AccelSite(self.resource, limits=limits, reactor=self.clock, fast_hits=self.fast)
        self.protocol = self.site.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def feed(self, data: bytes, byte_by_byte: bool = False) -> bytes:
        if byte_by_byte:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i : i + 1])
        else:
            self.protocol.dataReceived(data)
        return self.transport.value()


def statuses(out: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.[01] (\d{3}) ", out)


WAYS = (False, True)  # whole, byte by byte


class ParsingTests(unittest.TestCase):
    def test_one_request_whole_or_byte_by_byte(self):
        for byte_by_byte in WAYS:
            c = Connection()
            out = c.feed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 100 + b"\r\n\r\n", byte_by_byte)
            self.assertEqual(c.resource.seen, [(b"GET", b"/a?b=1")])
            self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
            self.assertIn(b"Server: accel\r\n", out)
            self.assertTrue(out.endswith(b"general /a?b=1"))
            self.assertFalse(c.transport.disconnecting)

    def test_pipelined_requests_are_answered_in_order(self):
        data = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
        for byte_by_byte in WAYS:
            c = Connection()
            out = c.feed(data, byte_by_byte)
            self.assertEqual(c.resource.seen, [(b"GET", b"/%d" % i) for i in range(5)])
            self.assertEqual([int(part[:1]) for part in out.split(b"general /")[1:]], list(range(5)))

    def test_any_split_of_a_pipelined_stream_gives_the_same_answers(self):
        stream = (b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /2 HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n"
                  b"GET /3?q HTTP/1.1\r\nHost: x\r\n\r\n")
        expected = Connection().feed(stream)
        rng = random.Random(12)
        for _ in range(50):
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 12)))
            c = Connection()
            for start, end in zip([0] + cuts, cuts + [len(stream)]):
                c.feed(stream[start:end])
            blank = lambda out: re.sub(rb"(Date|X-Request-Id): [^\r]*", b"", out)
            self.assertEqual(blank(c.transport.value()), blank(expected))
            self.assertEqual(c.resource.seen, [(b"GET", b"/1"), (b"GET", b"/2"), (b"GET", b"/3?q")])

    def test_any_split_of_a_chunked_body_delivers_the_same_bytes(self):
        body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (b"abc", b"0123456789" * 7, b"z"))
        stream = (b"POST /slow-up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
                  + b"0\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        rng = random.Random(7)
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 15)))
            c = Connection()
            received = []
            for start, end in zip([0] + cuts, cuts + [len(stream)]):
                c.feed(stream[start:end])
                if c.resource.slow and not received:
                    c.resource.slow[0].body.startProducing(SimpleNamespace(write=received.append))
            self.assertEqual(b"".join(received), b"abc" + b"0123456789" * 7 + b"z")
            c.resource.finish_slow()
            self.assertEqual(c.resource.seen, [(b"POST", b"/slow-up"), (b"GET", b"/after")])

    def test_a_body_streams_and_the_next_request_follows(self):
        for byte_by_byte in WAYS:
            c = Connection()
            c.feed(b"POST /slow-up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                   b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n", byte_by_byte)
            self.assertEqual(c.resource.seen, [(b"POST", b"/slow-up")])
            self.assertEqual(c.resource.slow[0].body.complete, True)
            c.resource.finish_slow()
            self.assertEqual(c.resource.seen, [(b"POST", b"/slow-up"), (b"GET", b"/next")])
            self.assertEqual(statuses(c.transport.value()), [b"200", b"200"])
            self.assertFalse(c.transport.disconnecting)

    def test_answering_before_the_body_is_complete_closes(self):
        c = Connection()
        c.feed(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        self.assertTrue(c.transport.disconnecting)
        c.feed(b"56789GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c.resource.seen, [(b"POST", b"/up")])

    def test_a_request_with_a_body_is_dispatched_before_the_body_arrives(self):
        c = Connection()
        c.feed(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        self.assertEqual(c.resource.seen, [(b"POST", b"/up")])

    def test_expect_100_continue_when_the_request_has_its_turn(self):
        c = Connection()
        out = c.feed(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
        c = Connection()
        c.feed(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
               b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        self.assertEqual(c.transport.value(), b"")  # not in the middle of the first response
        c.resource.finish_slow()
        out = c.transport.value()
        self.assertLess(out.index(b"slow done"), out.index(b"HTTP/1.1 100 Continue\r\n\r\n"))


BAD = {
    "Host with a space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "Host with a path": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "Host with userinfo": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "Host with a bad port": b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n",
    "Host with an open IP-literal": b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    "missing Host": b"GET / HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "chunk size not hex": b"POST /slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk size overflow": b"POST /slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
    "repeated Content-Length": b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "conflicting Content-Length": b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
    "Content-Length list": b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
    "Content-Length and Transfer-Encoding": (
        b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding and Content-Length": (
        b"POST /slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
    ),
    "a coding other than chunked": b"POST /slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
    "bare CR in a field": b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r2\r\n\r\n",
    "bare CR ending a field": b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
    "whitespace before the colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "HTTP/2.0 request line": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "HTTP/0.9 request line": b"GET /\r\n\r\n",
}


class StrictnessTests(unittest.TestCase):
    def test_each_malformed_request_is_400_and_closes(self):
        for name, data in BAD.items():
            for byte_by_byte in WAYS:
                c = Connection()
                out = c.feed(data + b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n", byte_by_byte)
                self.assertTrue(out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (name, byte_by_byte, out))
                self.assertIn(b"Connection: close\r\n", out)
                self.assertTrue(c.transport.disconnecting, name)
                self.assertNotIn((b"GET", b"/after"), c.resource.seen, name)
                if data.startswith(b"GET"):
                    self.assertEqual(c.resource.seen, [], name)

    def test_valid_hosts_pass(self):
        for host in (b"example.com", b"example.com:8080", b"127.0.0.1:80", b"[::1]:8443", b"[v1.x]", b"a_b.c",
                     b"xn--bcher-kva.example", b"%41.example"):
            c = Connection()
            out = c.feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            self.assertTrue(out.startswith(b"HTTP/1.1 200 "), host)

    def test_a_host_is_checked_however_many_were_seen_before(self):
        # (valid values are remembered, up to a bound: an invalid one never is)
        for round_ in range(2):
            for n in range(connection_module._SEEN_HOSTS_KEPT + 10):
                self.assertTrue(valid_host(b"host-%d.example" % n))
            self.assertLessEqual(len(connection_module._SEEN_HOSTS), connection_module._SEEN_HOSTS_KEPT)
            for host in (b"a b", b"[::1", b"x/y"):
                self.assertFalse(valid_host(host), (round_, host))
        c = Connection()
        c.feed(b"GET / HTTP/1.1\r\nHost: ok.example\r\n\r\n")
        out = c.feed(b"GET / HTTP/1.1\r\nHost: ok.example/x\r\n\r\n")
        self.assertEqual(statuses(out), [b"200", b"400"])

    def test_unknown_method_is_501(self):
        c = Connection()
        self.assertTrue(c.feed(b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 501 "))

    def test_limits_are_414_and_431(self):
        limits = Limits(max_header_bytes=200, max_headers=3, max_target_length=20)
        cases = [
            (b"GET /" + b"a" * 30 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", b"431"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: " + b"v" * 300 + b"\r\n\r\n", b"431"),
        ]
        for data, code in cases:
            for byte_by_byte in WAYS:
                c = Connection(limits)
                out = c.feed(data, byte_by_byte)
                self.assertTrue(out.startswith(b"HTTP/1.1 " + code + b" "), (data[:40], byte_by_byte, out))
                self.assertEqual(c.resource.seen, [])

    def test_a_header_section_that_never_ends_is_refused_before_it_is_buffered_whole(self):
        c = Connection(Limits(max_header_bytes=1000))
        c.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX: ")
        for _ in range(20):
            c.feed(b"v" * 100)
        self.assertTrue(c.transport.value().startswith(b"HTTP/1.1 431 "))


class PersistenceTests(unittest.TestCase):
    def test_connection_close_is_answered_and_closes(self):
        for byte_by_byte in WAYS:
            c = Connection()
            out = c.feed(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
                         byte_by_byte)
            self.assertIn(b"\r\nConnection: close\r\n", out)
            self.assertTrue(c.transport.disconnecting)
            self.assertEqual(c.resource.seen, [(b"GET", b"/a")])

    def test_http_1_0_closes_after_the_response(self):
        for request in (b"GET /a HTTP/1.0\r\n\r\n", b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"):
            c = Connection()
            out = c.feed(request)
            self.assertTrue(out.startswith(b"HTTP/1.0 200 OK\r\n"))
            self.assertTrue(c.transport.disconnecting)

    def test_keep_alive_stays_open(self):
        c = Connection()
        c.feed(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        self.assertFalse(c.transport.disconnecting)


class ProducerTests(unittest.TestCase):
    def test_a_full_write_buffer_pauses_a_general_path_response(self):
        c = Connection(fast=True)
        c.feed(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        request = c.resource.slow[0]
        paused = []
        producer = SimpleNamespace(pauseProducing=lambda: paused.append("pause"),
                                   resumeProducing=lambda: paused.append("resume"), stopProducing=lambda: None)
        request.registerProducer(producer, True)
        self.assertIs(c.transport.producer, c.protocol)  # the transport tells the connection...
        c.transport.producer.pauseProducing()  # (as a transport does when its buffer is full)
        c.transport.producer.resumeProducing()
        self.assertEqual(paused, ["pause", "resume"])  # ...which tells the response's producer
        request.unregisterProducer()
        c.resource.finish_slow()
        self.assertEqual(statuses(c.transport.value()), [b"200", b"200"])


class StoppingTests(unittest.TestCase):
    """AccelSite.stop_serving: idle keep-alive connections wait a short grace for one more request, which is
    answered with Connection: close; the stop is over when every connection has closed."""

    LIMITS = Limits(idle_timeout=60.0, header_timeout=10.0)

    def test_an_idle_connection_answers_one_more_request_with_connection_close(self):
        c = Connection(self.LIMITS)
        c.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        closed = c.site.stop_serving(grace=1.0)
        c.clock.advance(0.9)
        self.assertFalse(c.transport.disconnecting)
        out = c.feed(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(statuses(out), [b"200", b"200"])
        first, second = out[: out.rindex(b"HTTP/1.1 200")], out[out.rindex(b"HTTP/1.1 200") :]
        self.assertNotIn(b"Connection: close", first)
        self.assertIn(b"Connection: close\r\n", second)
        self.assertTrue(c.transport.disconnecting)
        self.assertFalse(closed.called)
        c.protocol.connectionLost(None)
        self.assertTrue(closed.called)

    def test_an_idle_connection_is_closed_after_the_grace_and_a_busy_one_goes_idle_with_it(self):
        c = Connection(self.LIMITS)
        c.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        c.site.stop_serving(grace=1.0)
        c.clock.advance(1.0)
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(statuses(c.transport.value()), [b"200"])
        fresh = Connection(self.LIMITS)  # a connection that has sent nothing yet: the same grace
        fresh.site.stop_serving(grace=1.0)
        fresh.clock.advance(1.0)
        self.assertTrue(fresh.transport.disconnecting)

    def test_with_no_connection_the_stop_is_over_at_once(self):
        site = AccelSite(Recorder(), reactor=MemoryReactorClock())
        self.assertTrue(site.stop_serving().called)


class TimeoutTests(unittest.TestCase):
    LIMITS = Limits(idle_timeout=60.0, header_timeout=10.0)

    def test_a_new_connection_that_sends_nothing_is_closed_after_the_header_timeout(self):
        c = Connection(self.LIMITS)
        c.clock.advance(9)
        self.assertFalse(c.transport.disconnecting)
        c.clock.advance(1)
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(c.transport.value(), b"")

    def test_an_idle_connection_is_closed(self):
        c = Connection(self.LIMITS)
        c.clock.advance(9)
        c.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        c.clock.advance(59)
        self.assertFalse(c.transport.disconnecting)
        c.clock.advance(1)
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(statuses(c.transport.value()), [b"200"])

    def test_a_slow_header_section_is_408(self):
        c = Connection(self.LIMITS)
        c.feed(b"GET /a HTTP/1.1\r\n")
        c.clock.advance(9)
        c.feed(b"Host: x\r\n")
        self.assertFalse(c.transport.disconnecting)
        c.clock.advance(1)
        self.assertTrue(c.transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(c.resource.seen, [])

    def test_a_header_section_split_after_an_idle_spell_is_timed_from_its_first_bytes(self):
        for pipelined in (False, True):
            c = Connection(self.LIMITS)
            first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            if pipelined:  # the next request's first bytes came with the first request
                c.feed(first + b"GET /b HTTP/1.1\r\n")
            else:
                c.feed(first)
                c.clock.advance(30)  # idle, well within idle_timeout
                c.feed(b"GET /b HTTP/1.1\r\n")
            c.clock.advance(9.5)
            self.assertFalse(c.transport.disconnecting, pipelined)
            c.clock.advance(0.5)
            self.assertEqual(statuses(c.transport.value()), [b"200", b"408"], pipelined)
            self.assertTrue(c.transport.disconnecting, pipelined)

    def test_a_request_being_answered_is_not_timed_out(self):
        c = Connection(self.LIMITS)
        c.feed(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        c.clock.advance(600)
        self.assertFalse(c.transport.disconnecting)
        c.resource.finish_slow()
        c.clock.advance(60)
        self.assertTrue(c.transport.disconnecting)

    def test_no_timer_left_after_the_connection_is_lost(self):
        c = Connection(self.LIMITS)
        c.protocol.connectionLost(None)
        self.assertEqual([call for call in c.clock.getDelayedCalls() if call.active()], [])

    def test_the_connections_of_a_site_share_one_timer(self):
        c = Connection(self.LIMITS)
        c.clock.advance(0.2)
        others = [c.site.buildProtocol(None) for _ in range(100)]
        for protocol in others:
            protocol.makeConnection(StringTransport())
        self.assertEqual(len([call for call in c.clock.getDelayedCalls() if call.active()]), 1)
        c.clock.advance(9.8)  # the first connection's deadline
        self.assertTrue(c.transport.disconnecting)
        self.assertFalse(any(protocol.transport.disconnecting for protocol in others))
        c.clock.advance(SWEEP_TICK)  # theirs (at 10.2) is met on the next tick
        self.assertTrue(all(protocol.transport.disconnecting for protocol in others))
        for protocol in [c.protocol, *others]:
            protocol.connectionLost(None)
        self.assertEqual([call for call in c.clock.getDelayedCalls() if call.active()], [])

    def test_while_the_site_listens_the_sweep_is_not_made_again_for_each_connection(self):
        c = Connection(self.LIMITS)
        c.site.doStart()  # (as a listening port does)
        sweep = c.site.deadlines.pending
        c.protocol.connectionLost(None)
        self.assertTrue(sweep.active())  # not cancelled with the last connection
        after = c.site.buildProtocol(None)
        after.makeConnection(StringTransport())
        self.assertIs(c.site.deadlines.pending, sweep)  # nor made again for the next one
        after.connectionLost(None)
        c.clock.advance(SWEEP_TICK)  # finding no connection, it stops by itself
        self.assertIsNone(c.site.deadlines.pending)
        self.assertEqual([call for call in c.clock.getDelayedCalls() if call.func == c.site.deadlines.sweep], [])
        c.site.doStop()

    def test_no_timer_left_once_the_site_stops_listening(self):
        for open_when_stopping in (False, True):
            c = Connection(self.LIMITS)
            c.site.doStart()
            if not open_when_stopping:
                c.protocol.connectionLost(None)
            c.site.doStop()
            if open_when_stopping:
                c.protocol.connectionLost(None)
            self.assertEqual([call for call in c.clock.getDelayedCalls() if call.active()], [], open_when_stopping)


class FastPathOrderTests(unittest.TestCase):
    def test_a_fast_hit_is_written_without_a_request(self):
        c = Connection(fast=True)
        out = c.feed(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c.resource.seen, [])
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\nServer: accel\r\nDate: "), out)
        self.assertTrue(out.endswith(b"Content-Length: 9\r\n\r\nfast body"))

    def test_a_fast_hit_behind_a_slow_request_waits_its_turn(self):
        for byte_by_byte in WAYS:
            c = Connection(fast=True)
            out = c.feed(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"HEAD /fast HTTP/1.1\r\nHost: x\r\n\r\n", byte_by_byte)
            self.assertEqual(out, b"")
            c.resource.finish_slow()
            out = c.transport.value()
            self.assertEqual(statuses(out), [b"200", b"200", b"200"])
            self.assertLess(out.index(b"slow done"), out.index(b"fast body"))
            self.assertEqual(out.count(b"fast body"), 1)  # not for HEAD
            self.assertEqual(c.resource.seen, [(b"GET", b"/slow")])

    def test_requests_with_complications_are_not_offered_to_the_fast_path(self):
        c = Connection(fast=True)
        c.feed(b"GET /fast HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n"
               b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
               b"GET /fast HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\n\r\n")
        self.assertEqual(c.fast.asked, [(b"/fast", True)])  # a conditional is the fast path's to decide
        self.assertEqual(c.resource.seen, [(b"GET", b"/fast"), (b"POST", b"/fast")])

    def test_connection_close_on_a_fast_hit(self):
        c = Connection(fast=True)
        out = c.feed(b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"))
        self.assertTrue(c.transport.disconnecting)

    def test_reading_stops_when_too_many_requests_wait(self):
        c = Connection()
        c.feed(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /q HTTP/1.1\r\nHost: x\r\n\r\n" * PIPELINE_LIMIT)
        self.assertEqual(c.transport.producerState, "paused")
        c.resource.finish_slow()
        self.assertEqual(c.transport.producerState, "producing")
        self.assertEqual(len(statuses(c.transport.value())), PIPELINE_LIMIT + 1)


class BacklogTests(unittest.TestCase):
    def test_a_backlog_is_added_unless_the_endpoint_sets_one(self):
        self.assertEqual(with_backlog("tcp:8080"), "tcp:8080:backlog=511")
        self.assertEqual(with_backlog("tcp6:port=80:interface=\\:\\:"), "tcp6:port=80:interface=\\:\\::backlog=511")
        self.assertEqual(with_backlog("tcp:8080:backlog=64"), "tcp:8080:backlog=64")
        self.assertEqual(with_backlog("unix:/run/accel.sock"), "unix:/run/accel.sock:backlog=511")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0")
