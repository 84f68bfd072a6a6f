"""On-the-fly compression (accel.http.encoding, accel.http.compress, Responder.coded): the negotiation matrix
in pure code, then through a real accel in front of a real origin, with and without the cache."""

from __future__ import annotations

import gzip
from dataclasses import replace

import brotli
from twisted.trial import unittest
from twisted.web.iweb import UNKNOWN_LENGTH

from accel.cache import serving
from accel.config import CacheSettings, Compress, Config
from accel.http.compress import Encoder, encode
from accel.http.encoding import compressible, encoded_fields, negotiate
from tests.support import get, http_client, start_stack, temporary_directory
from tests.test_cache_e2e import cache_status, origin_hits, responder
from tests.test_fast_hits import counted_fast_hits

TEXT = b"".join(b"line %d of a compressible document\n" % i for i in range(400))  # ~14 KB
ON = Compress(enabled=True, brotli=True)
BR_GZIP = ("br", "gzip")


class NegotiationTests(unittest.TestCase):
    def test_matrix(self):
        cases = [
            (None, "identity"),  # no Accept-Encoding: as it is
            ("", "identity"),
            ("gzip", "gzip"),
            ("gzip, deflate, br", "br"),  # br preferred on a tie
            ("br;q=0.5, gzip", "gzip"),  # q-values honoured
            ("gzip;q=0", "identity"),
            ("gzip;q=0, br;q=0", "identity"),
            ("*", "br"),
            ("*;q=0, gzip", "gzip"),
            ("identity", "identity"),
            ("x-gzip", "gzip"),  # RFC 9110 §8.4.1.3
            ("GZIP; Q=1.0", "gzip"),
            ("gzip;q=0.5, identity", "identity"),  # identity has q=1
            ("gzip;q=0.5, identity;q=0.1", "gzip"),
            ("gzip;q=nonsense", "identity"),
            ("deflate", "identity"),  # not offered
        ]
        for accept, expected in cases:
            self.assertEqual(negotiate(accept, BR_GZIP), expected, accept)
        self.assertEqual(negotiate("br", ("gzip",)), "identity")  # brotli off: br is not offered
        self.assertEqual(negotiate("gzip, br", ("gzip",)), "gzip")

    def test_what_may_be_compressed(self):
        text = [("content-type", "text/html; charset=utf-8")]
        self.assertTrue(compressible(ON, 200, text, 5000))
        self.assertTrue(compressible(ON, 200, text, None))  # unknown length: compressed as it streams
        self.assertFalse(compressible(ON, 200, text, 1023))  # smaller than min_size
        self.assertFalse(compressible(replace(ON, enabled=False), 200, text, 5000))
        self.assertFalse(compressible(ON, 206, text + [("content-range", "bytes 0-9/5000")], 10))
        self.assertFalse(compressible(ON, 200, text + [("content-encoding", "gzip")], 5000))
        self.assertFalse(compressible(ON, 200, text + [("cache-control", "public, no-transform")], 5000))
        self.assertFalse(compressible(ON, 200, [("content-type", "image/png")], 5000))
        self.assertFalse(compressible(ON, 200, [], 5000))  # no type: unknown content
        self.assertFalse(compressible(ON, 404, text, 5000))
        for media_type in ("application/json", "application/javascript", "application/xml", "image/svg+xml",
                           "text/css", "TEXT/PLAIN"):
            self.assertTrue(compressible(ON, 200, [("Content-Type", media_type)], 5000), media_type)
        self.assertTrue(compressible(replace(ON, types=("image/png",)), 200, [("content-type", "image/png")], 5000))

    def test_fields_of_a_coded_response(self):
        fields = [("ETag", '"v1"'), ("Content-Length", "5000"), ("Content-Type", "text/plain")]
        self.assertEqual(encoded_fields(fields, "gzip"), [
            ("ETag", 'W/"v1"'), ("Content-Type", "text/plain"), ("Vary", "Accept-Encoding"), ("Content-Encoding", "gzip"),
        ])
        self.assertEqual(encoded_fields(fields, "identity"), fields + [("Vary", "Accept-Encoding")])
        self.assertEqual(encoded_fields([("Vary", "accept-encoding, Cookie"), ("ETag", 'W/"x"')], "br"),
                         [("Vary", "accept-encoding, Cookie"), ("ETag", 'W/"x"'), ("Content-Encoding", "br")])

    def test_streaming_encoder_output_decodes_to_the_input(self):
        for coding, decode in (("gzip", gzip.decompress), ("br", brotli.decompress)):
            encoder = Encoder(coding, 6)
            pieces = [encoder.compress(TEXT[i : i + 1000]) for i in range(0, len(TEXT), 1000)]
            self.assertTrue(all(pieces))  # flushed as it goes: nothing held back
            self.assertEqual(decode(b"".join(pieces) + encoder.finish()), TEXT)
            self.assertEqual(decode(encode(coding, 6, TEXT)), TEXT)


def decoded(response, body: bytes) -> bytes:
    coding = (response.headers.getRawHeaders(b"content-encoding") or [b"identity"])[0]
    return {b"gzip": gzip.decompress, b"br": brotli.decompress, b"identity": lambda b: b}[coding](body)


def header(response, name: bytes) -> bytes | None:
    values = response.headers.getRawHeaders(name)
    return b", ".join(values) if values else None


class ThroughAccelTests(unittest.TestCase):
    """No cache: the response is compressed as it streams."""

    def setUp(self):
        self.stack = start_stack(self, compress=ON)
        self.stack.origin.handlers[b"/doc"] = responder(TEXT, content_type="text/plain", etag='"d1"')
        self.agent = http_client(self)

    def fetch(self, path: str, **headers):
        return get(self.agent, self.stack.url + path, headers={k.replace("_", "-").encode(): v.encode()
                                                                for k, v in headers.items()})

    async def test_negotiation_through_accel(self):
        for accept, coding in (("gzip", b"gzip"), ("br, gzip", b"br"), ("gzip;q=0", None), (None, None)):
            headers = {} if accept is None else {"accept_encoding": accept}
            response, body = await self.fetch("/doc", **headers)
            self.assertEqual(response.code, 200)
            self.assertEqual(header(response, b"content-encoding"), coding, accept)
            self.assertEqual(decoded(response, body), TEXT)
            self.assertEqual(header(response, b"vary"), b"Accept-Encoding")
            self.assertEqual(header(response, b"etag"), b'W/"d1"' if coding else b'"d1"')
            if coding:
                self.assertEqual(response.length, UNKNOWN_LENGTH)  # streamed: chunked
                self.assertLess(len(body), len(TEXT) // 4)
            else:
                self.assertEqual(response.length, len(TEXT))
        # the origin was asked for identity: accel compresses, the origin's Accept-Encoding is the client's
        self.assertEqual(self.stack.origin.seen[0].header(b"accept-encoding"), [b"gzip"])

    async def test_what_is_never_compressed(self):
        origin = self.stack.origin
        origin.handlers[b"/no-transform"] = responder(TEXT, content_type="text/plain", cache_control="no-transform")
        encoded = gzip.compress(TEXT)
        origin.handlers[b"/encoded"] = responder(encoded, content_type="text/plain", content_encoding="gzip")
        origin.handlers[b"/small"] = responder(b"tiny", content_type="text/plain")
        origin.handlers[b"/png"] = responder(TEXT, content_type="image/png")
        for path, body in (("/no-transform", TEXT), ("/encoded", encoded), ("/small", b"tiny"), ("/png", TEXT)):
            response, got = await self.fetch(path, accept_encoding="gzip, br")
            self.assertEqual(got, body, path)
            self.assertEqual(header(response, b"content-encoding"), b"gzip" if path == "/encoded" else None, path)
            self.assertIsNone(header(response, b"vary"), path)

    async def test_range_is_answered_as_it_is(self):
        def partial(request):
            request.setResponseCode(206)
            request.setHeader(b"content-type", b"text/plain")
            request.setHeader(b"content-range", b"bytes 0-4999/%d" % len(TEXT))
            return TEXT[:5000]

        self.stack.origin.handlers[b"/range"] = partial
        response, body = await self.fetch("/range", accept_encoding="gzip", range="bytes=0-4999")
        self.assertEqual((response.code, body), (206, TEXT[:5000]))
        self.assertIsNone(header(response, b"content-encoding"))
        response, body = await self.fetch("/doc", accept_encoding="gzip", range="bytes=0-9")  # origin ignores Range
        self.assertEqual((response.code, body, header(response, b"content-encoding")), (200, TEXT, None))

    async def test_a_large_response_of_unknown_length_streams_compressed(self):
        size = 8 << 20

        def stream(request):
            request.setHeader(b"content-type", b"text/plain")
            for _ in range(size // len(TEXT[:8192])):
                request.write(TEXT[:8192])
            return b""

        self.stack.origin.handlers[b"/stream"] = stream
        response, body = await self.fetch("/stream", accept_encoding="gzip")
        self.assertEqual(header(response, b"content-encoding"), b"gzip")
        self.assertEqual(decoded(response, body), TEXT[:8192] * (size // 8192))


class CachedTests(unittest.TestCase):
    """With the cache: each coding made once, served by the fast path, Range from identity, purge removes all."""

    def setUp(self):
        config = Config(cache=CacheSettings(dir=temporary_directory(self)))
        self.stack = start_stack(self, config=config, compress=ON)
        self.stack.origin.handlers[b"/doc"] = responder(TEXT, content_type="text/plain", etag='"d1"',
                                                        cache_control="max-age=600")
        self.agent = http_client(self)
        self.encoded = []
        original = serving.encode
        self.patch(serving, "encode", lambda coding, level, body: (self.encoded.append(coding), original(coding, level, body))[1])

    def fetch(self, path: str = "/doc", method=b"GET", **headers):
        return get(self.agent, self.stack.url + path, method=method,
                   headers={k.replace("_", "-").encode(): v.encode() for k, v in headers.items()})

    async def test_each_coding_is_made_once_and_hits_take_the_fast_path(self):
        fast = counted_fast_hits(self, self.stack)
        response, body = await self.fetch(accept_encoding="gzip")  # the miss: compressed as it streams
        self.assertIn("miss", cache_status(response))
        self.assertEqual((header(response, b"content-encoding"), decoded(response, body)), (b"gzip", TEXT))
        for _ in range(3):
            for accept, coding in (("gzip", b"gzip"), ("br", b"br"), ("gzip, br", b"br"), ("identity", None), (None, None)):
                headers = {} if accept is None else {"accept_encoding": accept}
                response, body = await self.fetch(**headers)
                self.assertIn("hit", cache_status(response))
                self.assertEqual(header(response, b"content-encoding"), coding, accept)
                self.assertEqual(decoded(response, body), TEXT)
                self.assertEqual(header(response, b"vary"), b"Accept-Encoding")
                self.assertEqual(header(response, b"etag"), b'W/"d1"' if coding else b'"d1"')
                self.assertEqual(response.length, len(body))
        self.assertEqual(origin_hits(self.stack, b"/doc"), 1)
        self.assertEqual(sorted(self.encoded), ["br", "gzip"])  # once each, whatever the number of hits
        self.assertEqual(len(fast), 14)  # every hit but the first (which reads the disk tier into memory)

    async def test_codings_count_in_the_memory_tier(self):
        memory = self.stack.accel_site.cache.store.memory
        await self.fetch()
        await self.fetch()  # a hit: the response is in the memory tier
        before = memory.stats()["bytes"]
        response, gzipped = await self.fetch(accept_encoding="gzip")
        self.assertEqual(header(response, b"content-encoding"), b"gzip")
        self.assertEqual(memory.stats()["bytes"], before + len(gzipped))
        response, brotlied = await self.fetch(accept_encoding="br")
        self.assertEqual(memory.stats()["bytes"], before + len(gzipped) + len(brotlied))
        await self.fetch(accept_encoding="br")  # made once: charged once
        self.assertEqual(memory.stats()["bytes"], before + len(gzipped) + len(brotlied))
        await self.fetch(method=b"PURGE")
        self.assertEqual(memory.stats()["bytes"], 0)

    async def test_the_miss_keeps_its_cache_status_and_an_upstream_one(self):
        self.stack.origin.handlers[b"/upstream"] = responder(TEXT, content_type="text/plain", cache_status="upstream; hit",
                                                             cache_control="max-age=600")
        response, body = await self.fetch("/upstream", accept_encoding="gzip")
        self.assertEqual(header(response, b"content-encoding"), b"gzip")
        statuses = response.headers.getRawHeaders(b"cache-status")
        self.assertEqual(len(statuses), 2, statuses)
        self.assertIn(b"upstream; hit", statuses)

    async def test_the_general_path_serves_codings_too(self):
        await self.fetch(accept_encoding="gzip")
        # a conditional that does not match and a request directive keep the request off the fast path
        response, body = await self.fetch(accept_encoding="gzip", if_none_match='"other"')
        self.assertEqual((response.code, header(response, b"content-encoding")), (200, b"gzip"))
        self.assertEqual(decoded(response, body), TEXT)
        response, body = await self.fetch(accept_encoding="br", cache_control="max-stale=10")
        self.assertEqual((header(response, b"content-encoding"), decoded(response, body)), (b"br", TEXT))
        response, _ = await self.fetch(accept_encoding="gzip", if_none_match='W/"d1"')
        self.assertEqual(response.code, 304)
        response, body = await self.fetch(method=b"HEAD", accept_encoding="gzip")
        self.assertEqual((header(response, b"content-encoding"), body), (b"gzip", b""))
        self.assertEqual(origin_hits(self.stack, b"/doc"), 1)

    async def test_range_is_answered_from_identity(self):
        await self.fetch(accept_encoding="gzip")
        response, body = await self.fetch(accept_encoding="gzip", range="bytes=10-29")
        self.assertEqual((response.code, body), (206, TEXT[10:30]))
        self.assertIsNone(header(response, b"content-encoding"))
        self.assertEqual(header(response, b"etag"), b'"d1"')

    async def test_purge_removes_every_encoding(self):
        for accept in ("identity", "gzip", "br", "gzip", "br"):
            await self.fetch(accept_encoding=accept)
        self.assertEqual(sorted(self.encoded), ["br", "gzip"])
        response, _ = await self.fetch(method=b"PURGE")
        self.assertEqual(response.code, 200)
        for accept in ("gzip", "br"):
            response, body = await self.fetch(accept_encoding=accept)
            self.assertIn("miss", cache_status(response), accept)  # no coding of it outlived the purge
            self.assertEqual(decoded(response, body), TEXT)
            response, _ = await self.fetch(method=b"PURGE")
        self.assertEqual(origin_hits(self.stack, b"/doc"), 3)
