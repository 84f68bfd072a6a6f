"""The bench origin: a small Twisted web server that both proxies sit in front of.

Run as ``python bench/origin.py --port-file FILE``: it listens on 127.0.0.1 on an
ephemeral port and writes that port to FILE once it accepts connections.

Paths (the query string is ignored for routing, so ``/slow?r=7`` is ``/slow``):

- ``/1k``       1 KiB, ``Cache-Control: max-age=3600``
- ``/1m``       1 MiB, ``Cache-Control: max-age=3600``
- ``/1k-text``  1 KiB of text/plain (compressible), ``Cache-Control: max-age=3600``
- ``/nocache``  1 KiB, ``Cache-Control: no-store``
- ``/slow``     1 KiB, ``Cache-Control: max-age=3600``, answered after one second
- ``/big``      ``?size=N`` bytes (default 1 GiB), ``Cache-Control: no-store``,
                streamed with back-pressure so the origin itself stays small
- ``/_count?uri=U``  how many requests the origin received for the exact
                request-target ``U`` (path and query), as a decimal number
"""

import argparse
import os
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor
from twisted.web import resource, server

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
CACHEABLE = b"public, max-age=3600"
UNCACHEABLE = b"no-store"
SLOW_DELAY_S = 1.0
BIG_CHUNK = 256 * KIB


class BigProducer:
    """A pull producer writing ``size`` bytes of zeros, one chunk per resume."""

    def __init__(self, request, size):
        self.request = request
        self.remaining = size
        self.chunk = bytes(BIG_CHUNK)

    def resumeProducing(self):
        if self.remaining <= 0:
            return
        data = self.chunk[: min(self.remaining, BIG_CHUNK)]
        self.remaining -= len(data)
        self.request.write(data)
        if self.remaining <= 0:
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self):
        self.remaining = 0


class Origin(resource.Resource):
    """Routes every request by path; counts requests per request-target."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.counts = Counter()
        self.body_1k = b"k" * KIB
        self.body_1m = b"m" * MIB
        self.body_video = b"v" * (10 * MIB)
        self.down_until = 0.0
        self.text_1k = b"".join(b"line %04d of a compressible text\n" % i for i in range(40))[:KIB]

    def render_GET(self, request):
        url = urlsplit(request.uri)
        path = url.path
        if path == b"/_count":
            uri = parse_qs(url.query.decode()).get("uri", [""])[0]
            return self._static(request, b"%d" % self.counts[uri.encode()], UNCACHEABLE)
        if path == b"/_outage":  # the shield scenario: /shield/ answers 503 for this many seconds
            self.down_until = time.monotonic() + float(parse_qs(url.query.decode())["seconds"][0])
            return self._static(request, b"down\n", UNCACHEABLE)
        self.counts[request.uri] += 1
        if path.startswith(b"/shield/"):
            self.counts[b"/shield/*"] += 1
            return self._shield(request, path)
        if path == b"/1k":
            return self._static(request, self.body_1k, CACHEABLE)
        if path == b"/1k-text":
            self._static(request, self.text_1k, CACHEABLE)
            request.setHeader(b"content-type", b"text/plain")
            return self.text_1k
        if path == b"/1m":
            return self._static(request, self.body_1m, CACHEABLE)
        if path == b"/nocache":
            return self._static(request, self.body_1k, UNCACHEABLE)
        if path == b"/slow":
            return self._slow(request)
        if path == b"/big":
            return self._big(request, parse_qs(url.query.decode()))
        request.setResponseCode(404)
        return self._static(request, b"not found\n", UNCACHEABLE)

    def _shield(self, request, path):
        """The shield scenario's objects: pages (fresh 2 s, an ETag, Vary: Accept-Encoding, 304 on a match)
        and a 10 MiB video (fresh an hour, an ETag; Range is ignored, the whole object is sent)."""
        if time.monotonic() < self.down_until:
            request.setResponseCode(503)
            return self._static(request, b"origin down\n", UNCACHEABLE)
        if path == b"/shield/video":
            request.setHeader(b"etag", b'"video-1"')
            return self._static(request, self.body_video, b"max-age=3600")
        etag = b'"%s-1"' % path.rsplit(b"/", 1)[1]
        request.setHeader(b"etag", etag)
        request.setHeader(b"vary", b"Accept-Encoding")
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            request.setHeader(b"cache-control", b"max-age=2")
            return b""
        return self._static(request, self.body_1k, b"max-age=2")

    @staticmethod
    def _static(request, body, cache_control):
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"cache-control", cache_control)
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _slow(self, request):
        call = reactor.callLater(SLOW_DELAY_S, self._finish_slow, request)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return server.NOT_DONE_YET

    def _finish_slow(self, request):
        request.write(self._static(request, self.body_1k, CACHEABLE))
        request.finish()

    @staticmethod
    def _big(request, query):
        size = int(query.get("size", [GIB])[0])
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"cache-control", UNCACHEABLE)
        request.setHeader(b"content-length", b"%d" % size)
        if size == 0:
            return b""
        producer = BigProducer(request, size)
        request.registerProducer(producer, False)
        request.notifyFinish().addErrback(lambda _: producer.stopProducing())
        return server.NOT_DONE_YET


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True, help="where to write the bound port")
    args = parser.parse_args()
    site = server.Site(Origin())
    site.displayTracebacks = False
    port = reactor.listenTCP(0, site, backlog=1024, interface="127.0.0.1")
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port.getHost().port))
    os.replace(tmp, args.port_file)
    reactor.run()


if __name__ == "__main__":
    main()
