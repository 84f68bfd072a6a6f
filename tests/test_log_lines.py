"""Error-log lines about a request are plain text naming the client address, Host, method and target: no
Python reprs such as b'/x' or IPv4Address(...)."""

from __future__ import annotations


from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from accel.config import Route, parse_origin
from accel.http.accesslog import peer_label, request_label
from tests.support import closed_port, get, http_client, raw_request, start_stack


class LogLineTests(unittest.TestCase):
    def setUp(self):
        self.lines: list[str] = []
        observer = lambda event: self.lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    @defer.inlineCallbacks
    def test_a_502_names_client_host_method_and_target(self):
        route = Route(prefix="/", origin=parse_origin(f"http://127.0.0.1:{closed_port()}/"))
        stack = start_stack(self, routes=[route])
        response, _ = yield get(http_client(self), stack.url + "/slow?d=5", headers={b"host": b"www.example.com"})
        self.assertEqual(response.code, 502)
        line = next(l for l in self.lines if l.startswith("502 for"))
        self.assertRegex(line, r"^502 for 127\.0\.0\.1:\d+ www\.example\.com GET /slow\?d=5: ")
        self.assertNotIn("b'", line)

    @defer.inlineCallbacks
    def test_a_refused_request_names_the_peer_in_plain_text(self):
        stack = start_stack(self)
        yield raw_request(stack.accel_port.getHost().port, b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n")
        line = next(l for l in self.lines if l.startswith("refused a request"))
        self.assertRegex(line, r"^refused a request from 127\.0\.0\.1:\d+: 400$")


def test_labels_of_requests_without_a_host_and_ipv6_peers():
    class Address:
        host, port = "::1", 8080

    class Request:
        method, uri = b"GET", b"/x"

        def getClientAddress(self):
            return Address()

        def getHeader(self, name):
            return None

    assert peer_label(Address()) == "[::1]:8080"
    assert request_label(Request()) == "[::1]:8080 - GET /x"
