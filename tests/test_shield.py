"""Shielding the origin (issue 16), end to end through a real origin on loopback: stale content on origin
errors by default, client reloads, HEAD misses fetched as GET, responses that can never be reused, key
normalisation and Range misses."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from accel.cache.outage import RETRY_AFTER, WARN_EVERY, Outages
from accel.config import CacheSettings, Config
from tests.support import get, http_client, start_stack, temporary_directory
from tests.test_cache_e2e import cache_status, origin_hits, responder


def shield_stack(testcase, access_log: bool = False, route_options=None, **settings):
    directory = temporary_directory(testcase)
    stack = start_stack(testcase, config=Config(cache=CacheSettings(dir=directory, **settings)), **(route_options or {}))
    if access_log:
        stack.accel_site.stopFactory()
        stack.accel_site.access_log = os.path.join(directory, "access.log")
        stack.accel_site.startFactory()
    return stack


def access_lines(stack) -> list[str]:
    stack.accel_site.stopFactory()
    with open(stack.accel_site.access_log) as f:
        return f.read().splitlines()


def closing(handler):
    """``handler`` answering with Connection: close, so that accel keeps no connection once the origin is down."""

    def handle(request):
        request.setHeader(b"connection", b"close")
        return handler(request)

    return handle


def validating(body: bytes, cache_control: str = "max-age=60", etag: bytes = b'"v1"'):
    """An origin handler with an ETag that answers a matching If-None-Match with 304."""

    def handle(request):
        request.setHeader(b"cache-control", cache_control.encode())
        request.setHeader(b"etag", etag)
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        return body

    return handle


class StaleOnErrorTests(unittest.TestCase):
    def setUp(self):
        self.logged: list[str] = []
        observer = lambda event: self.logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    @defer.inlineCallbacks
    def test_by_default_a_refusing_origin_gets_stale_content_logged_as_stale_without_fwd_status(self):
        stack = shield_stack(self, access_log=True)
        stack.origin.handlers[b"/page"] = closing(responder(b"kept", cache_control="max-age=0", etag='"a"'))
        agent = http_client(self)
        yield get(agent, stack.url + "/page")
        yield stack.origin_port.stopListening()  # connections are refused from now on
        for _ in range(3):
            response, body = yield get(agent, stack.url + "/page")
            self.assertEqual((response.code, body), (200, b"kept"))
            status = cache_status(response)
            self.assertIn("fwd=stale", status)
            self.assertNotIn("fwd-status", status)  # the origin never answered (RFC 9211 §2.3)
        lines = access_lines(stack)
        self.assertEqual([line.rsplit(" ", 1)[1] for line in lines], ["cache=miss"] + ["cache=stale"] * 3)
        warnings = [line for line in self.logged if line.startswith("origin ") and "is failing" in line]
        self.assertEqual(len(warnings), 1)
        self.assertIn("refused the connection", warnings[0])

    @defer.inlineCallbacks
    def test_a_5xx_gets_stale_content_with_the_origins_status(self):
        stack = shield_stack(self, access_log=True)
        state = {"down": False}
        stack.origin.handlers[b"/flaky"] = failing_when(state, b"last-modified", b"Mon, 02 Jan 2006 15:04:05 GMT")
        agent = http_client(self)
        yield get(agent, stack.url + "/flaky")
        state["down"] = True
        response, body = yield get(agent, stack.url + "/flaky")
        self.assertEqual((response.code, body), (200, b"good"))
        self.assertIn("fwd=stale; fwd-status=503", cache_status(response))
        self.assertTrue(access_lines(stack)[1].endswith(" cache=stale"))

    @defer.inlineCallbacks
    def test_stale_content_past_the_grace_is_not_served(self):
        stack = shield_stack(self, grace=0)
        stack.origin.handlers[b"/page"] = closing(responder(b"kept", cache_control="max-age=0", etag='"a"'))
        agent = http_client(self)
        yield get(agent, stack.url + "/page")
        yield stack.origin_port.stopListening()
        response, _ = yield get(agent, stack.url + "/page")
        self.assertEqual(response.code, 502)

    @defer.inlineCallbacks
    def test_a_reload_while_the_origin_is_down_gets_stale_content(self):
        stack = shield_stack(self)
        stack.origin.handlers[b"/page"] = closing(responder(b"kept", cache_control="max-age=0", etag='"a"'))
        agent = http_client(self)
        yield get(agent, stack.url + "/page")
        yield stack.origin_port.stopListening()
        response, body = yield get(agent, stack.url + "/page", headers={b"cache-control": [b"no-cache"]})
        self.assertEqual((response.code, body), (200, b"kept"))

    @defer.inlineCallbacks
    def test_a_failing_origin_is_not_asked_again_for_a_second_while_stale_content_serves(self):
        stack = shield_stack(self)
        state = {"down": False}
        stack.origin.handlers[b"/f"] = failing_when(state, b"etag", b'"a"')
        agent = http_client(self)
        yield get(agent, stack.url + "/f")
        layer = stack.accel_site.cache.layers[0]
        now = [layer.clock() + 5]
        layer.clock = lambda: now[0]
        state["down"] = True
        for reload in (False, True, False):  # a client's reload rests the origin too
            headers = {b"cache-control": [b"no-cache"]} if reload else {}
            response, body = yield get(agent, stack.url + "/f", headers=headers)
            self.assertEqual((response.code, body), (200, b"good"))
        self.assertEqual(origin_hits(stack, b"/f"), 2)  # the first fetch and one failure
        now[0] += RETRY_AFTER
        yield get(agent, stack.url + "/f")
        self.assertEqual(origin_hits(stack, b"/f"), 3)


def test_a_failed_origin_rests_and_is_warned_about_once_a_minute():
    outages = Outages()
    assert outages.failed("o", now=100.0) == 1  # the first failure warns
    assert outages.resting("o", now=100.0 + RETRY_AFTER / 2)
    assert not outages.resting("o", now=100.0 + RETRY_AFTER)
    assert outages.failed("o", now=110.0) is None
    assert outages.failed("o", now=120.0) is None
    assert outages.failed("o", now=100.0 + WARN_EVERY) == 3  # the next warning counts the failures since the last
    assert not outages.resting("other", now=100.0)
    outages.answered("o")
    assert not outages.resting("o", now=100.0 + WARN_EVERY)
    assert outages.failed("o", now=100.0 + WARN_EVERY + 1) == 1  # a new outage warns at once


class ClientReloadTests(unittest.TestCase):
    @defer.inlineCallbacks
    def reload(self, reload_headers, **settings):
        stack = shield_stack(self, **settings)
        stack.origin.handlers[b"/r"] = validating(b"content")
        agent = http_client(self)
        yield get(agent, stack.url + "/r")
        answers = []
        for _ in range(2):
            response, body = yield get(agent, stack.url + "/r", headers=reload_headers)
            answers.append((response.code, body, cache_status(response)))
        return stack, answers

    @defer.inlineCallbacks
    def test_conditional_revalidates_once_per_interval_and_answers_from_the_store(self):
        for headers in ({b"cache-control": [b"max-age=0"]}, {b"cache-control": [b"no-cache"]},
                        {b"pragma": [b"no-cache"]}):
            stack, answers = yield self.reload(headers, min_revalidate_interval=3600)
            self.assertEqual(origin_hits(stack, b"/r"), 2)
            self.assertEqual(stack.origin.seen[1].header(b"if-none-match"), [b'"v1"'])
            self.assertEqual(answers[0][:2], (200, b"content"))
            self.assertIn("fwd=request; fwd-status=304", answers[0][2])
            self.assertEqual(answers[1][:2], (200, b"content"))
            self.assertIn("hit", answers[1][2])
            self.assertIn("detail=revalidated-recently", answers[1][2])

    @defer.inlineCallbacks
    def test_conditional_with_no_interval_revalidates_every_reload(self):
        stack, answers = yield self.reload({b"cache-control": [b"no-cache"]}, min_revalidate_interval=0)
        self.assertEqual(origin_hits(stack, b"/r"), 3)
        self.assertTrue(all("fwd=request; fwd-status=304" in status for _, _, status in answers))

    @defer.inlineCallbacks
    def test_honour_forwards_reloads_as_full_requests(self):
        stack, answers = yield self.reload({b"cache-control": [b"no-cache"]}, client_revalidate="honour")
        self.assertEqual(origin_hits(stack, b"/r"), 3)
        self.assertEqual([seen.header(b"if-none-match") for seen in stack.origin.seen], [[], [], []])
        self.assertTrue(all(status.endswith("fwd=request; fwd-status=200; stored") for _, _, status in answers))

    @defer.inlineCallbacks
    def test_ignore_serves_fresh_content_regardless(self):
        stack, answers = yield self.reload({b"cache-control": [b"no-cache"]}, client_revalidate="ignore")
        self.assertEqual(origin_hits(stack, b"/r"), 1)
        self.assertTrue(all(body == b"content" and "detail=client-revalidate-ignored" in status
                            for _, body, status in answers))


class HeadAndStorageTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_head_miss_is_fetched_as_get_stored_and_answered_as_head(self):
        stack = shield_stack(self)
        stack.origin.handlers[b"/h"] = responder(b"0123456789", cache_control="max-age=60")
        agent = http_client(self)
        response, body = yield get(agent, stack.url + "/h", method=b"HEAD")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"10"])
        self.assertIn("stored", cache_status(response))
        self.assertEqual([seen.method for seen in stack.origin.seen], [b"GET"])
        response, _ = yield get(agent, stack.url + "/h", method=b"HEAD")
        self.assertTrue(cache_status(response).startswith("accel; hit"))
        response, body = yield get(agent, stack.url + "/h")
        self.assertEqual(body, b"0123456789")
        self.assertEqual(origin_hits(stack, b"/h"), 1)

    @defer.inlineCallbacks
    def test_a_route_can_forward_head_as_head(self):
        from accel.config import RouteCache

        stack = shield_stack(self, route_options={"cache": RouteCache(head_as_get=False)})
        stack.origin.handlers[b"/h"] = responder(b"0123456789", cache_control="max-age=60")
        agent = http_client(self)
        for _ in range(2):
            yield get(agent, stack.url + "/h", method=b"HEAD")
        self.assertEqual([seen.method for seen in stack.origin.seen], [b"HEAD", b"HEAD"])

    @defer.inlineCallbacks
    def test_a_response_that_can_never_be_reused_is_not_written(self):
        stack = shield_stack(self)
        stack.origin.handlers[b"/n"] = responder(b"dynamic")
        agent = http_client(self)
        response, body = yield get(agent, stack.url + "/n")
        self.assertEqual(body, b"dynamic")
        self.assertEqual(cache_status(response), "accel; fwd=uri-miss; fwd-status=200")  # not "; stored"


class KeyNormalisationTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_clients_listing_codings_differently_share_a_variant_and_the_origin_sees_the_reduced_value(self):
        stack = shield_stack(self)
        stack.origin.handlers[b"/v"] = responder(b"body", cache_control="max-age=60", vary="Accept-Encoding")
        agent = http_client(self)
        statuses = []
        for value in (b"gzip, deflate, br", b"br, gzip", b"BR;q=1, gzip, deflate;q=0.5", b"gzip, deflate", b"x-gzip"):
            response, _ = yield get(agent, stack.url + "/v", headers={b"accept-encoding": [value]})
            statuses.append(cache_status(response).split(";")[1].strip())
        self.assertEqual(statuses, ["fwd=uri-miss", "hit", "hit", "fwd=vary-miss", "hit"])
        self.assertEqual([seen.header(b"accept-encoding") for seen in stack.origin.seen], [[b"br, gzip"], [b"gzip"]])

    @defer.inlineCallbacks
    def test_host_letter_case_and_default_port_share_an_entry(self):
        stack = shield_stack(self)
        stack.origin.handlers[b"/k"] = responder(b"body", cache_control="max-age=60")
        agent = http_client(self)
        for host in (b"www.example.com", b"WWW.Example.COM", b"www.example.com:80"):
            yield get(agent, stack.url + "/k", headers={b"host": [host]})
        self.assertEqual(origin_hits(stack, b"/k"), 1)


class RangeMissTests(unittest.TestCase):
    BODY = bytes(range(256)) * 40  # 10,240 bytes

    @defer.inlineCallbacks
    def test_a_range_miss_is_fetched_whole_stored_and_answered_with_the_range(self):
        stack = shield_stack(self)
        stack.origin.handlers[b"/file"] = responder(self.BODY, cache_control="max-age=60", etag='"f"')
        agent = http_client(self)
        response, body = yield get(agent, stack.url + "/file", headers={b"range": [b"bytes=100-199"]})
        self.assertEqual((response.code, body), (206, self.BODY[100:200]))
        self.assertEqual(response.headers.getRawHeaders(b"content-range"), [b"bytes 100-199/10240"])
        self.assertEqual(stack.origin.seen[0].header(b"range"), [])  # the origin was asked for the whole object
        response, body = yield get(agent, stack.url + "/file", headers={b"range": [b"bytes=-10"]})
        self.assertEqual((response.code, body), (206, self.BODY[-10:]))
        self.assertTrue(cache_status(response).startswith("accel; hit"))
        _, body = yield get(agent, stack.url + "/file")
        self.assertEqual(body, self.BODY)
        self.assertEqual(origin_hits(stack, b"/file"), 1)

    @defer.inlineCallbacks
    def test_a_range_miss_of_an_object_over_range_fetch_max_passes_through(self):
        stack = shield_stack(self, range_fetch_max=1000)
        stack.origin.handlers[b"/file"] = responder(self.BODY, cache_control="max-age=60", etag='"f"')
        agent = http_client(self)
        response, body = yield get(agent, stack.url + "/file", headers={b"range": [b"bytes=100-199"]})
        # The whole object was too big: asked again with the Range (which this origin ignores, RFC 9110 §14.2).
        self.assertEqual([seen.header(b"range") for seen in stack.origin.seen], [[], [b"bytes=100-199"]])
        self.assertEqual((response.code, body), (200, self.BODY))
        self.assertNotIn("stored", cache_status(response))


def failing_when(state: dict, validator: bytes, value: bytes):
    """An origin handler answering "good" (max-age=0, with one validator) until ``state["down"]``, then 503."""

    def handler(request):
        if state["down"]:
            request.setResponseCode(503)
            return b"down"
        request.setHeader(b"cache-control", b"max-age=0")
        request.setHeader(validator, value)
        return b"good"

    return handler
