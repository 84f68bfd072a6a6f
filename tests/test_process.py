"""accel as operators run it: a real `twistd -n accel` process, killed with SIGKILL mid-write."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile

from click.testing import CliRunner
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest
from twisted.web import server

from accel.cli import main
from tests.support import TWISTD, RawClient, get, http_client, start_stack, until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AccelProcess:
    """``twistd -n accel`` in a child process, on a port of its own."""

    def __init__(self, testcase, origin_url: str, cache_dir: str):
        self.port = free_port()
        self.process = subprocess.Popen(
            TWISTD + ["--nodaemon", "--pidfile=", "accel",
             "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--origin", origin_url, "--cache-dir", cache_dir],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        testcase.addCleanup(self.kill)

    @defer.inlineCallbacks
    def ready(self):
        """Fires once the child accepts connections."""
        for _ in range(2000):
            probe = RawClient(b"")
            try:
                yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=1), probe)
            except Exception:
                if self.process.poll() is not None:
                    raise AssertionError("accel exited early") from None
                yield _wait(0.01)
                continue
            probe.transport.loseConnection()
            return
        raise AssertionError("accel never started listening")

    def kill(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _wait(seconds: float):
    """A short pause between connection attempts to a process that is still starting."""
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class CrashTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_kill_9_mid_write_leaves_nothing_that_can_be_served(self):
        cache_dir = tempfile.mkdtemp(prefix="accel-crash-")
        self.addCleanup(shutil.rmtree, cache_dir, True)
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
        accel.kill()  # SIGKILL while the body is being written to the cache
        yield client.done

        restarted = AccelProcess(self, stack.origin_url + "/", cache_dir)
        yield restarted.ready()
        response, body = yield get(http_client(self), restarted.url + "/big", headers={b"host": b"example.test"})
        self.assertEqual(len(body), 4_000_000)
        self.assertEqual(body[:1], b"y")  # from the origin, not a half entry
        self.assertEqual(len(stack.origin.seen), 2)
        self.assertIn("fwd=uri-miss", response.headers.getRawHeaders(b"cache-status")[0].decode())
        restarted.kill()
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
