"""Malformed and hostile requests get the right 4xx and never reach the origin (RFC 9112)."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.resource import Resource

from accel.config import Config
from accel.http.errors import ErrorPages
from accel.http.server import AccelSite
from tests.support import raw_request, start_stack, temporary_directory

CASES = {
    "both Content-Length and Transfer-Encoding (§6.1)": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "Transfer-Encoding then Content-Length": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    "conflicting Content-Lengths (§6.3)": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "Content-Length list": (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    "negative Content-Length": (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    "invalid chunk size (§7.1)": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "unknown transfer coding": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "obs-fold (§5.2)": (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n", 400),
    "missing Host on HTTP/1.1 (§3.2)": (b"GET /x HTTP/1.1\r\nUser-Agent: t\r\n\r\n", 400),
    "two Host fields (§3.2)": (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "space before colon (§5.1)": (b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    "bad request line": (b"GET /x HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
    "HTTP/2.0 request line": (b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    "oversized header section": (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    "too many header fields": (
        b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n",
        431,
    ),
    "overlong request-target": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    "CONNECT (not a forward proxy)": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n", 405),
    "absolute-form for a foreign host": (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", 421),
    "TRACE": (b"TRACE / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 405),
}


def _status(response: bytes) -> int:
    first = response.split(b"\r\n", 1)[0]
    return int(first.split(b" ")[1]) if first.startswith(b"HTTP/1.") else 0


class HostileInputTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_each_hostile_request_is_refused_before_the_origin(self):
        stack = start_stack(self)
        port = stack.accel_port.getHost().port
        results = {}
        for name, (payload, _) in CASES.items():
            response = yield raw_request(port, payload, timeout=3)
            results[name] = _status(response)
        self.assertEqual(results, {name: code for name, (_, code) in CASES.items()})
        self.assertEqual(stack.origin.seen, [])

    @defer.inlineCallbacks
    def test_absolute_form_for_our_own_name_is_served(self):
        stack = start_stack(self)
        response = yield raw_request(
            stack.accel_port.getHost().port,
            b"GET http://localhost/abs?q=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
        )
        self.assertEqual(_status(response), 200)
        self.assertEqual(stack.origin.seen[0].uri, b"/abs?q=1")
        self.assertEqual(stack.origin.seen[0].header(b"x-forwarded-host"), [b"localhost"])

    @defer.inlineCallbacks
    def test_smuggling_attempt_does_not_desynchronise_the_origin(self):
        stack = start_stack(self)
        smuggled = (
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        response = yield raw_request(stack.accel_port.getHost().port, smuggled)
        self.assertEqual(_status(response), 400)
        self.assertEqual(response.count(b"HTTP/1.1 "), 1)
        self.assertEqual(stack.origin.seen, [])

    @defer.inlineCallbacks
    def test_pipelined_requests_are_answered_in_order(self):
        stack = start_stack(self)
        response = yield raw_request(
            stack.accel_port.getHost().port,
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        self.assertEqual(response.count(b"HTTP/1.1 200"), 3)
        self.assertEqual([s.uri for s in stack.origin.seen], [b"/one", b"/two", b"/three"])
        self.assertEqual(stack.origin.seen[1].body, b"abc")


def error_documents(testcase, codes) -> dict[int, str]:
    """One small HTML file per status code, naming it."""
    directory = temporary_directory(testcase)
    documents = {}
    for code in codes:
        documents[code] = os.path.join(directory, f"{code}.html")
        with open(documents[code], "w") as f:
            f.write(f"<p>our own {code} page</p>\n")
    return documents


class ErrorDocumentTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_refusals_use_the_configured_error_documents(self):
        stack = start_stack(self, Config(error_documents=error_documents(self, (400, 414, 431))))
        port = stack.accel_port.getHost().port
        for name, code in (("obs-fold (§5.2)", 400), ("missing Host on HTTP/1.1 (§3.2)", 400),
                           ("overlong request-target", 414), ("too many header fields", 431),
                           ("oversized header section", 431)):
            response = yield raw_request(port, CASES[name][0], timeout=3)
            head, _, body = response.partition(b"\r\n\r\n")
            self.assertEqual((_status(response), body), (code, b"<p>our own %d page</p>\n" % code), name)
            self.assertIn(b"\r\nContent-Type: text/html; charset=utf-8\r\n", head)
            self.assertIn(b"\r\nContent-Length: %d\r\n" % len(body), head)
            self.assertTrue(head.endswith(b"\r\nConnection: close"), head)
        # a refusal of the resource (not of the channel) uses them too
        response = yield raw_request(port, b"GET /a/%2Fb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertEqual(response.partition(b"\r\n\r\n")[2], b"<p>our own 400 page</p>\n")
        self.assertEqual(stack.origin.seen, [])

    @defer.inlineCallbacks
    def test_a_failure_inside_accel_uses_the_500_document(self):
        class Broken(Resource):
            isLeaf = True

            def render(self, request):
                raise RuntimeError("a bug")

        site = AccelSite(Broken(), errors=ErrorPages(error_documents(self, (500,))), reactor=reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        response = yield raw_request(port.getHost().port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertEqual((_status(response), response.partition(b"\r\n\r\n")[2]), (500, b"<p>our own 500 page</p>\n"))
        self.flushLoggedErrors(RuntimeError)
