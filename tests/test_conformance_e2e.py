"""Issue 15's behaviours through real origins: RFC 9213 targeted fields, unknown transfer codings, interim
responses, no-cache and must-revalidate, validators, Vary on revalidation, HTTP-date leniency, Set-Cookie."""

from __future__ import annotations

from io import BytesIO

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest
from twisted.web.client import FileBodyProducer

from tests.raw_origin import RawOrigin, WatchingClient, accel_in_front, cached, parts, request
from tests.support import get, http_client, raw_request
from tests.test_cache_e2e import cache_status, cached_stack, origin_hits, responder


class TargetedFieldTests(unittest.TestCase):
    """RFC 9213 §2.1-§2.2."""

    @defer.inlineCallbacks
    def test_private_or_no_cache_in_the_targeted_field_prevent_reuse_without_validation(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/private"] = responder(cache_control="max-age=60", cdn_cache_control="private")
        stack.origin.handlers[b"/no-cache"] = responder(cache_control="max-age=60", cdn_cache_control="no-cache",
                                                        etag='"v"')
        agent = http_client(self)
        for path in ("/private", "/no-cache"):
            for _ in range(2):
                response, _ = yield get(agent, stack.url + path)
                self.assertFalse(cache_status(response).startswith("accel; hit"), path)
        self.assertEqual(origin_hits(stack, b"/private"), 2)
        self.assertEqual(origin_hits(stack, b"/no-cache"), 2)
        self.assertEqual(stack.origin.seen[-1].header(b"if-none-match"), [b'"v"'])  # revalidated

    @defer.inlineCallbacks
    def test_an_invalid_targeted_field_is_ignored_and_cache_control_decides(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/string"] = responder(cache_control="max-age=60", cdn_cache_control='max-age="0"')
        stack.origin.handlers[b"/decimal"] = responder(cache_control="max-age=60", cdn_cache_control="max-age=1.5")
        stack.origin.handlers[b"/broken"] = responder(cache_control="max-age=60", cdn_cache_control="max-age=0,,")
        agent = http_client(self)
        for path in ("/string", "/decimal", "/broken"):
            yield get(agent, stack.url + path)
            response, _ = yield get(agent, stack.url + path)
            self.assertTrue(cache_status(response).startswith("accel; hit"), path)


class TransferCodingTests(unittest.TestCase):
    """RFC 9112 §6.3 item 4: a final coding other than chunked → the body runs until the close."""

    @defer.inlineCallbacks
    def test_an_unknown_transfer_coding_is_read_until_the_close_relayed_and_stored_without_the_field(self):
        def answer(connection, _):
            connection.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: x-custom\r\n\r\n"
                             b"raw bytes")
            connection.transport.loseConnection()

        origin = RawOrigin(self, answer)
        port = accel_in_front(self, origin.url, config=cached(self))
        head, body = parts((yield raw_request(port, request(b"/te"))))
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertIn(b"raw bytes", body)
        head, body = parts((yield raw_request(port, request(b"/te"))))
        self.assertIn(b"hit", head)
        self.assertNotIn(b"x-custom", head.lower())
        self.assertEqual(body, b"raw bytes")
        self.assertEqual(len(origin.requests), 1)


    @defer.inlineCallbacks
    def test_an_unknown_transfer_coding_cut_by_a_reset_is_not_stored(self):
        origin_connections = []

        def answer(connection, _):
            connection.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: gzip\r\n\r\npart")
            origin_connections.append(connection)

        origin = RawOrigin(self, answer)
        port = accel_in_front(self, origin.url, config=cached(self))
        client = WatchingClient(request(b"/cut"), lambda data: b"part" in data and origin_connections[0].reset())
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield client.closed
        origin.answer = lambda c, r: c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole")
        head, body = parts((yield raw_request(port, request(b"/cut"))))
        self.assertEqual(body, b"whole")
        self.assertEqual(len(origin.requests), 2)


class InterimResponseTests(unittest.TestCase):
    """RFC 9110 §15.2."""

    @defer.inlineCallbacks
    def test_interim_fields_do_not_leak_into_the_stored_response(self):
        def answer(connection, _):
            connection.write(b"HTTP/1.1 102 Processing\r\nX-Interim: a\r\n\r\n"
                             b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nX-Interim: b\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok")

        origin = RawOrigin(self, answer)
        port = accel_in_front(self, origin.url, config=cached(self))
        first = yield raw_request(port, request(b"/i"))
        self.assertTrue(first.startswith(b"HTTP/1.1 102 Processing\r\n"), first)
        self.assertIn(b"HTTP/1.1 103 Early Hints\r\n", first)
        final = first[first.index(b"HTTP/1.1 200"):]
        self.assertNotIn(b"x-interim", final.lower())
        self.assertNotIn(b"link:", final.lower())
        head, body = parts((yield raw_request(port, request(b"/i"))))
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertIn(b"hit", head)
        self.assertNotIn(b"x-interim", head.lower())
        self.assertNotIn(b"link:", head.lower())
        self.assertEqual(len(origin.requests), 1)


class RevalidationTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_no_cache_responses_are_stored_and_revalidated_on_every_use(self):
        stack = cached_stack(self)
        expires = "Thu, 01 Jan 2099 00:00:00 GMT"
        stack.origin.handlers[b"/nc"] = responder(cache_control="no-cache, max-age=600", expires=expires, etag='"n"')
        agent = http_client(self)
        first, _ = yield get(agent, stack.url + "/nc")
        self.assertIn("stored", cache_status(first))
        stack.origin.handlers[b"/nc"] = lambda request: (request.setResponseCode(304), request.setHeader(b"etag", b'"n"'),
                                                         b"")[2]
        for _ in range(2):
            response, body = yield get(agent, stack.url + "/nc")
            self.assertEqual(body, b"hello world")
        self.assertEqual(origin_hits(stack, b"/nc"), 3)
        self.assertEqual([s.header(b"if-none-match") for s in stack.origin.seen[1:]], [[b'"n"'], [b'"n"']])

    @defer.inlineCallbacks
    def test_must_revalidate_is_never_served_stale_even_when_asked_or_on_error(self):
        stack = cached_stack(self, grace=600)  # §5.2.2.2 outranks the operator's grace too
        for path, cc in [(b"/mr", "max-age=0, must-revalidate, stale-while-revalidate=60, stale-if-error=60"),
                         (b"/pr", "max-age=0, proxy-revalidate, stale-if-error=60"),
                         (b"/sm", "s-maxage=0, stale-while-revalidate=60")]:
            stack.origin.handlers[path] = responder(cache_control=cc)
        agent = http_client(self)
        for path in (b"/mr", b"/pr", b"/sm"):
            yield get(agent, stack.url + path.decode())
            stack.origin.handlers[path] = lambda request: (request.setResponseCode(503), b"down")[1]
            response, _ = yield get(agent, stack.url + path.decode(), headers={b"cache-control": b"max-stale=600"})
            self.assertEqual(response.code, 503, path)  # the origin's error, not the stale response

    @defer.inlineCallbacks
    def test_last_modified_alone_is_revalidated_with_if_modified_since_and_both_with_both(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/lm"] = responder(cache_control="max-age=0", last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        stack.origin.handlers[b"/both"] = responder(cache_control="max-age=0", etag='"b"',
                                                    last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        agent = http_client(self)
        for path in ("/lm", "/both"):
            yield get(agent, stack.url + path)
            yield get(agent, stack.url + path)
        lm, both = [s for s in stack.origin.seen if s.uri == b"/lm"][1], [s for s in stack.origin.seen if s.uri == b"/both"][1]
        self.assertEqual(lm.header(b"if-modified-since"), [b"Mon, 01 Jan 2024 00:00:00 GMT"])
        self.assertEqual(both.header(b"if-modified-since"), [b"Mon, 01 Jan 2024 00:00:00 GMT"])
        self.assertEqual(both.header(b"if-none-match"), [b'"b"'])

    @defer.inlineCallbacks
    def test_if_modified_since_without_last_modified_is_answered_from_the_stored_date(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/d"] = responder(cache_control="max-age=600")
        agent = http_client(self)
        first, _ = yield get(agent, stack.url + "/d")
        date = first.headers.getRawHeaders(b"date")[0]
        response, body = yield get(agent, stack.url + "/d", headers={b"if-modified-since": date})
        self.assertEqual((response.code, body), (304, b""))
        self.assertEqual(response.headers.getRawHeaders(b"date"), [date])
        self.assertEqual(origin_hits(stack, b"/d"), 1)

    @defer.inlineCallbacks
    def test_a_generated_conditional_request_carries_the_stored_requests_vary_values(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/v"] = responder(cache_control="max-age=0", etag='"v"', vary="Accept-Encoding")
        agent = http_client(self)
        yield get(agent, stack.url + "/v", headers={b"accept-encoding": b"gzip, br"})
        yield get(agent, stack.url + "/v", headers={b"accept-encoding": b"BR,gzip"})
        self.assertEqual(origin_hits(stack, b"/v"), 2)
        revalidation = stack.origin.seen[1]
        self.assertEqual(revalidation.header(b"if-none-match"), [b'"v"'])
        self.assertEqual(revalidation.header(b"accept-encoding"), [b"br, gzip"])  # the stored request's, reduced


class LenientDateTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_dates_in_any_letter_case_give_freshness(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/x"] = responder(expires="THU, 01 JAN 2099 00:00:00 gmt")
        agent = http_client(self)
        yield get(agent, stack.url + "/x")
        response, _ = yield get(agent, stack.url + "/x")
        self.assertTrue(cache_status(response).startswith("accel; hit"))


class VaryNormalisationTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_accept_language_member_order_q_values_and_whitespace_share_a_variant(self):
        stack = cached_stack(self)
        stack.origin.handlers[b"/l"] = responder(cache_control="max-age=60", vary="Accept-Language, X-Thing")
        agent = http_client(self)
        yield get(agent, stack.url + "/l", headers={b"accept-language": b"en;q=0.5, de", b"x-thing": b"a  ,b"})
        response, _ = yield get(agent, stack.url + "/l",
                                headers={b"accept-language": b"DE;q=1.0,en; q=0.50", b"x-thing": b"a,b"})
        self.assertTrue(cache_status(response).startswith("accel; hit"))
        self.assertEqual(origin_hits(stack, b"/l"), 1)


class SetCookieTests(unittest.TestCase):
    """RFC 9111 §3: a shared cache may store a response with Set-Cookie; ``store_set_cookie`` chooses."""

    @defer.inlineCallbacks
    def test_keep_stores_and_replays_set_cookie_true_strips_it_false_does_not_store(self):
        answers = {}
        for setting in (False, True, "keep"):
            stack = cached_stack(self, store_set_cookie=setting)
            stack.origin.handlers[b"/c"] = responder(cache_control="max-age=60", set_cookie="theme=dark")
            agent = http_client(self)
            yield get(agent, stack.url + "/c")
            second, _ = yield get(agent, stack.url + "/c")
            answers[setting] = (origin_hits(stack, b"/c"), second.headers.getRawHeaders(b"set-cookie"))
        self.assertEqual(answers, {False: (2, [b"theme=dark"]), True: (1, None), "keep": (1, [b"theme=dark"])})


class PostResponseTests(unittest.TestCase):
    """RFC 9111 §4 with RFC 9110 §9.3.3."""

    @defer.inlineCallbacks
    def test_a_fresh_post_response_with_content_location_of_its_uri_answers_later_gets(self):
        stack = cached_stack(self)
        path = "/orders/7"

        def answer(request):
            request.setHeader(b"cache-control", b"max-age=60")
            if request.method == b"POST":
                request.setHeader(b"content-location", stack.url.encode() + path.encode())
            return b"from " + request.method

        stack.origin.handlers[path.encode()] = answer
        stack.origin.handlers[b"/elsewhere"] = responder(b"posted", cache_control="max-age=60", content_location="/other")
        agent = http_client(self)
        posted, body = yield get(agent, stack.url + path, method=b"POST", body=FileBodyProducer(BytesIO(b"x=1")))
        self.assertEqual(body, b"from POST")
        self.assertIn("stored", cache_status(posted))
        response, body = yield get(agent, stack.url + path)
        self.assertEqual(body, b"from POST")
        self.assertTrue(cache_status(response).startswith("accel; hit"))
        yield get(agent, stack.url + "/elsewhere", method=b"POST", body=FileBodyProducer(BytesIO(b"x=1")))
        response, body = yield get(agent, stack.url + "/elsewhere")  # Content-Location names another URI
        self.assertEqual(origin_hits(stack, b"/elsewhere"), 2)
        self.assertEqual([s.method for s in stack.origin.seen if s.uri == path.encode()], [b"POST"])


BODY = bytes(range(256)) * 4  # 1024 bytes


def ranged_origin(request):
    """An origin that answers Range with one byte range (a strong ETag, fresh for a minute)."""
    request.setHeader(b"cache-control", b"max-age=60")
    request.setHeader(b"etag", b'"r1"')
    first, _, last = request.getHeader(b"range").decode().partition("=")[2].partition("-")
    first, last = int(first), min(int(last or len(BODY) - 1), len(BODY) - 1)
    request.setResponseCode(206)
    request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, len(BODY)))
    return BODY[first : last + 1]


class PartialContentTests(unittest.TestCase):
    """RFC 9111 §3.3-§3.4."""

    @defer.inlineCallbacks
    def test_stored_pieces_answer_ranges_they_cover_and_combine_into_a_complete_response(self):
        stack = cached_stack(self, range_fetch_max=0)  # Range misses pass through to the ranged origin
        stack.origin.handlers[b"/p"] = ranged_origin
        agent = http_client(self)
        response, body = yield get(agent, stack.url + "/p", headers={b"range": b"bytes=0-511"})
        self.assertEqual((response.code, body), (206, BODY[:512]))
        self.assertIn("stored", cache_status(response))
        for asked, first, last in [(b"bytes=100-199", 100, 199), (b"bytes=500-", None, None), (b"bytes=0-511", 0, 511)]:
            response, body = yield get(agent, stack.url + "/p", headers={b"range": asked})
            if first is None:  # 500- runs past the piece: the origin answers (and its piece is stored)
                self.assertEqual(body, BODY[500:])
                continue
            self.assertTrue(cache_status(response).startswith("accel; hit"), asked)
            self.assertEqual((response.code, body), (206, BODY[first : last + 1]))
            self.assertEqual(response.headers.getRawHeaders(b"content-range"),
                             [b"bytes %d-%d/1024" % (first, last)])
        self.assertEqual(origin_hits(stack, b"/p"), 2)
        # The pieces 0-511 and 500-1023 cover it all: now stored whole, for plain GETs, suffix ranges too.
        response, body = yield get(agent, stack.url + "/p")
        self.assertEqual((response.code, body), (200, BODY))
        self.assertTrue(cache_status(response).startswith("accel; hit"))
        self.assertIsNone(response.headers.getRawHeaders(b"content-range"))
        response, body = yield get(agent, stack.url + "/p", headers={b"range": b"bytes=-24"})
        self.assertEqual((response.code, body), (206, BODY[-24:]))
        self.assertEqual(origin_hits(stack, b"/p"), 2)

    @defer.inlineCallbacks
    def test_a_piece_never_answers_a_plain_get_or_a_range_outside_it(self):
        stack = cached_stack(self, range_fetch_max=0)  # Range misses pass through to the ranged origin
        stack.origin.handlers[b"/q"] = ranged_origin
        agent = http_client(self)
        yield get(agent, stack.url + "/q", headers={b"range": b"bytes=0-9"})
        stack.origin.handlers[b"/q"] = responder(BODY, cache_control="max-age=60", etag='"r1"')
        response, body = yield get(agent, stack.url + "/q")
        self.assertEqual((response.code, body), (200, BODY))
        self.assertEqual(origin_hits(stack, b"/q"), 2)
