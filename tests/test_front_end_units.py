"""Twisted pieces without sockets: the strict channel on a StringTransport, timers on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource

from accel.cache.collapse import Collapser
from accel.config import Limits
from accel.proxy.forwarding import IdleTimer
from accel.http.server import AccelSite


class Recorder(Resource):
    """Stands in for the proxy: records what reached it and answers 200."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def render(self, request):
        self.seen.append((request.method, request.uri))
        return b"ok"


def channel_for(limits=Limits()):
    resource = Recorder()
    site = AccelSite(resource, limits=limits, reactor=MemoryReactorClock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, resource


def feed(data: bytes, limits=Limits(), byte_by_byte=False):
    channel, transport, resource = channel_for(limits)
    if byte_by_byte:
        for i in range(len(data)):
            channel.dataReceived(data[i : i + 1])
    else:
        channel.dataReceived(data)
    return transport.value(), resource.seen


class ChannelTests(unittest.TestCase):
    def test_valid_request_reaches_the_resource_whole_or_byte_by_byte(self):
        for byte_by_byte in (False, True):
            out, seen = feed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n", byte_by_byte=byte_by_byte)
            self.assertEqual(seen, [(b"GET", b"/a?b=1")])
            self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"))
            self.assertIn(b"Server: accel", out)

    def test_obs_fold_is_400_byte_by_byte_too(self):
        for byte_by_byte in (False, True):
            out, seen = feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\t2\r\n\r\n", byte_by_byte=byte_by_byte)
            self.assertTrue(out.startswith(b"HTTP/1.1 400 Bad Request\r\n"))
            self.assertEqual(seen, [])

    def test_limits_come_from_the_site(self):
        limits = Limits(max_header_bytes=200, max_headers=3, max_target_length=20)
        out, _ = feed(b"GET /" + b"a" * 30 + b" HTTP/1.1\r\nHost: x\r\n\r\n", limits)
        self.assertTrue(out.startswith(b"HTTP/1.1 414 "))
        out, _ = feed(b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits)
        self.assertTrue(out.startswith(b"HTTP/1.1 431 "))
        out, _ = feed(b"GET / HTTP/1.1\r\nHost: x\r\nA: " + b"v" * 300 + b"\r\n\r\n", limits)
        self.assertTrue(out.startswith(b"HTTP/1.1 431 "))

    def test_refusal_closes_and_ignores_trailing_data(self):
        channel, transport, resource = channel_for()
        channel.dataReceived(b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(resource.seen, [])

    def test_request_with_body_is_dispatched_before_the_body_arrives(self):
        channel, transport, resource = channel_for()
        channel.dataReceived(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        self.assertEqual(resource.seen, [(b"POST", b"/up")])


class TimerTests(unittest.TestCase):
    def test_idle_timer_fires_only_after_silence(self):
        clock = Clock()
        fired = []
        timer = IdleTimer(clock, 10, lambda: fired.append(clock.seconds()))
        clock.advance(6)
        timer.touch()
        clock.advance(6)
        self.assertEqual(fired, [])
        clock.advance(4)
        self.assertEqual(fired, [16])

    def test_collapsed_waiters_are_released_by_the_leader_or_the_timeout(self):
        clock = Clock()
        collapser = Collapser(clock, timeout=5, max_waiters=2)
        self.assertIsNone(collapser.join("k"))  # the leader
        first, second = collapser.join("k"), collapser.join("k")
        third = collapser.join("k")
        self.assertTrue(third.called)  # over the cap: goes alone at once
        self.assertFalse(first.called or second.called)
        collapser.release("k")
        self.assertTrue(first.called and second.called)
        self.assertIsNone(collapser.join("k"))  # a new leader
        late = collapser.join("k")
        clock.advance(5)
        self.assertTrue(late.called)
        self.assertEqual(clock.getDelayedCalls(), [])
