"""The origin client without sockets: StringTransport connections, a fake clock, responses fed whole and byte by byte."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.protocol import Protocol
from twisted.trial import unittest
from twisted.web.client import ResponseDone

from accel.config import parse_origin
from accel.http.body import RequestBody
from accel.proxy.origin import IDLE_TIMEOUT, OriginBusy, OriginClient, OriginTimeout

FIELDS = [(b"Host", b"origin.test")]


class FakeEndpoint:
    """Connects at once over a StringTransport; keeps (protocol, transport) of each connection."""

    def __init__(self):
        self.made = []

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.made.append((protocol, transport))
        return succeed(protocol)


class Collect(Protocol):
    def __init__(self):
        self.data, self.reason = b"", None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason


def client(max_connections: int = 1):
    clock, endpoint = MemoryReactorClock(), FakeEndpoint()
    origin = parse_origin("http://origin.test/")
    return clock, endpoint, OriginClient(clock, origin, max_connections=max_connections, connect_timeout=5, endpoint=endpoint)


def results(d, body: Protocol | None = None):
    """What ``d`` fires with; a response's body goes to ``body`` (else it is released at once)."""
    out = []

    def fetched(result):
        result.response.deliverBody(body) if body is not None else result.release()
        return result

    d.addCallback(fetched)
    d.addBoth(out.append)
    return out


def lose(connection, transport):
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    transport.disconnecting = True
    connection.connectionLost(Failure(ConnectionDone()))


CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")


class ParsingTests(unittest.TestCase):
    def fetch_and_feed(self, pieces):
        clock, endpoint, origin = client()
        body = Collect()
        got = results(origin.fetch(b"GET", b"/x", FIELDS, timeout=10), body)
        connection, transport = endpoint.made[0]
        self.assertEqual(transport.value(), b"GET /x HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        for piece in pieces:
            connection.dataReceived(piece)
        return got[0].response, body, origin

    def test_chunked_whole_and_byte_by_byte(self):
        for pieces in ([CHUNKED], [CHUNKED[i:i + 1] for i in range(len(CHUNKED))]):
            response, body, origin = self.fetch_and_feed(pieces)
            self.assertEqual((response.code, response.fields), (200, [(b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")]))
            self.assertEqual(body.data, b"hello world")
            self.assertTrue(body.reason.check(ResponseDone))
            self.assertEqual(len(origin.idle), 1)  # back in the pool

    def test_interim_responses_go_to_their_callback(self):
        clock, endpoint, origin = client()
        hints = []
        got = results(origin.fetch(b"GET", b"/", FIELDS, timeout=10, interim=lambda *a: hints.append(a)), Collect())
        data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        for i in range(len(data)):
            endpoint.made[0][0].dataReceived(data[i:i + 1])
        self.assertEqual(hints, [(103, b"Early Hints", [(b"Link", b"</a>")])])
        self.assertEqual(got[0].response.code, 200)


class TimeoutTests(unittest.TestCase):
    def test_upload_progress_restarts_the_response_timeout(self):
        clock, endpoint, origin = client()
        body = RequestBody(None, None)
        got = results(origin.fetch(b"POST", b"/up", FIELDS, body, timeout=10))
        for _ in range(5):  # 40 s of a steady, slow upload: never 10 s without progress
            clock.advance(8)
            body.feed(b"0123456789")
        self.assertEqual(got, [])
        self.assertIn(b"Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n", endpoint.made[0][1].value())
        clock.advance(10)
        self.assertTrue(got[0].check(OriginTimeout))
        self.assertTrue(endpoint.made[0][1].disconnecting or endpoint.made[0][1].disconnected)

    def test_idle_connections_close_after_the_idle_timeout(self):
        clock, endpoint, origin = client()
        results(origin.fetch(b"GET", b"/", FIELDS, timeout=10))
        connection, transport = endpoint.made[0]
        connection.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(origin.idle, [connection])  # released at once, and without a body: kept
        clock.advance(IDLE_TIMEOUT)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(origin.idle, [])

    def test_requests_in_flight_share_one_delayed_call(self):
        clock, endpoint, origin = client(max_connections=3)
        first = results(origin.fetch(b"GET", b"/1", FIELDS, timeout=10))
        clock.advance(4)
        later = [results(origin.fetch(b"GET", b"/%d" % n, FIELDS, timeout=10)) for n in (2, 3)]
        self.assertEqual(len([call for call in clock.getDelayedCalls() if call.active()]), 1)
        clock.advance(6)  # the first one's deadline, exactly
        self.assertTrue(first[0].check(OriginTimeout))
        self.assertEqual(later, [[], []])
        clock.advance(4)  # theirs
        self.assertTrue(all(got[0].check(OriginTimeout) for got in later))
        self.assertEqual([call for call in clock.getDelayedCalls() if call.active()], [])

    def test_answered_requests_stop_their_timeout(self):
        clock, endpoint, origin = client()
        got = results(origin.fetch(b"GET", b"/", FIELDS, timeout=10))
        endpoint.made[0][0].dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(origin.deadlines.timers, set())
        clock.advance(10)
        self.assertEqual(got[0].response.code, 204)
        origin.close()
        self.assertEqual([call for call in clock.getDelayedCalls() if call.active()], [])


class CallbackTests(unittest.TestCase):
    """``OriginClient.request``: fetch's callbacks without a Deferred."""

    def test_answered_once_with_the_response(self):
        clock, endpoint, origin = client()
        answered, failed = [], []
        origin.request(b"GET", b"/", FIELDS, timeout=10, answered=answered.append, failed=failed.append)
        endpoint.made[0][0].dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        clock.advance(10)
        self.assertEqual(([fetched.response.code for fetched in answered], failed), ([204], []))

    def test_cancelled_request_fails_with_cancelled_error_and_gives_its_connection_up(self):
        clock, endpoint, origin = client()
        answered, failed = [], []
        pending = origin.request(b"GET", b"/", FIELDS, timeout=10, answered=answered.append, failed=failed.append)
        pending.cancel()
        pending.cancel()
        self.assertEqual(answered, [])
        self.assertEqual([failure.check(CancelledError) for failure in failed], [CancelledError])
        self.assertTrue(endpoint.made[0][1].disconnecting or endpoint.made[0][1].disconnected)
        self.assertEqual(origin.deadlines.timers, set())

    def test_a_callback_that_raises_is_logged_and_the_connection_freed(self):
        clock, endpoint, origin = client()

        def broken(fetched):
            raise RuntimeError("boom")

        origin.request(b"GET", b"/", FIELDS, timeout=10, answered=broken, failed=lambda failure: None)
        connection, transport = endpoint.made[0]
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(transport.disconnecting or transport.disconnected)  # a long body nobody reads: closed


class CapTests(unittest.TestCase):
    def test_requests_over_the_cap_wait_in_order_and_a_full_queue_is_busy(self):
        clock, endpoint, origin = client(max_connections=1)
        origin.queue_limit = 2
        first = results(origin.fetch(b"GET", b"/1", FIELDS, timeout=10), Collect())
        second = results(origin.fetch(b"GET", b"/2", FIELDS, timeout=10))
        third = results(origin.fetch(b"GET", b"/3", FIELDS, timeout=10))
        fourth = results(origin.fetch(b"GET", b"/4", FIELDS, timeout=10))
        self.assertTrue(fourth[0].check(OriginBusy))
        self.assertEqual(len(endpoint.made), 1)
        connection, transport = endpoint.made[0]
        transport.clear()
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(first[0].response.code, 200)
        self.assertEqual(transport.value(), b"GET /2 HTTP/1.1\r\nHost: origin.test\r\n\r\n")  # FIFO, same connection
        self.assertEqual((second, third), ([], []))

    def test_a_response_nobody_reads_frees_its_connection(self):
        clock, endpoint, origin = client(max_connections=1)
        d = origin.fetch(b"GET", b"/1", FIELDS, timeout=10)
        d.addCallback(lambda fetched: 1 / 0)  # a bug: the response is never read nor released
        d.addErrback(lambda f: f.trap(ZeroDivisionError))
        connection, transport = endpoint.made[0]
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\npartial")
        self.assertTrue(transport.disconnecting or transport.disconnected)
        lose(connection, transport)
        results(origin.fetch(b"GET", b"/2", FIELDS, timeout=10))
        self.assertEqual(len(endpoint.made), 2)  # the slot is free again

    def test_a_short_unwanted_body_is_read_and_the_connection_kept(self):
        clock, endpoint, origin = client(max_connections=1)
        results(origin.fetch(b"GET", b"/1", FIELDS, timeout=10))  # released as soon as its head is in
        connection, transport = endpoint.made[0]
        connection.dataReceived(b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(origin.idle, [])
        connection.dataReceived(b"sorry")
        self.assertEqual(origin.idle, [connection])
        self.assertFalse(transport.disconnecting)


    def test_a_response_nobody_asked_for_closes_the_connection(self):
        clock, endpoint, origin = client()
        got = results(origin.fetch(b"GET", b"/", FIELDS, timeout=10), Collect())
        connection, transport = endpoint.made[0]
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(got[0].response.code, 200)
        self.assertTrue(transport.disconnecting or transport.disconnected)


class ReuseRaceUnitTests(unittest.TestCase):
    def test_a_retry_waits_for_a_fresh_connection_rather_than_a_pooled_one(self):
        clock, endpoint, origin = client(max_connections=1)
        results(origin.fetch(b"GET", b"/1", FIELDS, timeout=10), Collect())
        first, first_transport = endpoint.made[0]
        first.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        retried = results(origin.fetch(b"GET", b"/2", FIELDS, timeout=10), Collect())  # on the pooled one
        queued = results(origin.fetch(b"GET", b"/3", FIELDS, timeout=10), Collect())
        lose(first, first_transport)  # the origin closed it as /2 went out
        second, second_transport = endpoint.made[1]
        self.assertTrue(second_transport.value().startswith(b"GET /3 "))  # the waiter took the free slot
        second.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(queued[0].response.code, 204)
        self.assertTrue(second_transport.disconnecting)  # not reused for the retry: closed to make room
        lose(second, second_transport)
        third, third_transport = endpoint.made[2]
        self.assertTrue(third_transport.value().startswith(b"GET /2 "))
        third.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(retried[0].response.code, 204)
