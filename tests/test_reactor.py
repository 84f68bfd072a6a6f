"""DispatchingReactor's direct read path and the listening ports' accept loop, on a reactor of their own (not the
one the other tests run on) driven a turn at a time, with real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import struct
import threading

from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError, ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from accel.http.listening import accept_in_batches
from accel.http.reactor import DispatchingReactor


class Recording(protocol.Protocol):
    """Keeps what it receives; b"boom" makes it raise (a bug in a protocol), b"bye" answers and closes at once
    (as HTTPConnection does when nothing is queued), b"wait" pauses reading."""

    def connectionMade(self):
        self.factory.made.append(self)
        self.received = b""
        self.lost = None

    def dataReceived(self, data):
        if b"boom" in data:
            raise ZeroDivisionError("a bug in the protocol")
        self.received += data
        if b"bye" in data:
            self.transport.socket.send(b"ok:" + data)
            self.transport.connectionLost(Failure(ConnectionDone()))
            return
        self.transport.write(b"ok:" + data)
        if b"wait" in data:
            self.transport.pauseProducing()
        if b"again" in data:
            self.factory.again()

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
        if self.port.connected:  # (disconnectAll closes it)
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


class BrokenListener:
    """A listening socket whose first accept fails in a way nothing expects."""

    def __init__(self, real):
        self.real = real
        self.failed = False

    def _accept(self):
        if not self.failed:
            self.failed = True
            raise ZeroDivisionError("a bug")
        return self.real._accept()

    def __getattr__(self, name):
        return getattr(self.real, name)


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

    def test_new_connections_are_accepted_by_the_port_without_the_reactors_generic_dispatch(self):
        generic = []
        self.reactor._doReadOrWrite = lambda *event: generic.append(event)
        self.connect()
        self.turn(lambda: self.factory.made)
        self.assertEqual(generic, [])

    def test_an_unexpected_accept_failure_is_logged_and_the_other_events_are_handled(self):
        sound = self.connect()
        self.turn(lambda: self.factory.made)
        real = self.port.socket
        self.port.socket = BrokenListener(real)
        self.addCleanup(setattr, self.port, "socket", real)
        self.connect()
        sound.sendall(b"same turn")
        self.turn(lambda: self.factory.made[0].received)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.reply(sound, 12), b"ok:same turn")
        self.turn(lambda: len(self.factory.made) == 2)  # and the connection is accepted on the next event

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


class RecordingPoller:
    """The reactor's epoll object, noting the descriptors registered with it."""

    def __init__(self, real):
        self.real = real
        self.registered = []

    def register(self, fd, events):
        self.registered.append(fd)
        return self.real.register(fd, events)

    def __getattr__(self, name):
        return getattr(self.real, name)


class FirstReadTests(ReactorCase):
    """What a client sent before its connection was accepted is read in the accepting turn, with the reactor's
    outcomes; the socket is watched afterwards, unless the connection is over by then or its protocol paused."""

    def setUp(self):
        super().setUp()
        self.poller = self.reactor._poller = RecordingPoller(self.reactor._poller)

    def sent_before_accept(self, data: bytes) -> socket.socket:
        client = self.connect()
        client.sendall(data)  # (on loopback, in the server's receive queue once sendall returns)
        return client

    def accept(self, count: int = 1) -> Recording:
        """The listening socket's turn (connections accepted and read in it): ``count`` made in all, the last one
        returned."""
        self.reactor.doIteration(1)
        self.assertEqual(len(self.factory.made), count)
        return self.factory.made[-1]

    def test_bytes_sent_before_accepting_reach_the_protocol_in_the_accepting_turn(self):
        client = self.sent_before_accept(b"early")
        made = self.accept()
        self.assertEqual(made.received, b"early")
        self.assertIn(made.transport.fileno(), self.poller.registered)  # and then watched for more
        client.sendall(b"more")
        self.assertEqual(self.reply(client, 15), b"ok:earlyok:more")

    def test_a_connection_answered_and_closed_on_its_first_bytes_never_enters_the_epoll_set(self):
        client = self.sent_before_accept(b"bye")
        made = self.accept()
        self.assertIsInstance(made.lost.value, ConnectionDone)
        self.assertEqual(self.poller.registered, [])
        client.settimeout(5)
        self.assertEqual(client.recv(100), b"ok:bye")
        self.assertEqual(client.recv(100), b"")

    def test_a_connection_with_nothing_sent_yet_is_watched_and_read_later(self):
        client = self.connect()
        made = self.accept()
        self.assertEqual(made.received, b"")
        self.assertEqual(self.poller.registered, [made.transport.fileno()])
        client.sendall(b"late")
        self.assertEqual(self.reply(client, 7), b"ok:late")

    def test_a_protocol_that_pauses_on_its_first_bytes_is_watched_once_it_resumes(self):
        client = self.sent_before_accept(b"wait")
        made = self.accept()
        self.assertEqual(self.poller.registered, [made.transport.fileno()])  # for its write, not for reading
        self.assertNotIn(made.transport, self.reactor.getReaders())
        self.assertEqual(self.reply(client, 7), b"ok:wait")
        made.transport.resumeProducing()
        self.assertIn(made.transport, self.reactor.getReaders())
        client.sendall(b"on")
        self.assertEqual(self.reply(client, 5), b"ok:on")

    def test_a_client_gone_before_accepting_is_connection_done_after_its_bytes(self):
        client = self.sent_before_accept(b"last words")
        client.shutdown(socket.SHUT_WR)
        made = self.accept()
        self.assertEqual(made.received, b"last words")  # the end of stream comes on the next read
        self.turn(lambda: made.lost is not None)
        self.assertIsInstance(made.lost.value, ConnectionDone)
        registered = list(self.poller.registered)
        silent = self.connect()
        silent.close()
        self.assertIsInstance(self.accept(2).lost.value, ConnectionDone)
        self.assertEqual(self.poller.registered, registered)  # (the silent one was never watched)

    def test_a_reset_before_accepting_is_connection_lost(self):
        client = self.connect()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        made = self.accept()
        self.assertIsInstance(made.lost.value, ConnectionLost)
        self.assertFalse(made.transport in self.reactor.getReaders())

    def test_connections_made_while_a_batch_is_read_wait_for_the_next_turn(self):
        """(A client whose connection is answered at once opens its next one: reading those in the same accept
        loop would keep the connections the reactor watches waiting.)"""
        self.factory.again = lambda: self.sent_before_accept(b"next")
        self.sent_before_accept(b"again")
        self.accept()
        self.assertEqual(self.factory.made[0].received, b"again")
        self.accept(2)
        self.assertEqual(self.factory.made[1].received, b"next")

    def test_a_protocol_that_raises_on_its_first_bytes_is_logged_and_closed_and_the_batch_goes_on(self):
        broken = self.sent_before_accept(b"boom")
        sound = self.sent_before_accept(b"fine")
        self.accept(2)
        broken_made, sound_made = self.factory.made
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIsInstance(broken_made.lost.value, ZeroDivisionError)
        broken.settimeout(5)
        self.assertEqual(broken.recv(10), b"")
        self.assertEqual(sound_made.received, b"fine")
        self.assertEqual(self.reply(sound, 7), b"ok:fine")


class LifeCycleTests(ReactorCase):
    """AcceptedConnection's own set-up and close keep Twisted's outcomes: the client sees what it would see from a
    tcp.Server, the protocol hears of the close once with the right reason, and the reactor forgets the socket."""

    def made(self, client_count: int = 1):
        clients = [self.connect() for _ in range(client_count)]
        self.turn(lambda: len(self.factory.made) == client_count)
        return clients, self.factory.made

    def watched(self, made) -> bool:
        reactor = self.reactor
        return made.transport in reactor._selectables.values() or made.transport in reactor.getWriters()

    def until_closed(self, client: socket.socket) -> bytes:
        """Everything the client receives until the end of the stream."""
        client.setblocking(False)
        got = []

        def ended():
            try:
                data = client.recv(1 << 20)
            except BlockingIOError:
                return False
            got.append(data)
            return not data

        self.turn(ended, limit=2000)
        return b"".join(got)

    def test_a_new_connection_is_watched_for_reading(self):
        _, (made,) = self.made()
        fd = made.transport.fileno()
        self.assertIs(self.reactor._selectables[fd], made.transport)
        self.assertIn(made.transport, self.reactor.getReaders())
        self.assertEqual((made.transport.connected, made.transport.disconnected), (1, 0))
        peer = made.transport.getPeer()
        self.assertEqual(peer, IPv4Address("TCP", "127.0.0.1", self.clients[0].getsockname()[1]))
        self.assertEqual(hash(peer), hash(IPv4Address("TCP", *self.clients[0].getsockname())))
        self.assertEqual(repr(peer), repr(IPv4Address("TCP", *self.clients[0].getsockname())))

    def test_an_immediate_orderly_close_ends_the_stream_and_forgets_the_socket(self):
        (client,), (made,) = self.made()
        made.transport.socket.send(b"bye")
        made.transport.connectionLost(Failure(ConnectionDone()))  # as HTTPConnection closes when nothing is queued
        self.assertIsInstance(made.lost.value, ConnectionDone)
        self.assertEqual((made.transport.connected, made.transport.disconnected), (0, 1))
        self.assertFalse(self.watched(made))
        self.assertEqual(self.until_closed(client), b"bye")  # a FIN after the bytes, not a reset

    def test_a_closed_connection_leaves_the_kernels_epoll_set(self):
        """(Closing the socket takes it out: accel makes no EPOLL_CTL_DEL of its own.)"""
        (client,), (made,) = self.made()
        fd = made.transport.fileno()
        self.assertIn(fd, self.epoll_set())
        made.transport.connectionLost(Failure(ConnectionDone()))
        self.assertNotIn(fd, self.epoll_set())

    def epoll_set(self) -> set[int]:
        """The descriptors the reactor's epoll instance watches, as the kernel lists them."""
        with open(f"/proc/self/fdinfo/{self.reactor._poller.fileno()}") as info:
            return {int(line.split()[1]) for line in info if line.startswith("tfd:")}

    def test_a_second_close_does_nothing(self):
        _, (made,) = self.made()
        calls = []
        made.connectionLost = lambda reason: (calls.append(reason), Recording.connectionLost(made, reason))
        made.transport.connectionLost(Failure(ConnectionDone()))
        made.transport.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(calls), 1)
        self.assertIsInstance(calls[0].value, ConnectionDone)

    def test_lose_connection_sends_what_is_queued_first(self):
        (client,), (made,) = self.made()
        payload = bytes(range(256)) * 40000  # ten megabytes: more than the socket's buffers hold
        made.transport.write(payload)
        made.transport.loseConnection()
        self.assertIsNone(made.lost)
        self.assertEqual(self.until_closed(client), payload)
        self.turn(lambda: made.lost is not None)
        self.assertIsInstance(made.lost.value, ConnectionDone)
        self.assertFalse(self.watched(made))

    def test_a_reset_by_the_peer_is_connection_lost(self):
        (client,), (made,) = self.made()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        self.turn(lambda: made.lost is not None)
        self.assertIsInstance(made.lost.value, (ConnectionLost, ConnectionDone))
        self.assertFalse(self.watched(made))

    def test_the_peers_close_is_connection_done_and_forgets_the_socket(self):
        (client,), (made,) = self.made()
        client.close()
        self.turn(lambda: made.lost is not None)
        self.assertIsInstance(made.lost.value, ConnectionDone)
        self.assertFalse(self.watched(made))

    def test_an_abort_resets_the_connection_and_drops_what_is_queued(self):
        (client,), (made,) = self.made()
        made.transport.write(b"x" * (10 << 20))
        made.transport.abortConnection()
        self.turn(lambda: made.lost is not None)
        self.assertIsInstance(made.lost.value, ConnectionAborted)
        self.assertFalse(self.watched(made))
        client.settimeout(5)
        with self.assertRaises(ConnectionResetError):
            while client.recv(1 << 20):
                pass

    def test_a_protocol_that_raises_is_closed_and_forgotten(self):
        (client,), (made,) = self.made()
        client.sendall(b"boom")
        self.turn(lambda: made.lost is not None)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertFalse(self.watched(made))
        self.assertEqual(self.until_closed(client), b"")

    def test_a_registered_producer_is_stopped_by_the_close(self):
        _, (made,) = self.made()
        producer = StoppedProducer()
        made.transport.registerProducer(producer, True)
        made.transport.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(producer.stopped)
        self.assertIsNone(made.transport.producer)

    def test_disconnecting_everything_closes_every_open_connection(self):
        clients, made = self.made(3)
        self.reactor.disconnectAll()  # what the reactor does as it stops
        for each in made:
            self.assertIsInstance(each.lost.value, ConnectionLost)
        self.assertEqual([self.until_closed(client) for client in clients], [b"", b"", b""])
        self.assertFalse(any(self.watched(each) for each in made))

    def test_a_descriptor_number_used_again_is_watched_again(self):
        for n in range(3):
            client = self.connect()
            self.turn(lambda: len(self.factory.made) == n + 1)
            client.sendall(b"%d" % n)
            self.assertEqual(self.reply(client, 4), b"ok:%d" % n)
            self.factory.made[-1].transport.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(self.until_closed(client), b"")
        self.assertEqual(len({made.lost.value.__class__ for made in self.factory.made}), 1)


@implementer(IPushProducer)
class StoppedProducer:
    stopped = False

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        self.stopped = True


class IPv6Tests(ReactorCase):
    def setUp(self):
        self.reactor = DispatchingReactor()
        self.factory = RecordingFactory()
        try:
            self.port = accept_in_batches(self.reactor.listenTCP(0, self.factory, interface="::1"))
        except CannotListenError:
            raise unittest.SkipTest("no IPv6 loopback here")
        self.clients = []
        self.addCleanup(self.close)

    def connect(self) -> socket.socket:
        client = socket.create_connection(self.port.socket.getsockname()[:2], timeout=5)
        self.clients.append(client)
        return client

    def test_an_ipv6_connection_has_ipv6_addresses_and_answers(self):
        client = self.connect()
        client.sendall(b"six")
        self.assertEqual(self.reply(client, 6), b"ok:six")
        transport = self.factory.made[0].transport
        self.assertEqual(transport.getPeer(), IPv6Address("TCP", *client.getsockname()))
        self.assertEqual(transport.getHost(), IPv6Address("TCP", *client.getpeername()))


class TimedCallTests(ReactorCase):
    """runUntilCurrent is skipped on turns with nothing for it to do; every kind of work still gets done."""

    def test_a_due_call_runs_and_a_later_one_waits(self):
        ran = []
        self.reactor.callLater(0, ran.append, "now")
        later = self.reactor.callLater(30, ran.append, "later")
        self.turn(lambda: ran)
        self.assertEqual(ran, ["now"])
        self.assertTrue(later.active())
        later.cancel()

    def test_a_call_moved_earlier_runs_and_one_moved_later_waits(self):
        ran = []
        sooner = self.reactor.callLater(30, ran.append, "sooner")
        postponed = self.reactor.callLater(0.01, ran.append, "postponed")
        self.reactor.runUntilCurrent()  # both are in the heap now
        sooner.reset(0)
        postponed.delay(30)
        self.turn(lambda: ran)
        self.assertEqual(ran, ["sooner"])
        self.assertTrue(postponed.active())
        postponed.cancel()

    def test_a_call_from_another_thread_runs(self):
        ran = []
        thread = threading.Thread(target=self.reactor.callFromThread, args=(ran.append, "from a thread"))
        thread.start()
        thread.join()
        self.turn(lambda: ran)
        self.assertEqual(ran, ["from a thread"])

    def test_many_cancelled_calls_are_cleared_out(self):
        calls = [self.reactor.callLater(30, lambda: None) for _ in range(60)]
        self.reactor.runUntilCurrent()
        for call in calls:
            call.cancel()
        self.reactor.doIteration(0)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.reactor._pendingTimedCalls, [])
