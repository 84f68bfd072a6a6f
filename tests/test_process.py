"""accel as operators run it: a real `twistd -n accel` process, killed with SIGKILL mid-write."""

from __future__ import annotations

import os
import re

from click.testing import CliRunner
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.trial import unittest
from twisted.web import server

from accel.cli.main import main
from tests.support import TWISTD, get, http_client, start_stack, temporary_directory, until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AccelProcess(ProcessProtocol):
    """``twistd -n accel`` in a child process listening on an ephemeral port, which its log announces."""

    ANNOUNCEMENT = re.compile(rb"AccelSite starting on (\d+)")

    def __init__(self, testcase, origin_url: str, cache_dir: str, extra: tuple[str, ...] = ()):
        self.output = b""
        self.port: int | None = None
        self.listening: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        argv = TWISTD + ["--nodaemon", "--pidfile=", "accel", "--listen", "tcp:0:interface=127.0.0.1",
                         "--origin", origin_url, "--cache-dir", cache_dir, *extra]
        reactor.spawnProcess(self, argv[0], argv, env=os.environ.copy(), path=ROOT)
        testcase.addCleanup(self.kill)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        found = self.ANNOUNCEMENT.search(self.output)
        if found and not self.listening.called:
            self.port = int(found.group(1))
            self.listening.callback(self.port)

    def processEnded(self, reason) -> None:
        if not self.listening.called:
            self.listening.errback(AssertionError(f"accel exited before listening:\n{self.output.decode()}"))
        self.ended.callback(None)

    def ready(self) -> defer.Deferred:
        """Fires once the child listens (the log line comes after the port is bound)."""
        return self.listening

    def kill(self) -> defer.Deferred:
        """SIGKILL the child; fires once it is gone."""
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        return self.ended

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class CrashTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_kill_9_mid_write_leaves_nothing_that_can_be_served(self):
        cache_dir = temporary_directory(self, "accel-crash-")
        stack = start_stack(self)  # the origin; this in-process accel is not used

        def half_then_stall(request):
            request.setHeader(b"cache-control", b"max-age=600")
            request.setHeader(b"content-length", b"4000000")
            if len(stack.origin.seen) == 1:
                request.write(b"x" * 2_000_000)  # the first time: half the body, then nothing
                return server.NOT_DONE_YET
            return b"y" * 4_000_000

        stack.origin.handlers[b"/big"] = half_then_stall
        accel = AccelProcess(self, stack.origin_url + "/", cache_dir)
        yield accel.ready()
        client = _Counting(b"GET /big HTTP/1.1\r\nHost: example.test\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", accel.port), client)
        yield until(lambda: client.received > 1_000_000)
        yield accel.kill()  # SIGKILL while the body is being written to the cache
        yield client.done

        restarted = AccelProcess(self, stack.origin_url + "/", cache_dir)
        yield restarted.ready()
        response, body = yield get(http_client(self), restarted.url + "/big", headers={b"host": b"example.test"})
        self.assertEqual(len(body), 4_000_000)
        self.assertEqual(body[:1], b"y")  # from the origin, not a half entry
        self.assertEqual(len(stack.origin.seen), 2)
        self.assertIn("fwd=uri-miss", response.headers.getRawHeaders(b"cache-status")[0].decode())
        yield restarted.kill()
        verify = CliRunner().invoke(main, ["cache", "--cache-dir", cache_dir, "verify"])
        self.assertEqual(verify.exit_code, 0, verify.output)


class _Counting(Protocol):
    def __init__(self, payload: bytes):
        self.payload, self.received, self.done = payload, 0, defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        self.received += len(data)

    def connectionLost(self, reason):
        self.done.callback(None)
