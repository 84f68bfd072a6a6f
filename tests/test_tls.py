"""SSL offload end to end: real TLS on loopback with certificates made at test time."""

from __future__ import annotations

import os
from dataclasses import replace

import trustme
from OpenSSL import SSL
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from accel.tls import listeners as tls_module
from accel.config import CacheSettings, Config, TLSListener, TLSSettings
from accel.http.listening import ACCEPT_BATCH
from accel.tap import Options, makeService
from accel.tls.listeners import CertificateStore, TLSServerFactory
from accel.tls.https import RedirectToHTTPS
from tests.support import get, http_client, raw_request, start_stack, temporary_directory
from tests.support import until
from tests.tls_support import LogCapture, handshake, https_client, serial_of, write_cert


class OffloadCase(unittest.TestCase):
    """An origin, accel in front of it, and an HTTPS listener of accel with certificates for a few names."""

    def setUp(self):
        self.dir = temporary_directory(self)
        self.ca = trustme.CA()
        self.leaves = {
            "default": self.ca.issue_cert("default.test", "127.0.0.1"),
            "a": self.ca.issue_cert("a.test"),
            "b": self.ca.issue_cert("b.test", "www.b.test"),
            "wild": self.ca.issue_cert("*.wild.test"),
        }
        self.files = {name: write_cert(self.dir, name, leaf) for name, leaf in self.leaves.items()}

    def start(self, settings: TLSSettings | None = None, clock=None, **config):
        settings = settings or TLSSettings(check_interval=30)
        self.stack = start_stack(self, Config(tls=settings, **config))
        listener = TLSListener("tcp:0", tuple(self.files.values()))
        self.store = CertificateStore(listener, settings, "test", clock or reactor)
        port = reactor.listenTCP(0, TLSServerFactory(self.store, self.stack.accel_site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.url = f"https://127.0.0.1:{self.port}"
        return self.stack


class SNITests(OffloadCase):
    @defer.inlineCallbacks
    def test_the_server_name_picks_the_certificate(self):
        self.start()
        expected = {
            "a.test": "a",
            "B.TEST.": "b",
            "www.b.test": "b",
            "x.wild.test": "wild",
            "wild.test": "default",  # *.wild.test covers one label only
            "y.x.wild.test": "default",
            "unknown.test": "default",
            None: "default",
        }
        for name, leaf in expected.items():
            cert, alpn, version = yield handshake(self.port, name)
            self.assertEqual(cert.serial_number, serial_of(self.leaves[leaf]), name)
        self.assertEqual(alpn, b"http/1.1")  # offered h2 and http/1.1: accel speaks HTTP/1.1
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))

    @defer.inlineCallbacks
    def test_an_explicit_default_wins_over_the_first(self):
        self.files["b"] = replace(self.files["b"], default=True)
        self.start()
        cert, _, _ = yield handshake(self.port, "unknown.test")
        self.assertEqual(cert.serial_number, serial_of(self.leaves["b"]))

    @defer.inlineCallbacks
    def test_tls_1_0_and_1_1_are_refused(self):
        self.start()
        for version in (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION):
            with self.assertRaises(SSL.Error) as caught:
                yield handshake(self.port, "a.test", max_version=version)
            self.assertIn("protocol version", str(caught.exception))  # the server's alert, not a local refusal
        cert, _, _ = yield handshake(self.port, "a.test", max_version=SSL.TLS1_2_VERSION)
        self.assertEqual(cert.serial_number, serial_of(self.leaves["a"]))

    @defer.inlineCallbacks
    def test_min_version_1_3(self):
        self.start(TLSSettings(min_version="1.3"))
        with self.assertRaises(SSL.Error):
            yield handshake(self.port, "a.test", max_version=SSL.TLS1_2_VERSION)
        _, _, version = yield handshake(self.port, "a.test")
        self.assertEqual(version, "TLSv1.3")


class OffloadedRequestTests(OffloadCase):
    @defer.inlineCallbacks
    def test_origin_sees_https_and_the_port_and_redirects_become_https(self):
        stack = self.start()

        def redirect(request):
            request.setResponseCode(302)
            request.setHeader(b"location", stack.origin_url.encode() + b"/next?q=1")
            return b""

        stack.origin.handlers[b"/go"] = redirect
        response, body = yield get(https_client(self, self.ca), self.url + "/go")
        self.assertEqual(response.code, 302)
        seen = stack.origin.seen[0]
        self.assertEqual(seen.header(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(seen.header(b"x-forwarded-port"), [str(self.port).encode()])
        self.assertEqual(response.headers.getRawHeaders(b"location"), [f"https://127.0.0.1:{self.port}/next?q=1".encode()])
        self.assertIsNone(response.headers.getRawHeaders(b"strict-transport-security"))

    @defer.inlineCallbacks
    def test_hsts_on_https_responses_only(self):
        stack = self.start(TLSSettings(hsts_max_age=31536000, hsts_include_subdomains=True))
        stack.origin.handlers[b"/sts"] = lambda request: (
            request.setHeader(b"strict-transport-security", b"max-age=1"), b"origin's")[1]
        response, _ = yield get(https_client(self, self.ca), self.url + "/sts")
        self.assertEqual(response.headers.getRawHeaders(b"strict-transport-security"), [b"max-age=31536000; includeSubDomains"])
        response, _ = yield get(https_client(self, self.ca), self.url + "/status/404")
        self.assertEqual(response.headers.getRawHeaders(b"strict-transport-security"), [b"max-age=31536000; includeSubDomains"])
        response, _ = yield get(https_client(self, self.ca), self.url + "/" + "a" * 9000)  # refused by the channel
        self.assertEqual(response.code, 414)
        self.assertEqual(response.headers.getRawHeaders(b"strict-transport-security"), [b"max-age=31536000; includeSubDomains"])
        response, _ = yield get(http_client(self), stack.url + "/" + "a" * 9000)
        self.assertEqual(response.code, 414)
        self.assertIsNone(response.headers.getRawHeaders(b"strict-transport-security"))
        response, _ = yield get(http_client(self), stack.url + "/plain")
        self.assertIsNone(response.headers.getRawHeaders(b"strict-transport-security"))

    @defer.inlineCallbacks
    def test_hsts_on_cache_hits_and_on_304s_answered_from_the_cache(self):
        directory = temporary_directory(self, "accel-test-")
        stack = self.start(TLSSettings(hsts_max_age=600), cache=CacheSettings(dir=directory))
        stack.origin.handlers[b"/hit"] = lambda request: (
            request.setHeader(b"cache-control", b"max-age=60"), request.setHeader(b"etag", b'"v1"'), b"stored")[2]
        agent = https_client(self, self.ca)
        responses = []
        for headers in ({}, {}, {b"if-none-match": b'"v1"'}):
            response, body = yield get(agent, self.url + "/hit", headers=headers)
            responses.append(response)
        self.assertEqual([r.code for r in responses], [200, 200, 304])
        self.assertEqual(len(stack.origin.seen), 1)
        statuses = [r.headers.getRawHeaders(b"cache-status")[0] for r in responses]
        self.assertIn(b"fwd=uri-miss", statuses[0])
        self.assertIn(b"; hit", statuses[1])  # the prepared hit path
        self.assertIn(b"; hit", statuses[2])
        for response in responses:
            self.assertEqual(response.headers.getRawHeaders(b"strict-transport-security"), [b"max-age=600"])
        for _ in range(2):  # http:// URLs have entries of their own: a miss, then a hit over plain HTTP
            response, _ = yield get(http_client(self), stack.url + "/hit")
            self.assertIsNone(response.headers.getRawHeaders(b"strict-transport-security"))
        self.assertIn(b"; hit", response.headers.getRawHeaders(b"cache-status")[0])

    @defer.inlineCallbacks
    def test_plain_http_on_the_tls_port_is_refused_without_disturbing_others(self):
        stack = self.start()
        waiting = get(https_client(self, self.ca), self.url + "/hang")  # a TLS connection, mid-request
        yield until(lambda: stack.origin.pending)
        data = yield raw_request(self.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data)
        self.assertIn(b"https://", data)
        data = yield raw_request(self.port, b"\x00\x01garbage")
        self.assertEqual(data, b"")
        stack.origin.pending[0].write(b"still here")
        stack.origin.pending[0].finish()
        stack.origin.pending.clear()
        response, body = yield waiting
        self.assertEqual((response.code, body), (200, b"still here"))
        self.assertEqual(len(stack.origin.seen), 1)  # the plain request never reached the origin


class RenewalTests(OffloadCase):
    def renew(self, name: str, *identities: str):
        """Replace the files of a certificate with a new one, and make sure their modification time moves."""
        leaf = self.leaves[name] = self.ca.issue_cert(*identities)
        write_cert(self.dir, name, leaf)
        for path in (self.files[name].cert, self.files[name].key):
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        return leaf

    @defer.inlineCallbacks
    def test_a_reload_picks_up_renewed_certificates(self):
        # SIGHUP calls this reload in a real process: see test_operations.py.
        self.start()
        cert, _, _ = yield handshake(self.port, "a.test")
        self.assertEqual(cert.serial_number, serial_of(self.leaves["a"]))
        renewed = self.renew("a", "a.test", "new.a.test")
        self.assertTrue(self.store.reload("SIGHUP"))
        self.assertEqual(self.store.loads, 2)
        for name in ("a.test", "new.a.test"):
            cert, _, _ = yield handshake(self.port, name)
            self.assertEqual(cert.serial_number, serial_of(renewed), name)

    @defer.inlineCallbacks
    def test_changed_files_are_picked_up_by_a_cached_check_on_handshakes(self):
        clock = task.Clock()
        self.start(clock=clock)
        listdir = []
        self.patch(tls_module.os, "listdir", lambda path: listdir.append(path) or os.listdir(path))
        renewed = self.renew("b", "b.test")
        for name in ("b.test", "nothing.test", "other.unknown", "b.test"):
            cert, _, _ = yield handshake(self.port, name)
            self.assertNotEqual(cert.serial_number, serial_of(renewed))
        self.assertEqual((self.store.checks, listdir), (0, []))  # within the interval, unknown names: no disk
        clock.advance(30)
        cert, _, _ = yield handshake(self.port, "b.test")
        self.assertEqual(cert.serial_number, serial_of(renewed))
        self.assertEqual((self.store.checks, self.store.loads), (1, 2))
        clock.advance(30)
        yield handshake(self.port, "b.test")
        self.assertEqual((self.store.checks, self.store.loads), (2, 2))  # checked, unchanged: not reloaded

    @defer.inlineCallbacks
    def test_a_broken_renewal_keeps_the_previous_certificate(self):
        logs = LogCapture(self)
        self.start()
        with open(self.files["a"].key, "wb") as f:
            f.write(self.ca.issue_cert("x.test").private_key_pem.bytes())  # the wrong key
        self.assertFalse(self.store.reload("test"))
        self.assertTrue(any("a.key" in t and "previous ones stay" in t for t in logs.texts("error")))
        cert, _, _ = yield handshake(self.port, "a.test")
        self.assertEqual(cert.serial_number, serial_of(self.leaves["a"]))


class ServiceTests(OffloadCase):
    """``twistd accel`` with [tls] in the file, and with an ssl: endpoint in --listen."""

    def config_file(self, extra: str) -> str:
        stack = start_stack(self)
        path = os.path.join(self.dir, "accel.toml")
        with open(path, "w") as f:
            f.write(
                f'[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n\n'
                f'[[route]]\nprefix = "/"\norigin = "{stack.origin_url}/"\n\n{extra}'
            )
        self.origin = stack.origin
        return path

    @defer.inlineCallbacks
    def started(self, argv):
        options = Options()
        options.parseOptions(argv)
        top = makeService(options)
        top.startService()
        self.addCleanup(top.stopService)
        ports = {}
        for svc in top:
            if getattr(svc, "_waitingForPort", None) is not None:
                factory = svc.factory
                kind = "tls" if isinstance(factory, TLSServerFactory) else "http"
                if kind == "http" and isinstance(getattr(factory, "resource", None), RedirectToHTTPS):
                    kind = "redirect"
                found = defer.Deferred()
                svc._waitingForPort.addCallback(lambda port, found=found: (found.callback(port), port)[1])
                port = yield found
                ports.setdefault(kind, port.getHost().port)
        return ports

    @defer.inlineCallbacks
    def test_listeners_have_a_backlog_of_511_unless_the_endpoint_sets_one_and_accept_in_batches(self):
        path = self.config_file(
            '[tls]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            'certificates = [{cert = "default.pem", key = "default.key"}]\n\n'
            '[tls.redirect]\nlisten = ["tcp:0:interface=127.0.0.1:backlog=64"]\n'
        )
        options = Options()
        options.parseOptions(["--config", path])
        top = makeService(options)
        top.startService()
        self.addCleanup(top.stopService)
        backlogs = []
        for svc in top:
            if getattr(svc, "_waitingForPort", None) is not None:
                found = defer.Deferred()
                svc._waitingForPort.addCallback(lambda port, found=found: (found.callback(port), port)[1])
                port = yield found
                backlogs.append(port.backlog)
                port.numberAccepts = 1  # what Twisted's Port sets after accepting one connection
                self.assertEqual(port.numberAccepts, ACCEPT_BATCH)
        self.assertEqual(sorted(backlogs), [64, 511, 511])  # --listen, the TLS listener; the redirect's own

    @defer.inlineCallbacks
    def test_tls_listeners_and_redirect_from_the_file(self):
        path = self.config_file(
            '[tls]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            'certificates = [{cert = "default.pem", key = "default.key"}, {cert = "a.pem", key = "a.key"}]\n\n'
            '[tls.redirect]\nlisten = ["tcp:0:interface=127.0.0.1"]\nport = 8443\n\n'
            '[tls.hsts]\nmax_age = 600\n'
        )
        ports = yield self.started(["--config", path])
        cert, _, _ = yield handshake(ports["tls"], "a.test")
        self.assertEqual(cert.serial_number, serial_of(self.leaves["a"]))
        response, body = yield get(https_client(self, self.ca), f"https://127.0.0.1:{ports['tls']}/x")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"strict-transport-security"), [b"max-age=600"])
        self.assertEqual(self.origin.seen[-1].header(b"x-forwarded-proto"), [b"https"])

        data = yield raw_request(ports["redirect"], b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: www.example.com:8080\r\nConnection: close\r\n\r\n")
        head = data.split(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 301 "), head)
        self.assertIn(b"\r\nLocation: https://www.example.com:8443/a/b?x=1&y=2", head)
        self.assertNotIn(b"strict-transport-security", head.lower())
        data = yield raw_request(ports["redirect"], b"POST /form HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.assertIn(b" 308 ", data.split(b"\r\n")[0])
        self.assertIn(b"Location: https://example.com:8443/form", data)
        data = yield raw_request(ports["redirect"], b"GET / HTTP/1.1\r\nHost: evil.com/x@y\r\nConnection: close\r\n\r\n")
        self.assertIn(b" 400 ", data.split(b"\r\n")[0])

    @defer.inlineCallbacks
    def test_an_ssl_endpoint_in_listen(self):
        f = self.files["default"]
        path = self.config_file("")
        ports = yield self.started(["--config", path, "--listen", f"ssl:0:interface=127.0.0.1:privateKey={f.key}:certKey={f.cert}"])
        response, body = yield get(https_client(self, self.ca), f"https://127.0.0.1:{ports['http']}/via-ssl")
        self.assertEqual(response.code, 200)
        seen = self.origin.seen[-1]
        self.assertEqual(seen.header(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(seen.header(b"x-forwarded-port"), [str(ports["http"]).encode()])
