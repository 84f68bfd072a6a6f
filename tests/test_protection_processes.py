"""Origin protection with real accel processes: one rate limit shared by two processes over one cache
directory, and a 1 GiB chunked upload cut at max_body_size while accel's memory stays flat."""

from __future__ import annotations

import os

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from tests.support import get, http_client, start_stack, temporary_directory
from tests.test_process import AccelProcess


def config_file(testcase, text: str) -> tuple[str, str]:
    """(a configuration file holding ``text``, a cache directory) in a directory removed after the test."""
    directory = temporary_directory(testcase, "accel-protect-")
    path = os.path.join(directory, "accel.toml")
    with open(path, "w") as f:
        f.write(text)
    return path, os.path.join(directory, "cache")


def memory_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


class SharedRateLimitTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_one_limit_for_two_processes(self):
        origin = start_stack(self)  # its origin; the in-process accel is not used
        path, cache_dir = config_file(self, "[server.rate_limit]\nrequests = 20\nper = 3600\n")
        processes = [AccelProcess(self, origin.origin_url + "/", cache_dir, ("--config", path)) for _ in range(2)]
        for process in processes:
            yield process.ready()
        agent = http_client(self)
        codes = {200: 0, 429: 0}
        for i in range(60):
            response, _ = yield get(agent, processes[i % 2].url + f"/item/{i}")
            codes[response.code] += 1
        # One bucket for the server: 20 requests in all, not 20 per process (refill: one per 3 minutes).
        self.assertEqual(codes, {200: 20, 429: 40})
        self.assertEqual(len(origin.origin.seen), 20)


def _send_buffer_ceiling() -> int:
    """The most bytes a TCP socket's send buffer holds on this machine (the maximum of net.ipv4.tcp_wmem)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


class _Sink(protocol.Protocol):
    """An origin that reads whatever it is sent and never answers."""

    def __init__(self, counts: dict):
        self.counts = counts

    def connectionMade(self):
        self.counts["connections"] += 1

    def dataReceived(self, data):
        self.counts["bytes"] += len(data)

    def connectionLost(self, reason):
        self.counts["closed"] += 1
        if self.counts["closed"] == self.counts["connections"] and not self.counts["gone"].called:
            self.counts["gone"].callback(None)


class _ChunkedUpload(protocol.Protocol):
    """Streams ``total`` bytes as a chunked request body, as fast as the connection takes them (never holding
    more than one chunk), and keeps what the server answers."""

    CHUNK = b"u" * (256 * 1024)

    def __init__(self, total: int):
        self.left, self.sent, self.paused, self.closed = total, 0, False, False
        self.response = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self):
        self.paused = False
        while not self.paused and not self.closed and self.left > 0:
            chunk = self.CHUNK[: self.left]
            self.left -= len(chunk)
            self.sent += len(chunk)
            self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if self.left == 0 and not self.closed:
            self.closed = True
            self.transport.write(b"0\r\n\r\n")

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.closed = True

    def dataReceived(self, data):
        self.response += data

    def connectionLost(self, reason):
        self.closed = True
        self.done.callback(self.response)


class BodyLimitTests(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_a_1_gib_chunked_upload_is_cut_at_max_body_size_with_flat_rss(self):
        limit = 768 << 20
        counts = {"connections": 0, "bytes": 0, "closed": 0, "gone": defer.Deferred()}
        factory = protocol.Factory.forProtocol(lambda: _Sink(counts))
        sink = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(sink.stopListening)
        path, cache_dir = config_file(self, f"[limits]\nmax_body_size = {limit}\n")
        accel = AccelProcess(self, f"http://127.0.0.1:{sink.getHost().port}/", cache_dir, ("--config", path))
        yield accel.ready()
        pid = accel.transport.pid
        before = memory_kib(pid, "VmRSS")
        upload = _ChunkedUpload(1 << 30)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", accel.port), upload)
        response = yield upload.done
        yield counts["gone"]  # the origin request was aborted: its connection closed
        peak = memory_kib(pid, "VmHWM")
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), (response[:400], accel.output[-3000:]))
        self.assertIn(b"\r\nConnection: close\r\n", response)
        self.assertLess(upload.sent, 1 << 30)  # accel stopped reading: the client could not send it all
        # What fitted streamed on to the origin, less what accel's socket still held when the origin request was
        # aborted (the kernel drops it with the reset: up to a send buffer, which on loopback can be megabytes) ...
        self.assertGreater(counts["bytes"], limit - _send_buffer_ceiling() - (1 << 20))
        self.assertLess(counts["bytes"], limit + (1 << 20))  # ... and nothing past the limit
        self.assertLess(peak - before, 64 * 1024, f"RSS {before} KiB at start, {peak} KiB at the peak")
        print(f"\n1 GiB chunked upload cut at {limit >> 20} MiB: accel RSS {before // 1024} MiB at start, "
              f"peak {peak // 1024} MiB; origin got {counts['bytes'] >> 20} MiB; client sent {upload.sent >> 20} MiB")
