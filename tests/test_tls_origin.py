"""HTTPS origins: certificate and host name verification, a configured CA, client certificates, the opt-out."""

from __future__ import annotations

import os

import trustme
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import server

from accel.app import build_site
from accel.config import Config, Route, parse_origin
from tests.support import RecordingOrigin, get, http_client, temporary_directory
from tests.tls_support import LogCapture, listen_https


class HTTPSOriginTests(unittest.TestCase):
    def setUp(self):
        self.dir = temporary_directory(self)
        self.ca = trustme.CA()
        self.ca_path = os.path.join(self.dir, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.logs = LogCapture(self)

    def origin(self, leaf, client_ca=None) -> tuple[RecordingOrigin, int]:
        origin = RecordingOrigin()
        port = listen_https(self, server.Site(origin), leaf, client_ca=client_ca)
        return origin, port.getHost().port

    def accel(self, host: str, port: int, **tls) -> str:
        route = Route(prefix="/", origin=parse_origin(f"https://{host}:{port}/"), **tls)
        site = build_site(Config(routes=(route,)), reactor)
        accel_port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(site.close)
        self.addCleanup(accel_port.stopListening)
        return f"http://127.0.0.1:{accel_port.getHost().port}"

    @defer.inlineCallbacks
    def test_a_certificate_for_the_origin_name_from_the_configured_ca_works(self):
        origin, port = self.origin(self.ca.issue_cert("127.0.0.1"))
        url = self.accel("127.0.0.1", port, tls_ca=self.ca_path)
        response, body = yield get(http_client(self), url + "/hello")
        self.assertEqual(response.code, 200)
        self.assertEqual(origin.seen[0].uri, b"/hello")

    @defer.inlineCallbacks
    def test_a_dns_name_is_verified_and_sent_by_sni(self):
        origin, port = self.origin(self.ca.issue_cert("localhost"))
        url = self.accel("localhost", port, tls_ca=self.ca_path)
        response, _ = yield get(http_client(self), url + "/dns")
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_a_certificate_for_another_name_is_refused_with_502(self):
        origin, port = self.origin(self.ca.issue_cert("other.test"))
        url = self.accel("127.0.0.1", port, tls_ca=self.ca_path)
        response, _ = yield get(http_client(self), url + "/x")
        self.assertEqual(response.code, 502)
        self.assertEqual(origin.seen, [])
        warnings = [t for t in self.logs.texts("warn") if t.startswith("502")]
        self.assertTrue(warnings, self.logs.texts())
        self.assertIn("is not valid for 127.0.0.1 (host name mismatch)", warnings[0])
        self.assertIn("127.0.0.1", warnings[0])

    @defer.inlineCallbacks
    def test_a_certificate_from_an_untrusted_ca_is_refused_with_502(self):
        origin, port = self.origin(trustme.CA().issue_cert("127.0.0.1"))
        url = self.accel("127.0.0.1", port, tls_ca=self.ca_path)
        response, _ = yield get(http_client(self), url + "/x")
        self.assertEqual(response.code, 502)
        warnings = [t for t in self.logs.texts("warn") if t.startswith("502")]
        self.assertIn("certificate verify failed", warnings[0])

    @defer.inlineCallbacks
    def test_the_system_trust_store_is_the_default(self):
        origin, port = self.origin(self.ca.issue_cert("127.0.0.1"))  # a private CA the system does not know
        url = self.accel("127.0.0.1", port)
        response, _ = yield get(http_client(self), url + "/x")
        self.assertEqual(response.code, 502)
        self.assertEqual(origin.seen, [])

    @defer.inlineCallbacks
    def test_tls_verify_false_connects_anyway_and_warns_loudly_at_start(self):
        origin, port = self.origin(trustme.CA().issue_cert("other.test"))
        url = self.accel("127.0.0.1", port, tls_verify=False)
        self.assertTrue(any("INSECURE" in t and "tls_verify = false" in t for t in self.logs.texts("warn")))
        response, _ = yield get(http_client(self), url + "/anyway")
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_a_client_certificate_is_presented(self):
        client_ca = trustme.CA()
        client = client_ca.issue_cert("accel.client.test")
        cert_path = os.path.join(self.dir, "client.pem")
        client.private_key_and_cert_chain_pem.write_to_path(cert_path)  # key and certificate in one file
        origin, port = self.origin(self.ca.issue_cert("127.0.0.1"), client_ca=client_ca)

        url = self.accel("127.0.0.1", port, tls_ca=self.ca_path)
        response, _ = yield get(http_client(self), url + "/anonymous")
        self.assertEqual(response.code, 502)  # the origin wants a client certificate
        self.assertIn("certificate required", [t for t in self.logs.texts("warn") if t.startswith("502")][-1])

        url = self.accel("127.0.0.1", port, tls_ca=self.ca_path, tls_client_cert=cert_path)
        response, _ = yield get(http_client(self), url + "/authenticated")
        self.assertEqual(response.code, 200)
        self.assertEqual([s.uri for s in origin.seen], [b"/authenticated"])
