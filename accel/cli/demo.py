"""``accel demo``: a deliberately slow origin with accel in front, and two timed requests.

Everything runs in one process on 127.0.0.1 with ephemeral ports; the cache lives in a temporary directory
that is removed afterwards.
"""

from __future__ import annotations

import tempfile
import time

from twisted.internet import defer, task
from twisted.web import resource, server
from twisted.web.client import Agent, readBody

from accel.app import build_site
from accel.config import CacheSettings, Config, Route, parse_origin


class SlowOrigin(resource.Resource):
    """Answers every request after ``delay`` seconds with a small cacheable page."""

    isLeaf = True

    def __init__(self, reactor, delay: float):
        super().__init__()
        self.reactor, self.delay, self.requests = reactor, delay, 0

    def render_GET(self, request):
        self.requests += 1
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"public, max-age=60")
        body = b"Hello from the slow origin (request #%d)\n" % self.requests
        call = self.reactor.callLater(self.delay, lambda: (request.write(body), request.finish()))
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return server.NOT_DONE_YET


@defer.inlineCallbacks
def _run(reactor, delay: float, cache_dir: str):
    origin = SlowOrigin(reactor, delay)
    origin_port = reactor.listenTCP(0, server.Site(origin), interface="127.0.0.1")
    origin_url = f"http://127.0.0.1:{origin_port.getHost().port}/"
    config = Config(
        routes=(Route(prefix="/", origin=parse_origin(origin_url)),), cache=CacheSettings(dir=cache_dir)
    )
    site = build_site(config, reactor)
    accel_port = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"http://127.0.0.1:{accel_port.getHost().port}/hello".encode()
    print(f"slow origin at {origin_url} ({delay * 1000:.0f} ms per response); accel in front at {url.decode()}")
    agent = Agent(reactor)
    for attempt in ("first", "second"):
        started = time.monotonic()
        response = yield agent.request(b"GET", url)
        body = yield readBody(response)
        took = (time.monotonic() - started) * 1000
        status = (response.headers.getRawHeaders(b"cache-status") or [b"(no Cache-Status: cache not enabled)"])[0]
        print(f"{attempt} request: {response.code} in {took:7.1f} ms  Cache-Status: {status.decode()}")
        print(f"    body: {body.decode().strip()}")
    print(f"the origin answered {origin.requests} request(s)")
    yield accel_port.stopListening()
    yield origin_port.stopListening()
    yield site.close()


def run_demo(delay: float = 0.3) -> int:
    with tempfile.TemporaryDirectory(prefix="accel-demo-") as cache_dir:
        task.react(lambda reactor: _run(reactor, delay, cache_dir))
    return 0
