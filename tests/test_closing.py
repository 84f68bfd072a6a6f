"""Closing client connections, through real sockets: after a fast hit a plain TCP connection is closed at once
(no writability round), and every byte of the response arrives before the orderly close — with pipelined
requests behind a ``Connection: close``, on HTTP/1.0, and with a response larger than the socket buffers,
which Twisted's transport finishes sending before it closes."""

from __future__ import annotations

import socket
import struct

from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.trial import unittest

from accel.http.listening import AcceptedConnection
from accel.http.server import AccelSite
from tests.support import until
from tests.test_cache_e2e import cached_stack, responder
from tests.test_connection import LARGE_FAST_BODY, FakeFastHits, Recorder, statuses
from tests.test_fast_hits import counted_fast_hits


class Client(protocol.Protocol):
    """Sends ``payload``, keeps what arrives and how the connection ended; ``hold`` defers reading until
    ``release``, so the server's send buffer fills."""

    def __init__(self, payload: bytes, hold: bool = False):
        self.payload = payload
        self.hold = hold
        self.parts: list[bytes] = []
        self.ended = defer.Deferred()

    def connectionMade(self):
        if self.hold:
            self.transport.pauseProducing()
        self.transport.write(self.payload)

    def release(self):
        self.transport.resumeProducing()

    def dataReceived(self, data):
        self.parts.append(data)

    def connectionLost(self, reason):
        self.reason = reason
        self.ended.callback(None)

    @property
    def received(self) -> bytes:
        return b"".join(self.parts)


@defer.inlineCallbacks
def exchange(port: int, payload: bytes, hold_until=None):
    """(all the server sent, the Failure that ended the connection); with ``hold_until``, the client reads
    nothing until that predicate holds."""
    client = Client(payload, hold_until is not None)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    if hold_until is not None:
        yield until(hold_until)
        client.release()
    yield client.ended
    return client.received, client.reason


_TCP_INFO_SEGS_IN = 140  # offset of tcpi_segs_in in Linux's struct tcp_info (after tcpi_segs_out)


def segments_received(sock: socket.socket) -> int:
    """How many TCP segments ``sock``'s kernel has received on this connection (Linux's TCP_INFO)."""
    return struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232), _TCP_INFO_SEGS_IN)[0]


class ImmediateCloseTests(unittest.TestCase):
    """HTTPConnection on a TCP transport (Twisted's ``tcp.Server``, or accel's ``AcceptedConnection``, which
    closes without a ``shutdown`` first) over a socket pair."""

    def connection(self, transport_type=tcp.Server):
        """(site, connection, its ``transport_type`` transport, the client's end: a blocking socket)."""
        site = AccelSite(Recorder(), reactor=reactor, fast_hits=FakeFastHits())
        listening = socket.create_server(("127.0.0.1", 0))
        theirs = socket.create_connection(listening.getsockname())
        ours, address = listening.accept()
        listening.close()
        self.addCleanup(theirs.close)
        theirs.settimeout(5)
        connection = site.buildProtocol(None)
        transport = transport_type(ours, connection, address, None, 1, reactor)
        connection.makeConnection(transport)
        return site, connection, transport, theirs

    def test_a_fast_hit_with_connection_close_is_closed_before_the_next_turn(self):
        site, connection, transport, theirs = self.connection()
        connection.dataReceived(b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(transport.disconnected)
        self.assertEqual(site.connections, set())
        self.assertNotIn(transport, reactor.getReaders() + reactor.getWriters())
        received = b""
        while chunk := theirs.recv(65536):
            received += chunk
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"))
        self.assertTrue(received.endswith(b"\r\n\r\nfast body"))

    def test_a_fast_hit_with_connection_close_leaves_with_its_fin_in_one_segment(self):
        # Sent with MSG_MORE and the stream ended, the response and the FIN travel together, as nginx's TCP_CORK
        # makes them: the client takes one segment, not two (what its kernel counts, TCP_INFO's tcpi_segs_in).
        site, connection, transport, theirs = self.connection(AcceptedConnection)
        before = segments_received(theirs)
        connection.dataReceived(b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := theirs.recv(65536):
            received += chunk
        self.assertTrue(received.endswith(b"\r\n\r\nfast body"))
        self.assertEqual(segments_received(theirs) - before, 1)

    def test_a_large_fast_hit_goes_to_the_socket_and_is_closed_at_once(self):
        # A body sent after its header section goes straight to the socket as well, the FIN with it: nothing
        # waits for the reactor, and the connection closes in the same turn.
        site, connection, transport, theirs = self.connection(AcceptedConnection)
        connection.dataReceived(b"GET /fast-large HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(transport.disconnected)
        received = b""
        while chunk := theirs.recv(1 << 20):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: %d" % len(LARGE_FAST_BODY), head)
        self.assertTrue(body == LARGE_FAST_BODY)

    def test_the_response_has_left_before_a_close_that_resets(self):
        # A client that sends more after its Connection: close request (RFC 9112 §9.6 says it must not) has
        # those bytes unread when accel closes, and the kernel answers the close with a reset, dropping what it
        # still holds to send: the response and its FIN must have left before.
        site, connection, transport, theirs = self.connection(AcceptedConnection)
        theirs.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")  # (still in accel's socket, unread)
        connection.dataReceived(b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(transport.disconnected)
        received = b""
        try:
            while chunk := theirs.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        self.assertEqual(statuses(received), [b"200"])
        self.assertTrue(received.endswith(b"\r\n\r\nfast body"))

    def test_a_kept_connection_is_answered_at_once(self):
        # Without Connection: close, nothing is held back for a FIN that is not coming.
        site, connection, transport, theirs = self.connection(AcceptedConnection)
        connection.dataReceived(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertFalse(transport.disconnected)
        received = b""
        while not received.endswith(b"fast body"):
            received += theirs.recv(65536)
        self.assertEqual(statuses(received), [b"200"])

    def test_the_close_waits_until_the_parser_is_done_with_what_follows(self):
        site, connection, transport, theirs = self.connection()
        connection.dataReceived(b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.disconnected)
        self.assertEqual(site.resource.seen, [])
        received = b""
        while chunk := theirs.recv(65536):
            received += chunk
        self.assertEqual(statuses(received), [b"200"])

    @defer.inlineCallbacks
    def test_a_general_path_response_arrives_whole_before_the_close(self):
        site, connection, transport, theirs = self.connection()
        connection.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        site.resource.finish_slow()  # the general path's writes
        yield until(lambda: transport.disconnected)
        received = b""
        while chunk := theirs.recv(65536):
            received += chunk
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"slow done", received)
        self.assertTrue(received.endswith(b"\r\n0\r\n\r\n"))  # the last chunk: the response is whole


class ClosingOverSocketsTests(unittest.TestCase):
    @defer.inlineCallbacks
    def stack(self, body: bytes = b"x" * 1024, **settings):
        """A stack whose /r is answered by the fast path; returns it, its port and the list of fast answers."""
        stack = cached_stack(self, **settings)
        stack.origin.handlers[b"/r"] = responder(body=body, cache_control="max-age=600")
        port = stack.accel_port.getHost().port
        fast = counted_fast_hits(self, stack)
        for _ in range(10):  # stored, then brought into the memory tier by a hit
            yield exchange(port, b"GET /r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            if fast:
                break
        self.assertEqual(fast, [b"/r"])
        fast.clear()
        return stack, port, fast

    @defer.inlineCallbacks
    def test_connection_close_with_pipelined_requests_behind_it(self):
        stack, port, fast = yield self.stack()
        received, reason = yield exchange(port, b"GET /r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                                                b"GET /r HTTP/1.1\r\nHost: h\r\n\r\nGET /other HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(fast, [b"/r"])
        self.assertEqual(statuses(received), [b"200"])
        self.assertTrue(received.endswith(b"\r\n\r\n" + b"x" * 1024))
        self.assertTrue(reason.check(ConnectionDone))  # an orderly close, not a reset
        self.assertEqual(stack.accel_site.connections, set())

    @defer.inlineCallbacks
    def test_http_1_0_is_answered_whole_then_closed(self):
        stack, port, fast = yield self.stack()
        received, reason = yield exchange(port, b"GET /r HTTP/1.0\r\nHost: h\r\n\r\n")
        self.assertEqual(fast, [b"/r"])
        self.assertTrue(received.startswith(b"HTTP/1.0 200 OK\r\n"))
        self.assertTrue(received.endswith(b"\r\n\r\n" + b"x" * 1024))
        self.assertTrue(reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_a_response_larger_than_the_socket_buffers_arrives_whole_before_the_close(self):
        body = bytes(range(256)) * (1 << 12)  # 1 MiB, the memory tier's largest: more than the buffers hold
        stack, port, fast = yield self.stack(body)
        site = stack.accel_site
        # The connections accel accepts from now on inherit a small, fixed send buffer (on loopback the kernel
        # would otherwise take the whole response at once).
        stack.accel_port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)

        def buffered():  # the response fills the socket buffers and waits in the transport's, closing
            return any(c.transport.disconnecting and (c.transport._tempDataLen or c.transport.dataBuffer)
                       for c in site.connections)

        received, reason = yield exchange(port, b"GET /r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                                          hold_until=buffered)
        self.assertEqual(fast, [b"/r"])
        head, _, got = received.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: %d" % len(body), head)
        self.assertEqual(len(got), len(body))
        self.assertTrue(got == body)
        self.assertTrue(reason.check(ConnectionDone))
