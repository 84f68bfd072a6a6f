"""Operating a real `twistd -n accel`: SIGHUP reloads the configuration, SIGUSR1 reopens the access log after a
rotation, SIGTERM lets the requests in flight finish. Every wait is on an event: a log line, a request seen by
the origin, a response."""

from __future__ import annotations

import os
import re
import signal

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.trial import unittest
from twisted.web import server

from tests.support import TWISTD, RecordingOrigin, get, http_client, start_stack, temporary_directory, until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Twistd(ProcessProtocol):
    """``twistd -n accel --config FILE`` in a child process; its log (standard output) can be waited on."""

    def __init__(self, testcase, config_path: str):
        self.output = b""
        self.errors = b""
        self.ended = defer.Deferred()
        self.status = None
        self._waiting: list[tuple[re.Pattern, defer.Deferred]] = []
        argv = TWISTD + ["--nodaemon", "--pidfile=", "accel", "--config", config_path]
        reactor.spawnProcess(self, argv[0], argv, env={**os.environ, "PYTHONUNBUFFERED": "1"}, path=ROOT)
        testcase.addCleanup(self.kill)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def _check(self) -> None:
        for entry in list(self._waiting):
            found = entry[0].search(self.output)
            if found:
                self._waiting.remove(entry)
                entry[1].callback(found)

    def log_line(self, pattern: bytes) -> defer.Deferred:
        """Fires with the match once the log has a line matching ``pattern`` (counting lines already there)."""
        d = defer.Deferred()
        self._waiting.append((re.compile(pattern), d))
        self._check()
        return d

    def processEnded(self, reason) -> None:
        self.status = reason.value.exitCode
        for _, d in self._waiting:
            d.errback(AssertionError(f"accel exited:\n{self.output.decode()}\n{self.errors.decode()}"))
        self._waiting = []
        self.ended.callback(self.status)

    @defer.inlineCallbacks
    def url(self):
        """The URL of the listener, once accel runs (its signal handlers installed)."""
        found = yield self.log_line(rb"AccelSite starting on (\d+)")
        yield self.log_line(rb"accel: running")
        return f"http://127.0.0.1:{int(found.group(1))}"

    def signal(self, name: str) -> None:
        self.transport.signalProcess(getattr(signal, f"SIG{name}"))

    def kill(self) -> defer.Deferred:
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        return self.ended


def start_origin(testcase, name: bytes) -> tuple[RecordingOrigin, str]:
    """An origin whose answers say which one it is; ``/cached`` is cacheable."""
    origin = RecordingOrigin()

    def cached(request):
        request.setHeader(b"cache-control", b"max-age=600")
        return b"cached by " + name

    origin.handlers[b"/cached"] = cached
    site = server.Site(origin)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    origin.name = name
    return origin, f"http://127.0.0.1:{port.getHost().port}/"


def config_text(origin_url: str, tmp: str, extra: str = "") -> str:
    return (f'[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\naccess_log = "access.log"\n'
            f'[cache]\ndir = "cache"\n\n[[route]]\nprefix = "/"\norigin = "{origin_url}"\n' + extra)


class ReloadTests(unittest.TestCase):
    def setUp(self):
        self.dir = temporary_directory(self)
        self.config = os.path.join(self.dir, "accel.toml")

    def write(self, text: str) -> None:
        with open(self.config + ".new", "w") as f:
            f.write(text)
        os.replace(self.config + ".new", self.config)

    @defer.inlineCallbacks
    def test_sighup_applies_new_routes_to_new_requests_and_keeps_requests_connections_and_cache(self):
        a, a_url = start_origin(self, b"a")
        b, b_url = start_origin(self, b"b")
        self.write(config_text(a_url, self.dir))
        accel = Twistd(self, self.config)
        url = yield accel.url()
        agent = http_client(self)
        _, body = yield get(agent, url + "/cached")
        self.assertEqual(body, b"cached by a")
        in_flight = get(http_client(self), url + "/hang")  # held by origin a across the reload
        yield until(lambda: a.pending)

        self.write(config_text(a_url, self.dir, f'\n[[route]]\nprefix = "/new/"\norigin = "{b_url}"\n'
                                                 f'hosts = ["api.example.com"]\n'))
        accel.signal("HUP")
        yield accel.log_line(rb"configuration reloaded from")
        response, body = yield get(agent, url + "/new/x", headers={b"host": b"api.example.com"})
        self.assertEqual((response.code, b.seen[-1].uri), (200, b"/x"))
        _, body = yield get(agent, url + "/new/x", headers={b"host": b"www.example.com"})  # another host: route "/"
        self.assertEqual(a.seen[-1].uri, b"/new/x")
        response, body = yield get(agent, url + "/cached")  # the cache carried on
        self.assertEqual(body, b"cached by a")
        self.assertIn(b"hit", response.headers.getRawHeaders(b"cache-status")[0])
        self.assertEqual(len([s for s in a.seen if s.uri == b"/cached"]), 1)

        request = a.pending.pop()
        request.write(b"finished after the reload")
        request.finish()
        response, body = yield in_flight
        self.assertEqual((response.code, body), (200, b"finished after the reload"))

        self.write("[[route]]\nprefix = '/'\norigin = 'gopher://nowhere'\n")
        accel.signal("HUP")
        yield accel.log_line(rb"configuration not reloaded, the running one stays in service: .*route\[0\]\.origin")
        response, _ = yield get(agent, url + "/new/y", headers={b"host": b"api.example.com"})
        self.assertEqual((response.code, b.seen[-1].uri), (200, b"/y"))

    @defer.inlineCallbacks
    def test_a_changed_listener_is_logged_as_needing_a_restart(self):
        _, a_url = start_origin(self, b"a")
        self.write(config_text(a_url, self.dir))
        accel = Twistd(self, self.config)
        yield accel.url()
        self.write(config_text(a_url, self.dir).replace("tcp:0:", "tcp:1:"))
        accel.signal("HUP")
        yield accel.log_line(rb"listeners changed in .*: restart accel to apply")

    @defer.inlineCallbacks
    def test_sigusr1_reopens_the_access_log_after_a_rotation(self):
        _, a_url = start_origin(self, b"a")
        self.write(config_text(a_url, self.dir))
        accel = Twistd(self, self.config)
        url = yield accel.url()
        log = os.path.join(self.dir, "access.log")
        yield get(http_client(self), url + "/before")
        yield until(lambda: os.path.exists(log) and b"/before" in open(log, "rb").read())
        os.rename(log, log + ".1")
        accel.signal("USR1")
        yield accel.log_line(rb"log files reopened")
        yield get(http_client(self), url + "/after")
        yield until(lambda: os.path.exists(log) and b"/after" in open(log, "rb").read())
        with open(log + ".1", "rb") as rotated:
            self.assertNotIn(b"/after", rotated.read())


class StopTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_sigterm_lets_a_request_in_flight_finish(self):
        directory = temporary_directory(self)
        origin, origin_url = start_origin(self, b"a")
        path = os.path.join(directory, "accel.toml")
        with open(path, "w") as f:
            f.write(f'[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                    f'[[route]]\nprefix = "/"\norigin = "{origin_url}"\n')
        accel = Twistd(self, path)
        url = yield accel.url()
        slow = get(http_client(self), url + "/hang")
        yield until(lambda: origin.pending)
        accel.signal("TERM")
        yield accel.log_line(rb"stopping: waiting up to 10 s for 1 request")
        request = origin.pending.pop()
        request.write(b"slow but complete")
        request.finish()
        response, body = yield slow
        self.assertEqual((response.code, body), (200, b"slow but complete"))
        yield accel.ended  # twistd ends by re-raising SIGTERM on itself once stopped, as a signal ends a process
        # no balancer asked for the health check: no one to see its 503, so no drain_delay first
        self.assertIn(b"the health check was never asked for: no drain_delay", accel.output)
        self.assertIn(b"every request in flight finished", accel.output)
        self.assertIn(b"Server Shut Down.", accel.output)
        self.assertNotIn(b"Traceback", accel.output + accel.errors)
        # twistd accel serves on the reactor that dispatches events without the legacy log context
        self.assertIn(b"reactor class: accel.http.reactor.DispatchingReactor.", accel.output)


class _WatchedRequest:
    """What InFlight needs of a request: ``when_over``, fired by ``finish``."""

    def __init__(self):
        self.watchers = []

    def when_over(self, callback):
        self.watchers.append(callback)

    def finish(self):
        for callback in self.watchers:
            callback(None)


def test_draining_gives_up_after_the_timeout_with_the_requests_left():
    from twisted.internet.task import Clock

    from accel.app import InFlight

    clock, in_flight = Clock(), InFlight()
    first, second = _WatchedRequest(), _WatchedRequest()
    in_flight.started(first)
    in_flight.started(second)
    left = []
    in_flight.wait(clock, 10).addCallback(left.append)
    first.finish()
    clock.advance(9.9)
    assert left == []
    clock.advance(0.1)
    assert left == [1]
    second.finish()
    in_flight.wait(clock, 10).addCallback(left.append)
    assert left == [1, 0]


class InProcessReloadTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_reload_moves_the_access_log_and_reports_what_needs_a_restart(self):
        from dataclasses import replace

        from accel.config import Config

        directory = temporary_directory(self)
        first, second = os.path.join(directory, "first.log"), os.path.join(directory, "second.log")
        stack = start_stack(self, Config(access_log=first))
        yield get(http_client(self), stack.url + "/one")
        yield until(lambda: b"/one" in open(first, "rb").read())
        needs_restart = stack.accel_site.accelerator.reload(replace(stack.config, access_log=second, listen=("tcp:1",)))
        self.assertEqual(needs_restart, ["listeners"])
        yield get(http_client(self), stack.url + "/two")
        yield until(lambda: os.path.exists(second) and b"/two" in open(second, "rb").read())
        self.assertNotIn(b"/two", open(first, "rb").read())


class CertificateReloadTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_sighup_reloads_renewed_certificates(self):
        import trustme

        from tests.tls_support import handshake, serial_of, write_cert

        directory = temporary_directory(self)
        ca = trustme.CA()
        first = ca.issue_cert("a.test")
        write_cert(directory, "a", first)
        _, origin_url = start_origin(self, b"a")
        path = os.path.join(directory, "accel.toml")
        with open(path, "w") as f:
            f.write('[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                    '[tls]\nlisten = ["tcp:0:interface=127.0.0.1"]\ncertificates = [{ cert = "a.pem", key = "a.key" }]\n'
                    f'[[route]]\nprefix = "/"\norigin = "{origin_url}"\n')
        accel = Twistd(self, path)
        yield accel.url()
        port = int((yield accel.log_line(rb"AccelSite \(TLS\) starting on (\d+)")).group(1))
        cert, _, _ = yield handshake(port, "a.test")
        self.assertEqual(cert.serial_number, serial_of(first))
        renewed = ca.issue_cert("a.test")
        write_cert(directory, "a", renewed)
        accel.signal("HUP")
        yield accel.log_line(rb"tls: certificates reloaded \(SIGHUP\)")
        cert, _, _ = yield handshake(port, "a.test")
        self.assertEqual(cert.serial_number, serial_of(renewed))


class LeavingTests(unittest.TestCase):
    """SIGTERM behind a balancer: the health check turns 503 while accel serves on for drain_delay, then the
    listeners close and every keep-alive connection answers one more request with Connection: close."""

    @defer.inlineCallbacks
    def test_sigterm_turns_the_health_check_503_then_keep_alive_clients_get_one_more_answer(self):
        from tests.workers_support import connect

        directory = temporary_directory(self)
        origin, origin_url = start_origin(self, b"a")
        path = os.path.join(directory, "accel.toml")
        with open(path, "w") as f:
            f.write(config_text(origin_url, directory, "[cluster]\ndrain_delay = 1\n"))
        accel = Twistd(self, path)
        url = yield accel.url()
        port = int(url.rsplit(":", 1)[1])
        health = yield connect(port, self)
        status, _, body = yield health.request(b"GET", b"/accel-health")
        self.assertEqual((status, body), (200, b"serving\n"))
        idle = yield connect(port, self)
        status, _, _ = yield idle.request(b"GET", b"/cached")
        self.assertEqual(status, 200)
        accel.signal("TERM")
        yield accel.log_line(rb"the health check answers 503; serving 1 s more")
        status, _, body = yield health.request(b"GET", b"/accel-health")
        self.assertEqual((status, body), (503, b"draining\n"))
        fresh = yield connect(port, self)  # still accepting while the balancer takes the node out
        status, headers, _ = yield fresh.request(b"GET", b"/cached")
        self.assertEqual((status, headers.get(b"connection")), (200, None))
        yield accel.log_line(rb"Port \d+ Closed")
        # The listener is closed and nothing is in flight, yet the idle keep-alive connection is still open:
        # a request its client sends now (as one may be on its way) is answered, and announces the close.
        status, headers, body = yield idle.request(b"GET", b"/cached")
        self.assertEqual((status, headers.get(b"connection"), body), (200, b"close", b"cached by a"))
        yield idle.closed
        yield accel.ended
        self.assertNotIn(b"Traceback", accel.output + accel.errors)


class OperatorSignalsTests(unittest.TestCase):
    """The one SIGHUP / SIGUSR1 piece of a serving process and of a supervisor."""

    def test_actions_run_in_the_reactor_thread_twistds_sigusr1_handler_still_runs_and_restore_puts_it_back(self):
        from accel.workers.signals import OperatorSignals

        class Reactor:
            def __init__(self):
                self.called = []

            def callFromThread(self, action):
                self.called.append(action)

        rotations = []
        twistds = signal.signal(signal.SIGUSR1, lambda number, frame: rotations.append(number))
        previous_hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
        self.addCleanup(signal.signal, signal.SIGUSR1, twistds)
        self.addCleanup(signal.signal, signal.SIGHUP, previous_hup)
        fake = Reactor()
        signals = OperatorSignals(fake)
        signals.install({signal.SIGHUP: "reload", signal.SIGUSR1: "reopen"})
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGUSR1)
        self.assertEqual((fake.called, rotations), (["reload", "reopen"], [signal.SIGUSR1]))
        signals.restore()
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGUSR1)
        self.assertEqual((fake.called, rotations), (["reload", "reopen"], [signal.SIGUSR1, signal.SIGUSR1]))
