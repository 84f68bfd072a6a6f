"""DispatchingReactor's direct read path and the listening ports' accept loop, on a reactor of their own (not the
one the other tests run on) driven a turn at a time, with real sockets on 127.0.0.1."""

from __future__ import annotations

import socket

from twisted.internet import protocol
from twisted.internet.error import ConnectionDone
from twisted.trial import unittest

from accel.http.listening import accept_in_batches
from accel.http.reactor import DispatchingReactor


class Recording(protocol.Protocol):
    """Keeps what it receives; b"boom" makes it raise (a bug in a protocol)."""

    def connectionMade(self):
        self.factory.made.append(self)
        self.received = b""
        self.lost = None

    def dataReceived(self, data):
        if b"boom" in data:
            raise ZeroDivisionError("a bug in the protocol")
        self.received += data
        self.transport.write(b"ok:" + data)

    def connectionLost(self, reason):
        self.lost = reason


class RecordingFactory(protocol.Factory):
    protocol = Recording

    def __init__(self):
        self.made = []
        self.refuse_next = False

    def buildProtocol(self, addr):
        if self.refuse_next:
            self.refuse_next = False
            raise ValueError("a bug in the factory")
        return super().buildProtocol(addr)


class ReactorCase(unittest.TestCase):
    def setUp(self):
        self.reactor = DispatchingReactor()
        self.factory = RecordingFactory()
        self.port = accept_in_batches(self.reactor.listenTCP(0, self.factory, interface="127.0.0.1"))
        self.clients = []
        self.addCleanup(self.close)

    def close(self):
        for client in self.clients:
            client.close()
        for made in self.factory.made:
            if made.lost is None:
                made.transport.abortConnection()
        self.turn(lambda: all(made.lost is not None for made in self.factory.made))
        self.reactor.removeAll()
        self.port.socket.close()
        self.reactor._poller.close()
        self.reactor.waker.connectionLost(None)

    def turn(self, until, limit: int = 200) -> None:
        """Run the reactor a turn at a time until ``until()`` holds."""
        for _ in range(limit):
            if until():
                return
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.01)
        self.assertTrue(until())

    def connect(self) -> socket.socket:
        client = socket.create_connection(self.port.socket.getsockname(), timeout=5)
        self.clients.append(client)
        return client

    def reply(self, client: socket.socket, size: int) -> bytes:
        client.setblocking(False)
        got = b""

        def arrived():
            nonlocal got
            try:
                got += client.recv(65536)
            except BlockingIOError:
                pass
            return len(got) >= size

        self.turn(arrived)
        return got


class DirectReadTests(ReactorCase):
    def test_bytes_reach_the_protocol_and_the_peers_close_is_connection_done(self):
        client = self.connect()
        client.sendall(b"hello")
        self.assertEqual(self.reply(client, 8), b"ok:hello")
        client.close()
        made = self.factory.made[0]
        self.turn(lambda: made.lost is not None)
        self.assertEqual(made.received, b"hello")
        self.assertIsInstance(made.lost.value, ConnectionDone)

    def test_a_protocol_that_raises_loses_its_connection_is_logged_and_the_loop_goes_on(self):
        broken, sound = self.connect(), self.connect()
        self.turn(lambda: len(self.factory.made) == 2)
        broken.sendall(b"boom")
        self.turn(lambda: self.factory.made[0].lost is not None)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        broken.settimeout(5)
        self.assertEqual(broken.recv(10), b"")  # that connection was closed
        sound.sendall(b"still")
        self.assertEqual(self.reply(sound, 8), b"ok:still")
        self.assertIsNone(self.factory.made[1].lost)


class AcceptTests(ReactorCase):
    def test_connections_waiting_together_are_accepted_in_one_turn(self):
        for _ in range(5):
            self.connect()
        self.reactor.doIteration(1)
        self.assertEqual(len(self.factory.made), 5)
        self.assertEqual(len({made.transport.sessionno for made in self.factory.made}), 5)

    def test_a_factory_that_raises_is_logged_and_accepting_goes_on(self):
        self.factory.refuse_next = True
        self.connect()
        self.turn(lambda: self.flushLoggedErrors(ValueError))
        client = self.connect()
        client.sendall(b"next")
        self.assertEqual(self.reply(client, 7), b"ok:next")

    def test_an_accept_error_goes_to_twisteds_accept_loop(self):
        port = self.port
        aborted = []

        class AbortingOnce:
            """The listening socket, whose first accept fails as an aborted connection does."""

            def __init__(self, real):
                self.real = real

            def _accept(self):
                if not aborted:
                    aborted.append(True)
                    raise ConnectionAbortedError()
                return self.real._accept()

            def __getattr__(self, name):
                return getattr(self.real, name)

        real = port.socket
        port.socket = AbortingOnce(real)
        self.addCleanup(setattr, port, "socket", real)
        client = self.connect()
        self.turn(lambda: self.factory.made)
        self.assertEqual(aborted, [True])
        client.sendall(b"in")
        self.assertEqual(self.reply(client, 5), b"ok:in")
