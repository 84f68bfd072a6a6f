"""The reverse proxy end to end: a real origin on loopback, accel in front, real clients."""

from __future__ import annotations


from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from twisted.web.client import FileBodyProducer

from accel.config import Config, Route, parse_origin
from tests.support import RawClient, get, http_client, next_turn, raw_request, start_stack, turns, until


class ForwardingTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_every_method_reaches_the_origin_with_its_body(self):
        stack = start_stack(self)
        agent = http_client(self)
        from io import BytesIO

        for method in (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"PROPFIND"):
            body = FileBodyProducer(BytesIO(b"payload")) if method in (b"POST", b"PUT", b"PATCH", b"PROPFIND") else None
            response, data = yield get(agent, stack.url + "/m?x=1", method=method, body=body)
            self.assertEqual(response.code, 200, method)
        seen = [(s.method, s.uri, s.body) for s in stack.origin.seen]
        self.assertEqual(seen[0], (b"GET", b"/m?x=1", b""))
        self.assertEqual(seen[2], (b"POST", b"/m?x=1", b"payload"))
        self.assertEqual([s[0] for s in seen], [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"PROPFIND"])

    @defer.inlineCallbacks
    def test_connections_to_the_origin_are_pooled(self):
        stack = start_stack(self)
        agent = http_client(self)
        for i in range(10):
            response, _ = yield get(agent, stack.url + f"/n{i}")
            self.assertEqual(response.code, 200)
        self.assertEqual(len(stack.origin.seen), 10)
        self.assertEqual(stack.origin_site.connections, 1)

    @defer.inlineCallbacks
    def test_concurrent_connections_per_origin_are_capped(self):
        stack = start_stack(self, max_connections=2)
        agent = http_client(self)
        waiting = [get(agent, stack.url + "/hang") for _ in range(4)]
        yield until(lambda: len(stack.origin.seen) >= 2)
        yield turns(20)
        self.assertEqual(len(stack.origin.seen), 2)  # the other two wait for a free connection
        for request in list(stack.origin.pending):
            request.write(b"done")
            request.finish()
        stack.origin.pending.clear()
        yield until(lambda: len(stack.origin.seen) == 4)
        for request in stack.origin.pending:
            request.write(b"done")
            request.finish()
        results = yield defer.gatherResults(waiting)
        self.assertEqual([r[1] for r in results], [b"done"] * 4)
        self.assertLessEqual(stack.origin_site.connections, 2)

    @defer.inlineCallbacks
    def test_repeated_fields_keep_all_values_both_ways(self):
        stack = start_stack(self)

        def handler(request):
            request.responseHeaders.setRawHeaders(b"x-multi", [b"a", b"b"])
            request.responseHeaders.setRawHeaders(b"set-cookie", [b"one=1", b"two=2"])
            return b"ok"

        stack.origin.handlers[b"/multi"] = handler
        response, _ = yield get(http_client(self), stack.url + "/multi", headers={b"x-req": [b"1", b"2"]})
        self.assertEqual(stack.origin.seen[0].header(b"x-req"), [b"1", b"2"])
        self.assertEqual(response.headers.getRawHeaders(b"x-multi"), [b"a", b"b"])
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"one=1", b"two=2"])

    @defer.inlineCallbacks
    def test_hop_by_hop_fields_are_removed_both_ways(self):
        stack = start_stack(self)

        def handler(request):
            request.setHeader(b"connection", b"x-origin-secret")
            request.setHeader(b"x-origin-secret", b"s")
            request.setHeader(b"keep-alive", b"timeout=5")
            request.setHeader(b"x-kept", b"k")
            return b"ok"

        stack.origin.handlers[b"/hop"] = handler
        payload = (
            b"GET /hop HTTP/1.1\r\nHost: example.test\r\nConnection: x-client-secret\r\nX-Client-Secret: c\r\n"
            b"Keep-Alive: 300\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nUpgrade: h2c\r\nX-Kept: k\r\n\r\n"
        )
        data = yield raw_request(stack.accel_port.getHost().port, payload, timeout=2)
        seen = stack.origin.seen[0]
        for name in (b"x-client-secret", b"keep-alive", b"te", b"proxy-authorization", b"upgrade"):
            self.assertEqual(seen.header(name), [], name)
        self.assertEqual(seen.header(b"x-kept"), [b"k"])
        head = data.split(b"\r\n\r\n")[0].lower()
        self.assertIn(b"x-kept: k", head)
        self.assertNotIn(b"x-origin-secret", head)
        self.assertNotIn(b"keep-alive: timeout", head)

    @defer.inlineCallbacks
    def test_forwarded_fields_and_via(self):
        stack = start_stack(self)
        yield get(http_client(self), stack.url + "/f", headers={b"x-forwarded-for": b"6.6.6.6", b"via": b"1.0 edge"})
        seen = stack.origin.seen[0]
        self.assertEqual(seen.header(b"x-forwarded-for"), [b"127.0.0.1"])  # the client is not a trusted proxy
        self.assertEqual(seen.header(b"x-forwarded-host"), [f"127.0.0.1:{stack.accel_port.getHost().port}".encode()])
        self.assertEqual(seen.header(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(seen.header(b"host"), [stack.origin_url.split("//")[1].encode()])
        self.assertEqual(seen.header(b"via"), [b"1.0 edge, 1.1 accel"])
        self.assertEqual(len(seen.header(b"x-forwarded-server")), 1)

    @defer.inlineCallbacks
    def test_trusted_proxy_keeps_the_client_chain(self):
        import ipaddress

        config = Config(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
        stack = start_stack(self, config=config)
        yield get(http_client(self), stack.url + "/f", headers={b"x-forwarded-for": b"203.0.113.9"})
        self.assertEqual(stack.origin.seen[0].header(b"x-forwarded-for"), [b"203.0.113.9, 127.0.0.1"])

    @defer.inlineCallbacks
    def test_an_ipv4_mapped_peer_matches_an_ipv4_network(self):
        import ipaddress

        config = Config(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
        stack = start_stack(self, config=config)
        try:
            dual = reactor.listenTCP(0, stack.accel_site, interface="::")  # IPv4 clients arrive as ::ffff:a.b.c.d
        except CannotListenError:
            raise unittest.SkipTest("no IPv6 on this host") from None
        self.addCleanup(dual.stopListening)
        request = b"GET /f HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n"
        response = yield raw_request(dual.getHost().port, request)
        self.assertTrue(response.startswith(b"HTTP/1.1 200"), response)
        self.assertEqual(stack.origin.seen[0].header(b"x-forwarded-for"), [b"203.0.113.9, 127.0.0.1"])

    @defer.inlineCallbacks
    def test_a_unix_socket_peer_is_trusted_only_when_configured(self):
        import ipaddress
        import tempfile

        request = b"GET /f HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n"
        loopback = (ipaddress.ip_network("127.0.0.0/8"),)
        for config, expected in (
            (Config(trusted_proxies=loopback), b"unknown"),  # not 127.0.0.1, so not trusted
            (Config(trusted_proxies=loopback, trusted_unix_peers=True), b"203.0.113.9, unknown"),
        ):
            stack = start_stack(self, config=config)
            path = tempfile.mktemp(prefix="accel-", suffix=".sock")
            listening = reactor.listenUNIX(path, stack.accel_site)
            self.addCleanup(listening.stopListening)
            client = RawClient(request)
            yield connectProtocol(UNIXClientEndpoint(reactor, path), client)
            response = yield client.closed
            self.assertTrue(response.startswith(b"HTTP/1.1 200"), response)
            seen = stack.origin.seen[0]
            self.assertEqual(seen.header(b"x-forwarded-for"), [expected])
            self.assertEqual(seen.header(b"x-forwarded-port"), [])  # a UNIX socket has no port

    @defer.inlineCallbacks
    def test_preserve_host(self):
        stack = start_stack(self, preserve_host=True)
        yield get(http_client(self), stack.url + "/p", headers={b"host": b"www.example.test"})
        self.assertEqual(stack.origin.seen[0].header(b"host"), [b"www.example.test"])

    @defer.inlineCallbacks
    def test_prefix_routes_and_exclusions(self):
        stack = start_stack(self)
        base = stack.origin_url
        routes = (
            Route(prefix="/", origin=parse_origin(base + "/main/")),
            Route(prefix="/api/users/", origin=parse_origin(base + "/users/")),
            Route(prefix="/api/users/private/"),
        )
        stack2 = start_stack(self, routes=routes)
        stack2.origin = stack.origin
        agent = http_client(self)
        for path in ("/api/users/42?x=1", "/index.html"):
            yield get(agent, stack2.url + path)
        response, _ = yield get(agent, stack2.url + "/api/users/private/x")
        self.assertEqual(response.code, 404)
        # stack2 fronts its own origin; both routes point at the first stack's origin
        self.assertEqual([s.uri for s in stack.origin.seen], [b"/users/42?x=1", b"/main/index.html"])

    @defer.inlineCallbacks
    def test_proxy_pass_reverse_rewrites_location_and_cookies(self):
        stack = start_stack(self)
        routes = (Route(prefix="/shop/", origin=parse_origin(stack.origin_url + "/app/")),)
        front = start_stack(self, routes=routes)
        origin_url = stack.origin_url

        def handler(request):
            request.setResponseCode(302)
            request.setHeader(b"location", f"{origin_url}/app/cart".encode())
            request.setHeader(b"content-location", b"/app/cart.html")
            request.setHeader(b"set-cookie", b"sid=1; Path=/app/; Domain=127.0.0.1; HttpOnly")
            return b""

        stack.origin.handlers[b"/app/login"] = handler
        response, _ = yield get(http_client(self), front.url + "/shop/login", headers={b"host": b"www.example.test"})
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"http://www.example.test/shop/cart"])
        self.assertEqual(response.headers.getRawHeaders(b"content-location"), [b"/shop/cart.html"])
        self.assertEqual(
            response.headers.getRawHeaders(b"set-cookie"), [b"sid=1; Path=/shop/; Domain=www.example.test; HttpOnly"]
        )


class FailureTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_refused_origin_is_502(self):
        port = reactor.listenTCP(0, _Nothing(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        stack = start_stack(self, routes=(Route(prefix="/", origin=parse_origin(f"http://127.0.0.1:{number}/")),))
        response, body = yield get(http_client(self), stack.url + "/x")
        self.assertEqual(response.code, 502)
        self.assertIn(b"502 Bad Gateway", body)

    @defer.inlineCallbacks
    def test_slow_origin_is_504(self):
        stack = start_stack(self, response_timeout=0.2)
        response, _ = yield get(http_client(self), stack.url + "/hang")
        self.assertEqual(response.code, 504)

    @defer.inlineCallbacks
    def test_no_route_is_404_and_error_documents_replace_pages(self):
        import os
        import tempfile

        fd, path = tempfile.mkstemp(suffix=".html")
        os.write(fd, b"<h1>We are down for a moment</h1>")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        stack = start_stack(self)
        routes = (Route(prefix="/only/", origin=parse_origin(stack.origin_url + "/")),)
        front = start_stack(self, config=Config(error_documents={404: path}), routes=routes)
        response, body = yield get(http_client(self), front.url + "/elsewhere")
        self.assertEqual(response.code, 404)
        self.assertEqual(body, b"<h1>We are down for a moment</h1>")
        self.assertEqual(stack.origin.seen, [])

    @defer.inlineCallbacks
    def test_body_breaking_off_aborts_the_client_connection(self):
        stack = start_stack(self)
        data = yield raw_request(
            stack.accel_port.getHost().port, b"GET /truncate HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5
        )
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"200", head.split(b"\r\n")[0])
        self.assertIn(b"content-length: 1000", head.lower())
        self.assertLess(len(body), 1000)  # short and cut: the client can tell it is incomplete

    @defer.inlineCallbacks
    def test_client_disconnect_cancels_the_origin_request(self):
        stack = start_stack(self)
        port = stack.accel_port.getHost().port
        from tests.support import RawClient

        client = RawClient(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield until(lambda: stack.origin.pending)
        origin_request = stack.origin.pending[0]
        gone = origin_request.notifyFinish()
        client.transport.loseConnection()
        yield self.assertFailure(gone, ConnectionLost)  # the origin saw its connection aborted


class StreamingTests(unittest.TestCase):
    SIZE = 96 * 1024 * 1024

    @defer.inlineCallbacks
    def test_large_download_to_a_slow_client_is_not_buffered(self):
        stack = start_stack(self)
        producers = []
        from tests.support import BigBody

        original_start = BigBody.start

        def tracking_start(self_):
            producers.append(self_)
            original_start(self_)

        self.patch(BigBody, "start", tracking_start)
        client = _SlowReader(b"GET /big/%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % self.SIZE)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", stack.accel_port.getHost().port), client)
        max_in_flight = 0
        while not client.done.called:
            yield turns(1)
            if producers:
                max_in_flight = max(max_in_flight, producers[0].sent - client.received)
            client.read_some()
        self.assertGreaterEqual(client.received, self.SIZE)
        # Only socket buffers and a few chunks sit between origin and client, never the body.
        self.assertLess(max_in_flight, 24 * 1024 * 1024)

    @defer.inlineCallbacks
    def test_large_upload_to_a_slow_origin_is_not_buffered(self):
        sink = _SlowSink()
        factory = Factory.forProtocol(lambda: sink)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        origin = parse_origin(f"http://127.0.0.1:{port.getHost().port}/")
        stack = start_stack(self, routes=(Route(prefix="/", origin=origin),))
        sender = _Uploader(self.SIZE)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", stack.accel_port.getHost().port), sender)
        max_in_flight = 0
        while not sender.done.called:
            yield next_turn()
            max_in_flight = max(max_in_flight, sender.sent - sink.received)
        self.assertGreaterEqual(sink.received, self.SIZE)
        self.assertIn(b"200 OK", sender.response)
        self.assertLess(max_in_flight, 24 * 1024 * 1024)


class _SlowSink(Protocol):
    """An origin that reads a chunked upload one read per reactor turn, then answers 200."""

    def __init__(self):
        self.received = 0
        self.tail = b""

    def dataReceived(self, data):
        self.received += len(data)
        self.tail = (self.tail + data)[-16:]
        if self.tail.endswith(b"0\r\n\r\n"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        self.transport.pauseProducing()
        reactor.callLater(0, self.transport.resumeProducing)


class _SlowReader(Protocol):
    """A client that reads only when told to, so accel's writes to it back up."""

    def __init__(self, payload: bytes):
        self.payload, self.received, self.done = payload, 0, defer.Deferred()
        self.head_seen = False

    def connectionMade(self):
        self.transport.write(self.payload)
        self.transport.pauseProducing()

    def dataReceived(self, data):
        self.received += len(data)
        self.transport.pauseProducing()

    def read_some(self):
        if not self.done.called:
            self.transport.resumeProducing()

    def connectionLost(self, reason):
        self.done.callback(None)


class _Uploader(Protocol):
    """Sends a large chunked POST as fast as the connection takes it."""

    def __init__(self, size: int):
        self.left, self.sent, self.done, self.paused = size, 0, defer.Deferred(), False
        self.response = b""

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.transport.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        chunk = b"y" * 65536
        while self.left > 0 and not self.paused:
            self.transport.write(b"10000\r\n" + chunk + b"\r\n")
            self.left -= len(chunk)
            self.sent += len(chunk)
        if self.left <= 0 and not getattr(self, "ended", False):
            self.ended = True
            self.transport.write(b"0\r\n\r\n")
            self.transport.unregisterProducer()

    def stopProducing(self):
        self.left = 0

    def dataReceived(self, data):
        self.response += data

    def connectionLost(self, reason):
        self.done.callback(None)


class _Nothing(Factory):
    pass
