"""``twistd accel`` with worker processes, as operators run it: real supervisor and worker processes, a real
origin on loopback, clients whose connections are traced to the worker that holds them."""

from __future__ import annotations

import json
import os
import signal
import socket

import lmdb
import trustme
from click.testing import CliRunner
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from twisted.web import server

from accel.cache.store import url_key
from accel.cli.main import main
from accel.workers.listeners import Inherited, adopt
from tests.support import CountingSite, RecordingOrigin, get, temporary_directory, until
from tests.tls_support import https_client, write_cert
from tests.workers_support import Supervised, connect, connection_owner, eventually



class WorkerTests(unittest.TestCase):
    def setUp(self):
        self.dir = temporary_directory(self, "accel-workers-")
        self.origin = RecordingOrigin()
        site = _TrackingSite(self.origin)
        self.addCleanup(site.close_all)  # runs last: after accel's processes are gone
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.origin_url = f"http://127.0.0.1:{port.getHost().port}/"
        self.cache_dir = os.path.join(self.dir, "cache")
        self.config_path = os.path.join(self.dir, "accel.toml")
        self.held = []  # origin requests the test answers itself
        self.addCleanup(self._answer_held)

    def write_config(self, server_extra: str = "", workers: int = 2, listen=("tcp:0:interface=127.0.0.1",), tls="",
                     extra=""):
        with open(self.config_path, "w") as f:
            f.write(f"[server]\nlisten = {json.dumps(list(listen))}\nworkers = {workers}\nshutdown_timeout = 5\n"
                    f"{server_extra}\n[[route]]\nprefix = \"/\"\norigin = \"{self.origin_url}\"\n"
                    f"[cache]\ndir = \"{self.cache_dir}\"\n{tls}{extra}")

    @defer.inlineCallbacks
    def start(self, *options, **config):
        self.write_config(**config)
        accel = Supervised(self, self.config_path, *options)
        yield accel.workers_accepting(2)
        return accel

    def versioned(self, request):
        request.setHeader(b"cache-control", b"max-age=600")
        return b"version %d" % len(self.origin.seen)

    def hold(self, request):
        request.setHeader(b"cache-control", b"max-age=600")
        request.setHeader(b"content-length", b"5")
        self.held.append(request)
        return server.NOT_DONE_YET

    def _answer_held(self):
        for request in self.held:
            if not request.finished and not request._disconnected:
                request.write(b"hello")
                request.finish()
        self.held = []

    @defer.inlineCallbacks
    def one_connection_per_worker(self, accel, path: bytes = b"/obj", workers=None, attempts: int = 100):
        """A keep-alive connection held by each of ``workers`` (default: the first two that accepted), each
        having sent one GET for ``path``."""
        workers = workers or accel.accepting[:2]
        owned = {}
        for _ in range(attempts):
            client = yield connect(accel.port, self)
            status, _, _ = yield client.request(b"GET", path)
            self.assertEqual(status, 200)
            owner = connection_owner(accel.port, client.local_port, workers)
            self.assertIsNotNone(owner)
            owned.setdefault(owner, client)
            if len(owned) == len(workers):
                return owned
        self.fail(f"every connection went to the same worker: {owned}")

    # -- purge --------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_after_a_purge_answers_no_worker_serves_the_object_from_memory(self):
        self.origin.handlers[b"/obj"] = self.versioned
        accel = yield self.start()
        first, second = (yield self.one_connection_per_worker(accel)).values()
        for client in (first, second):  # the second GET on each worker is a hit from its memory tier
            status, headers, body = yield client.request(b"GET", b"/obj")
            self.assertEqual((body, headers[b"cache-status"][:10]), (b"version 1", b"accel; hit"))

        status, _, _ = yield first.request(b"PURGE", b"/obj")
        self.assertEqual(status, 200)
        status, headers, body = yield second.request(b"GET", b"/obj")  # the other worker, which held it
        self.assertEqual(body, b"version 2")
        self.assertIn(b"fwd=uri-miss", headers[b"cache-status"])
        _, _, body = yield first.request(b"GET", b"/obj")
        self.assertEqual(body, b"version 2")

        _, _, body = yield second.request(b"GET", b"/obj")  # both memory tiers hold version 2 again
        self.assertEqual(body, b"version 2")
        # (without --config the URL is the key: the origin's)
        purged = CliRunner().invoke(main, ["cache", "--cache-dir", self.cache_dir, "purge", self.origin_url + "obj"])
        self.assertEqual(purged.exit_code, 0, purged.output)
        for client in (first, second):
            _, _, body = yield client.request(b"GET", b"/obj")
            self.assertEqual(body, b"version 3")
        self.assertEqual(len(self.origin.seen), 3)

        def stats():
            result = CliRunner().invoke(main, ["cache", "--cache-dir", self.cache_dir, "stats", "--json"])
            return json.loads(result.output)

        for client in (first, second):  # each worker now holds version 3 in memory
            yield client.request(b"GET", b"/obj")
        # accel cache stats sums the memory tiers of both workers (each publishes about once a second)
        yield eventually(lambda: (lambda s: (s["processes"], s["memory_objects"]))(stats()) == (2, 2), step=0.1)

    # -- collapsing ---------------------------------------------------------------------------------------

    def lease(self, url: str) -> dict:
        path = os.path.join(self.cache_dir, "leases")
        if not os.path.exists(os.path.join(path, "data.mdb")):
            return {}
        env = lmdb.open(path, readonly=True, max_dbs=1)
        try:
            with env.begin() as txn:
                value = txn.get(url_key(url))
        finally:
            env.close()
        return json.loads(value) if value else {}

    def fetches(self, path: bytes) -> int:
        return sum(1 for seen in self.origin.seen if seen.uri == path)

    def another_process_waits(self, url: str) -> bool:
        record = self.lease(url)
        return any(not token.startswith(f"accel-{record['pid']}-") for token in record.get("waiters", []))

    @defer.inlineCallbacks
    def burst(self, accel, path: bytes, n: int):
        """``n`` concurrent GETs of ``path``, among them one on a connection of each worker."""
        clients = list((yield self.one_connection_per_worker(accel, b"/warm-up")).values())
        while len(clients) < n:
            clients.append((yield connect(accel.port, self)))
        return [client.request(b"GET", path) for client in clients]

    @defer.inlineCallbacks
    def test_a_hundred_first_requests_spread_over_the_workers_make_one_origin_fetch(self):
        self.origin.handlers[b"/c"] = self.hold
        accel = yield self.start("--workers", "2", workers=1)  # the command line wins, in the workers too
        responses = yield self.burst(accel, b"/c", 100)
        yield eventually(lambda: self.another_process_waits(self.origin_url + "c") and self.held)
        self._answer_held()
        answers = yield defer.gatherResults(responses)
        self.assertEqual({(status, body) for status, _, body in answers}, {(200, b"hello")})
        self.assertEqual(self.fetches(b"/c"), 1)
        self.assertTrue(any(b"collapsed" in headers[b"cache-status"] for _, headers, _ in answers))
        self.assertEqual(self.lease(self.origin_url + "c"), {})  # released

    @defer.inlineCallbacks
    def test_a_response_that_is_not_storable_sends_the_waiters_of_every_worker_to_the_origin(self):
        def not_storable(request):
            self.held.append(request)
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"content-length", b"5")
            return server.NOT_DONE_YET

        self.origin.handlers[b"/n"] = not_storable
        accel = yield self.start()
        responses = yield self.burst(accel, b"/n", 20)
        yield eventually(lambda: self.another_process_waits(self.origin_url + "n") and self.held)
        self._answer_held()
        # the waiters fetch on their own; the test answers them as they arrive
        self.origin.handlers[b"/n"] = lambda request: (request.setHeader(b"cache-control", b"no-store"), b"hello")[1]
        answers = yield defer.gatherResults(responses)
        self.assertEqual({(status, body) for status, _, body in answers}, {(200, b"hello")})
        self.assertGreater(self.fetches(b"/n"), 1)
        self.assertIn("hit_for_miss_until", self.lease(self.origin_url + "n"))  # the next burst won't queue

    # -- supervision --------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_killed_worker_is_replaced_and_the_event_logged(self):
        accel = yield self.start()
        victim = accel.accepting[0]
        os.kill(victim, signal.SIGKILL)
        yield accel.logged(rb"worker %d exited \(killed by signal 9\); starting a replacement" % victim)
        yield accel.workers_accepting(3)
        replacement = accel.accepting[2]
        self.assertNotIn(replacement, accel.accepting[:2])
        os.kill(replacement, 0)  # alive
        yield self.one_connection_per_worker(accel, workers=[accel.accepting[1], replacement])

    # -- reload ---------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_sighup_starts_new_workers_with_the_new_configuration_and_retires_the_old(self):
        unix_path = os.path.join(self.dir, "accel.sock")
        listen = ("tcp:0:interface=127.0.0.1", f"unix:{unix_path}")
        accel = yield self.start(server_extra='server_header = "one"', listen=listen)
        client = yield connect(accel.port, self)
        _, headers, _ = yield client.request(b"GET", b"/x")
        self.assertEqual(headers[b"server"], b"one")
        old = list(accel.accepting)

        self.write_config(server_extra='server_header = "two"', listen=listen)
        accel.signal("HUP")
        yield accel.logged(rb"reloaded: 2 workers accept with the new configuration")
        for pid in old:
            yield accel.logged(rb"worker %d exited" % pid)
        client = yield connect(accel.port, self)
        _, headers, _ = yield client.request(b"GET", b"/x")
        self.assertEqual(headers[b"server"], b"two")
        self.assertTrue(os.path.exists(unix_path))  # a retired worker leaves the shared unix socket alone
        unix_client = yield _connect_unix(unix_path, self)
        _, headers, _ = yield unix_client.request(b"GET", b"/x")
        self.assertEqual(headers[b"server"], b"two")

    @defer.inlineCallbacks
    def test_tls_listeners_are_shared_and_wrapped_in_tls_by_every_worker(self):
        ca = trustme.CA()
        files = write_cert(self.dir, "localhost", ca.issue_cert("localhost"))
        tls_listen = "tcp:0:interface=127.0.0.1:backlog=64"  # another string than the plain listener's
        accel = yield self.start(tls=f'[tls]\nlisten = ["{tls_listen}"]\n'
                                     f'certificates = [{{ cert = "{files.cert}", key = "{files.key}" }}]\n')
        port = accel.address_of(tls_listen)
        agent = https_client(self, ca)
        for _ in range(4):
            response, body = yield get(agent, f"https://localhost:{port}/x")
            self.assertEqual(response.code, 200)
            self.assertIn(b"uri=/x", body)

    @defer.inlineCallbacks
    def test_a_configuration_mistake_on_reload_is_one_line_and_the_workers_keep_serving(self):
        accel = yield self.start(server_extra='server_header = "one"')
        with open(self.config_path, "a") as f:
            f.write("[limits]\nmax_headers = -1\n")
        accel.signal("HUP")
        yield accel.logged(rb"reload refused: .*accel.toml.*limits.max_headers.*; the workers keep")
        self.assertEqual(accel.output.count(b"reload refused"), 1)
        client = yield connect(accel.port, self)
        status, headers, _ = yield client.request(b"GET", b"/x")
        self.assertEqual((status, headers[b"server"]), (200, b"one"))
        self.assertEqual(len(accel.accepting), 2)  # no new generation was started

    @defer.inlineCallbacks
    def test_requests_in_flight_during_a_reload_are_answered(self):
        self.origin.handlers[b"/slow/1"] = self.origin.handlers[b"/slow/2"] = self.hold
        accel = yield self.start()
        in_flight = []
        for n, client in enumerate((yield self.one_connection_per_worker(accel, b"/x")).values(), 1):
            in_flight.append(client.request(b"GET", b"/slow/%d" % n))  # two URLs: nothing collapses
        idle = list((yield self.one_connection_per_worker(accel, b"/x")).values())  # keep-alive, between requests
        yield eventually(lambda: len(self.held) == 2)
        old = accel.accepting[:2]
        accel.signal("HUP")
        yield accel.logged(rb"reloaded: 2 workers")
        for pid in old:  # the old workers no longer accept; a worker that does not drain would be gone now
            yield accel.logged(rb"worker %d: .*Port \d+ Closed" % pid)
        for client in idle:  # a retired worker answers, and sends its keep-alive clients elsewhere
            status, headers, _ = yield client.request(b"GET", b"/x")
            self.assertEqual((status, headers.get(b"connection")), (200, b"close"))
            yield client.closed
        self._answer_held()
        answers = yield defer.gatherResults(in_flight, consumeErrors=True)
        self.assertEqual([status for status, _, _ in answers], [200, 200])

    @defer.inlineCallbacks
    def test_a_retired_worker_with_nothing_in_flight_answers_its_idle_keep_alive_clients_once_more(self):
        accel = yield self.start()
        idle = list((yield self.one_connection_per_worker(accel, b"/x")).values())
        old = accel.accepting[:2]
        accel.signal("HUP")
        yield accel.logged(rb"reloaded: 2 workers")
        for pid in old:  # no longer accepting, nothing in flight: it used to exit here and cut the connections
            yield accel.logged(rb"worker %d: .*Port \d+ Closed" % pid)
        for client in idle:  # a request sent after the SIGTERM is answered, with the close announced
            status, headers, _ = yield client.request(b"GET", b"/x")
            self.assertEqual((status, headers.get(b"connection")), (200, b"close"))
            yield client.closed
        for pid in old:
            yield accel.logged(rb"worker %d exited" % pid)

    @defer.inlineCallbacks
    def test_sigusr1_makes_every_worker_reopen_its_log_files(self):
        accel = yield self.start()
        accel.signal(signal.SIGUSR1)
        for pid in accel.accepting:
            yield accel.logged(rb"worker %d: .*log files reopened" % pid)

    # -- stop -----------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_sigterm_stops_every_worker_then_the_supervisor_and_leaves_the_cache_consistent(self):
        self.origin.handlers[b"/obj"] = self.versioned
        accel = yield self.start()
        yield self.one_connection_per_worker(accel)
        workers = list(accel.accepting)
        accel.signal("TERM")
        yield accel.ended
        for pid in workers:
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertIn(b"stopping 2 workers", accel.output)
        self.assertIn(b"the health check was never asked for: no drain_delay", accel.output)
        verify = CliRunner().invoke(main, ["cache", "--cache-dir", self.cache_dir, "verify"])
        self.assertEqual(verify.exit_code, 0, verify.output)

    @defer.inlineCallbacks
    def test_once_a_balancer_asked_for_the_health_check_a_stop_serves_on_for_drain_delay_with_it_503(self):
        accel = yield self.start(extra="[cluster]\ndrain_delay = 1\n")
        client = yield connect(accel.port, self)
        status, _, body = yield client.request(b"GET", b"/accel-health")
        self.assertEqual((status, body), (200, b"serving\n"))
        yield accel.logged(rb"the health check is asked for: a stop will serve on for drain_delay first")
        accel.signal("TERM")
        yield accel.logged(rb"the health check answers 503; serving 1 s more \(drain_delay\)")
        yield accel.logged(rb"(?s)(worker \d+: .*the health check answers 503 \(the supervisor's stop.*){2}")
        status, _, body = yield client.request(b"GET", b"/accel-health")
        self.assertEqual((status, body), (503, b"draining\n"))
        client.transport.loseConnection()  # a balancer's check is not a keep-alive client the stop waits for
        yield accel.ended
        self.assertNotIn(b"never asked for", accel.output)

    @defer.inlineCallbacks
    def test_sigterm_lets_requests_in_flight_finish(self):
        self.origin.handlers[b"/slow"] = self.hold
        accel = yield self.start()
        client = yield connect(accel.port, self)
        answer = client.request(b"GET", b"/slow")
        yield eventually(lambda: len(self.held) == 1)
        accel.signal("TERM")
        for pid in accel.accepting:  # they no longer accept; a worker that does not drain would be gone now
            yield accel.logged(rb"worker %d: .*Port \d+ Closed" % pid)
        self._answer_held()
        status, _, body = yield answer
        self.assertEqual((status, body), (200, b"hello"))
        yield accel.ended


class _TrackingSite(CountingSite):
    """The origin's site, which closes every connection accel's workers left open when the test ends."""

    def __init__(self, resource):
        super().__init__(resource)
        self.channels = []

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        self.channels.append(channel)
        return channel

    @defer.inlineCallbacks
    def close_all(self):
        def open_transports():
            return [t for t in (getattr(c, "transport", None) for c in self.channels) if t is not None and t.connected]

        for transport in open_transports():
            transport.abortConnection()
        yield eventually(lambda: not open_transports())


@defer.inlineCallbacks
def _connect_unix(path: str, testcase):
    from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol

    from tests.workers_support import KeepAlive

    client = KeepAlive()
    yield connectProtocol(UNIXClientEndpoint(reactor, path), client)
    testcase.addCleanup(lambda: client.transport.loseConnection() or client.closed)
    return client


class _CountingFactory(Factory):
    protocol = Protocol

    def __init__(self):
        self.built = 0

    def buildProtocol(self, addr):
        self.built += 1
        return super().buildProtocol(addr)


class SharedSocketTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_ports_adopting_one_socket_take_one_connection_each_per_wake_up(self):
        """Two workers' ports on one listening socket, in one reactor here: with 10 connections waiting, each
        readable event takes one, so both get a share (accepting in batches, the first took all ten)."""
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(50)
        listening.setblocking(False)  # as the supervisor's listeners are: an accept finding nothing returns
        address = listening.getsockname()
        factories = [_CountingFactory(), _CountingFactory()]
        for factory in factories:
            port = adopt(reactor, Inherited(os.dup(listening.fileno()), socket.AF_INET, "tcp:0", 50), factory)
            self.addCleanup(port.stopListening)
        listening.close()
        clients = [socket.create_connection(address) for _ in range(10)]  # queued before either accepts
        for client in clients:
            self.addCleanup(client.close)
        yield until(lambda: sum(f.built for f in factories) == 10)
        self.assertTrue(all(abs(f.built - 5) <= 1 for f in factories), [f.built for f in factories])
