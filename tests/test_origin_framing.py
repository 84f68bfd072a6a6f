"""The origin client against raw loopback origins: every framing, connection reuse and its race, 1xx."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from accel.proxy.forwarding import Forwarder
from tests.raw_origin import RawOrigin, WatchingClient, accel_in_front, cached, parts, request
from tests.support import raw_request

CACHEABLE = b"Cache-Control: max-age=60\r\n"


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """(data, complete) of a chunked message body."""
    data = b""
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return data, False
        size = int(size_line, 16)
        if size == 0:
            return data, rest.startswith(b"\r\n")
        data += rest[:size]
        body = rest[size + 2:]


class FramingTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_content_length_responses_share_one_kept_alive_connection(self):
        origin = RawOrigin(self, lambda c, r: c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
        port = accel_in_front(self, origin.url)
        for _ in range(3):
            head, body = parts((yield raw_request(port, request(b"/a"))))
            self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"))
            self.assertEqual(body, b"hello")
        self.assertEqual(origin.connections, 1)
        self.assertEqual([r.nth for r in origin.requests], [1, 2, 3])

    @defer.inlineCallbacks
    def test_chunked_body_is_relayed_and_stored_without_its_trailer(self):
        def answer(connection, _):
            connection.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n" + CACHEABLE + b"\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
            )

        origin = RawOrigin(self, answer)
        port = accel_in_front(self, origin.url, config=cached(self))
        head, body = parts((yield raw_request(port, request(b"/c"))))
        self.assertNotIn(b"x-checksum", (head + body).lower())
        self.assertEqual(dechunk(body), (b"hello world", True))
        head, body = parts((yield raw_request(port, request(b"/c"))))
        self.assertIn(b"hit", head)
        self.assertNotIn(b"x-checksum", (head + body).lower())
        self.assertEqual(len(origin.requests), 1)

    @defer.inlineCallbacks
    def test_a_body_ended_by_a_clean_close_is_complete_and_stored(self):
        def answer(connection, _):
            connection.write(b"HTTP/1.1 200 OK\r\n" + CACHEABLE + b"\r\nall of it")
            connection.transport.loseConnection()

        origin = RawOrigin(self, answer)
        port = accel_in_front(self, origin.url, config=cached(self))
        head, body = parts((yield raw_request(port, request(b"/eof"))))
        self.assertEqual(dechunk(body), (b"all of it", True))
        head, body = parts((yield raw_request(port, request(b"/eof"))))
        self.assertIn(b"hit", head)
        self.assertEqual(body, b"all of it")
        self.assertEqual(len(origin.requests), 1)

    @defer.inlineCallbacks
    def test_a_body_ended_by_a_reset_is_neither_stored_nor_relayed_as_complete(self):
        origin_connections = []

        def answer(connection, r):
            connection.write(b"HTTP/1.1 200 OK\r\n" + CACHEABLE + b"\r\npart")
            origin_connections.append(connection)

        origin = RawOrigin(self, answer)
        port = accel_in_front(self, origin.url, config=cached(self))
        client = WatchingClient(request(b"/cut"), lambda data: b"part" in data and origin_connections[0].reset())
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        head, body = parts((yield client.closed))
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(dechunk(body), (b"part", False))  # cut off: no last chunk
        origin.answer = lambda c, r: c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole")
        head, body = parts((yield raw_request(port, request(b"/cut"))))
        self.assertEqual(body, b"whole")
        self.assertEqual(len(origin.requests), 2)  # the cut response was not stored

    @defer.inlineCallbacks
    def test_head_204_and_304_have_no_body_and_keep_the_connection(self):
        answers = {
            b"HEAD /h HTTP/1.1": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            b"GET /204 HTTP/1.1": b"HTTP/1.1 204 No Content\r\n\r\n",
            b"GET /304 HTTP/1.1": b'HTTP/1.1 304 Not Modified\r\nETag: "v"\r\n\r\n',
            b"GET /after HTTP/1.1": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter",
        }
        origin = RawOrigin(self, lambda c, r: c.write(answers[r.line]))
        port = accel_in_front(self, origin.url)
        head, body = parts((yield raw_request(port, request(b"/h", b"HEAD"))))
        self.assertIn(b"content-length: 10", head.lower())
        self.assertEqual(body, b"")
        head, body = parts((yield raw_request(port, request(b"/204"))))
        self.assertTrue(head.startswith(b"HTTP/1.1 204"))
        self.assertEqual(body, b"")
        head, body = parts((yield raw_request(port, request(b"/304", extra=b'If-None-Match: "v"\r\n'))))
        self.assertTrue(head.startswith(b"HTTP/1.1 304"))
        self.assertEqual(body, b"")
        head, body = parts((yield raw_request(port, request(b"/after"))))
        self.assertEqual(body, b"after")
        self.assertEqual(origin.connections, 1)
        self.assertEqual([r.nth for r in origin.requests], [1, 2, 3, 4])

    @defer.inlineCallbacks
    def test_connection_close_from_the_origin_is_honoured(self):
        def answer(connection, _):
            connection.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")

        origin = RawOrigin(self, answer)  # it does not close: accel must not reuse the connection anyway
        port = accel_in_front(self, origin.url)
        for _ in range(2):
            head, body = parts((yield raw_request(port, request(b"/close"))))
            self.assertEqual(body, b"ok")
        self.assertEqual(origin.connections, 2)
        self.assertEqual([r.nth for r in origin.requests], [1, 1])


class ReuseRaceTests(unittest.TestCase):
    """The origin closes a kept-alive connection just as accel sends the next request on it."""

    def setUp(self):
        def answer(connection, r):
            if r.nth == 1:
                connection.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:
                connection.transport.loseConnection()  # its idle timeout ran out as the request came

        self.origin = RawOrigin(self, answer)
        self.port = accel_in_front(self, self.origin.url)

    @defer.inlineCallbacks
    def test_an_idempotent_request_is_retried_once_on_a_fresh_connection(self):
        yield raw_request(self.port, request(b"/first"))
        head, body = parts((yield raw_request(self.port, request(b"/again"))))
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(body, b"ok")
        self.assertEqual([(r.line, r.connection) for r in self.origin.requests],
                         [(b"GET /first HTTP/1.1", 1), (b"GET /again HTTP/1.1", 1), (b"GET /again HTTP/1.1", 2)])

    @defer.inlineCallbacks
    def test_a_non_idempotent_request_is_not_retried(self):
        yield raw_request(self.port, request(b"/first"))
        head, _ = parts((yield raw_request(self.port, request(b"/order", b"POST"))))
        self.assertTrue(head.startswith(b"HTTP/1.1 502"))
        self.assertEqual([r.line for r in self.origin.requests], [b"GET /first HTTP/1.1", b"POST /order HTTP/1.1"])


class InterimResponseTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_103_early_hints_reach_the_client_first_and_are_not_stored(self):
        def answer(connection, _):
            connection.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\n" + CACHEABLE + b"Content-Length: 5\r\n\r\nhello"
            )

        origin = RawOrigin(self, answer)
        port = accel_in_front(self, origin.url, config=cached(self))
        first = yield raw_request(port, request(b"/page"))
        self.assertTrue(first.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"))
        self.assertTrue(first.endswith(b"\r\n\r\nhello"))
        second = yield raw_request(port, request(b"/page"))
        self.assertTrue(second.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertNotIn(b"103", second.split(b"\r\n\r\n")[0])
        self.assertEqual(len(origin.requests), 1)

    @defer.inlineCallbacks
    def test_100_continue_from_the_origin_is_not_taken_for_the_response(self):
        def answer(connection, r):
            connection.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(r.body), r.body))

        origin = RawOrigin(self, answer)
        port = accel_in_front(self, origin.url)
        upload = request(b"/up", b"POST", b"Expect: 100-continue\r\nContent-Length: 5\r\n") + b"hello"
        response = yield raw_request(port, upload)
        self.assertEqual(response.count(b"100 Continue"), 1)  # the front end's own, before the body was sent
        self.assertIn(b"HTTP/1.1 201 Created", response)
        self.assertTrue(response.endswith(b"\r\n\r\nhello"))
        self.assertIn(b"expect: 100-continue", origin.requests[0].head.lower())

    @defer.inlineCallbacks
    def test_an_unasked_101_is_502(self):
        origin = RawOrigin(self, lambda c, r: c.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"))
        port = accel_in_front(self, origin.url)
        head, _ = parts((yield raw_request(port, request(b"/ws"))))
        self.assertTrue(head.startswith(b"HTTP/1.1 502"))


class FailingCallbackTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_failing_callback_answers_500_and_frees_the_only_connection(self):
        origin = RawOrigin(self, lambda c, r: c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        port = accel_in_front(self, origin.url, max_connections=1)
        original = Forwarder.response_fields
        calls = []

        def fails_once(self_, *args):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug in a callback")
            return original(self_, *args)

        self.patch(Forwarder, "response_fields", fails_once)
        head, _ = parts((yield raw_request(port, request(b"/boom"))))
        self.assertTrue(head.startswith(b"HTTP/1.1 500"))
        self.flushLoggedErrors(RuntimeError)
        head, body = parts((yield raw_request(port, request(b"/next"))))
        self.assertEqual(body, b"ok")
