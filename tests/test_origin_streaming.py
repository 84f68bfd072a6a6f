"""Bodies stream through the origin client: a miss reaches the client while the origin still sends, and a
100 MiB upload to a slow origin keeps a real accel process's RSS flat."""

from __future__ import annotations


from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from tests.raw_origin import RawOrigin, WatchingClient, accel_in_front, cached, parts, request
from tests.support import raw_request, temporary_directory
from tests.test_process import AccelProcess

MIB = 1024 * 1024


class MissStreamingTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_1_mib_miss_reaches_the_client_before_the_origin_has_sent_it_all(self):
        held = []

        def answer(connection, _):
            connection.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n" % MIB)
            connection.write(b"a" * (MIB // 2))
            held.append(connection)  # the second half only once the client has seen part of the first

        origin = RawOrigin(self, answer)
        port = accel_in_front(self, origin.url, config=cached(self))

        def seen(data):
            if len(data) > 100_000 and held:
                held.pop().write(b"b" * (MIB // 2))

        client = WatchingClient(request(b"/1m"), seen)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        head, body = parts((yield client.closed))
        self.assertEqual(body, b"a" * (MIB // 2) + b"b" * (MIB // 2))
        head, body = parts((yield raw_request(port, request(b"/1m"))))
        self.assertIn(b"hit", head)  # and the tee stored it whole
        self.assertEqual(len(body), MIB)
        self.assertEqual(len(origin.requests), 1)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


class UploadRSSTests(unittest.TestCase):
    SIZE = 100 * MIB

    @defer.inlineCallbacks
    def test_100_mib_to_a_slow_origin_keeps_rss_flat(self):
        sink = _SlowSink()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: sink), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        cache_dir = temporary_directory(self, "accel-rss-")
        accel = AccelProcess(self, f"http://127.0.0.1:{port.getHost().port}/", cache_dir)
        yield accel.ready()
        pid = accel.transport.pid
        before = rss_kib(pid)
        peak = [before]
        sink.on_read = lambda: peak.append(rss_kib(pid)) if sink.reads % 16 == 0 else None
        sender = _Uploader(self.SIZE)
        # The origin reads on only when the client is held back or done (or, if nothing holds it back, 32 MiB ahead).
        sink.may_read = lambda: sender.paused or not sender.left or sender.sent - sink.received > 32 * MIB
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", accel.port), sender)
        response = yield sender.done
        self.assertIn(b"200 OK", response)
        self.assertEqual(sink.received, self.SIZE)
        self.assertLess(max(peak) - before, 8 * 1024, f"RSS {before} KiB before, {max(peak)} KiB at most")


class _SlowSink(Protocol):
    """An origin that reads a Content-Length upload one read at a time, each when ``may_read()``, then answers 200."""

    def __init__(self):
        self.head, self.received, self.expected, self.reads = b"", 0, None, 0
        self.on_read = lambda: None
        self.may_read = lambda: True

    def dataReceived(self, data):
        self.reads += 1
        self.on_read()
        if self.expected is None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            length = next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
            self.expected = int(length.split(b":")[1])
        self.received += len(data)
        if self.received >= self.expected:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        self.transport.pauseProducing()
        reactor.callLater(0, self.read_on)

    def read_on(self):
        if self.may_read():
            self.transport.resumeProducing()
        else:
            reactor.callLater(0, self.read_on)


@implementer(IPushProducer)
class _Uploader(Protocol):
    """Sends a POST with a ``size``-byte body as fast as its transport takes it; ``done`` fires with the reply."""

    CHUNK = b"u" * 65536

    def __init__(self, size: int):
        self.left, self.paused, self.response, self.done = size, False, b"", defer.Deferred()
        self.size, self.sent = size, 0

    def connectionMade(self):
        self.transport.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                             % self.size)
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self):
        self.paused = False
        while self.left and not self.paused:
            chunk = self.CHUNK[: self.left]
            self.left -= len(chunk)
            self.sent += len(chunk)
            self.transport.write(chunk)
        if not self.left and self.transport.producer is not None:
            self.transport.unregisterProducer()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.left = 0

    def dataReceived(self, data):
        self.response += data

    def connectionLost(self, reason):
        self.done.callback(self.response)
