"""The cache layer when things go wrong: failures inside callbacks, clients leaving collapsed fetches.

Real origin on loopback counting requests, accel in front, a real LMDB in a temporary directory.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web import server

from accel.cache import policy
from accel.config import CacheSettings, Config
from tests.support import RawClient, get, http_client, start_stack, temporary_directory, until
from tests.test_cache_e2e import cache_status, origin_hits, responder


def stack_with_cache(testcase, **route_options):
    """accel with a cache whose collapse_timeout is far longer than any test: a waiter released by the
    timeout would fail the test by its own timeout."""
    settings = CacheSettings(dir=temporary_directory(testcase), collapse_timeout=3600)
    return start_stack(testcase, config=Config(cache=settings), **route_options)


def fail_once(testcase, module, name: str) -> list:
    """Make ``module.name`` raise RuntimeError on its first call; returns the list of failures raised."""
    original = getattr(module, name)
    raised = []

    def broken(*args, **kwargs):
        if not raised:
            raised.append(name)
            raise RuntimeError(f"injected failure in {name}")
        return original(*args, **kwargs)

    testcase.patch(module, name, broken)
    return raised


class HeldOrigin:
    """An origin handler that holds requests until ``release``; afterwards it answers at once."""

    def __init__(self, body: bytes = b"the body", **fields):
        self.body = body
        self.fields = fields
        self.held: list = []
        self.released = False

    def __call__(self, request):
        if not self.released:
            self.held.append(request)
            return server.NOT_DONE_YET
        return self.answer(request)

    def answer(self, request) -> bytes:
        for name, value in self.fields.items():
            request.setHeader(name.replace("_", "-").encode(), value.encode())
        return self.body

    def release(self) -> None:
        self.released = True
        for request in self.held:
            if not request._disconnected:
                request.write(self.answer(request))
                request.finish()


def layer_of(stack):
    return stack.accel_site.cache.layers[0]


def waiting(stack, path: str) -> int:
    return sum(len(w) for key, w in layer_of(stack).collapser.waiting.items() if key.endswith(path))


class CallbackFailureTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_failing_policy_answers_500_and_frees_the_origin_slot(self):
        stack = stack_with_cache(self, max_connections=1)
        stack.origin.handlers[b"/a"] = responder(b"a", cache_control="max-age=60")
        stack.origin.handlers[b"/b"] = responder(b"b", cache_control="max-age=60")
        raised = fail_once(self, policy, "storable")
        agent = http_client(self)
        response, _ = yield get(agent, stack.url + "/a")
        self.assertEqual((response.code, raised), (500, ["storable"]))
        # The one connection slot to this origin was released: the next request gets through.
        response, body = yield get(agent, stack.url + "/b")
        self.assertEqual((response.code, body), (200, b"b"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_a_failing_store_answers_500(self):
        stack = stack_with_cache(self, max_connections=1)
        stack.origin.handlers[b"/a"] = responder(b"a", cache_control="max-age=60")
        raised = fail_once(self, stack.accel_site.cache.store, "begin")
        agent = http_client(self)
        response, _ = yield get(agent, stack.url + "/a")
        self.assertEqual((response.code, raised), (500, ["begin"]))
        response, body = yield get(agent, stack.url + "/a")
        self.assertEqual((response.code, body), (200, b"a"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_a_store_failing_mid_body_still_relays_the_response(self):
        stack = stack_with_cache(self)
        stack.origin.handlers[b"/a"] = responder(b"a" * 5000, cache_control="max-age=60")
        store = stack.accel_site.cache.store
        original = store.begin

        def begin(url, secondary_key):
            writer = original(url, secondary_key)
            writer.write = lambda data: (_ for _ in ()).throw(RuntimeError("disk on fire"))
            return writer

        self.patch(store, "begin", begin)
        agent = http_client(self)
        response, body = yield get(agent, stack.url + "/a")
        self.assertEqual((response.code, body), (200, b"a" * 5000))
        response, _ = yield get(agent, stack.url + "/a")
        self.assertEqual(origin_hits(stack, b"/a"), 2)  # not stored, and said so in the log
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    @defer.inlineCallbacks
    def test_a_failed_collapse_leader_releases_its_waiters_at_once(self):
        stack = stack_with_cache(self)
        origin = HeldOrigin(cache_control="max-age=60")
        stack.origin.handlers[b"/slow"] = origin
        agent = http_client(self)
        leader = get(agent, stack.url + "/slow")
        yield until(lambda: origin.held)
        waiters = [get(agent, stack.url + "/slow") for _ in range(3)]
        yield until(lambda: waiting(stack, "/slow") == 3)
        fail_once(self, policy, "storable")
        origin.release()
        response, _ = yield leader
        self.assertEqual(response.code, 500)
        answers = yield defer.gatherResults(waiters)
        self.assertEqual([(r.code, body) for r, body in answers], [(200, b"the body")] * 3)
        self.assertEqual(self.flushLoggedErrors(RuntimeError)[0].getErrorMessage(), "injected failure in storable")


class CollapsingTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_waiters_get_the_stored_response_when_the_leaders_client_leaves(self):
        stack = stack_with_cache(self)
        origin = HeldOrigin(b"x" * 100_000, cache_control="max-age=60")
        stack.origin.handlers[b"/slow"] = origin
        handled = []
        layer = layer_of(stack)
        handle = layer.handle
        self.patch(layer, "handle", lambda request, *args, **kw: (handled.append(request), handle(request, *args, **kw)))
        port = stack.accel_port.getHost().port
        leader = RawClient(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), leader)
        yield until(lambda: origin.held)
        agent = http_client(self)
        waiters = [get(agent, stack.url + "/slow", headers={b"host": b"h"}) for _ in range(9)]
        yield until(lambda: waiting(stack, "/slow") == 9)
        leader.transport.loseConnection()
        yield until(lambda: handled[0]._disconnected)
        origin.release()
        answers = yield defer.gatherResults(waiters)
        self.assertEqual([(r.code, len(body)) for r, body in answers], [(200, 100_000)] * 9)
        self.assertEqual(origin_hits(stack, b"/slow"), 1)  # one request reached the origin, not ten
        self.assertTrue(all(cache_status(r).startswith("accel; hit") for r, _ in answers))

    @defer.inlineCallbacks
    def test_a_fetch_nobody_waits_for_stops_when_its_client_leaves(self):
        stack = stack_with_cache(self)
        client = RawClient(b"GET /hang HTTP/1.1\r\nHost: h\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", stack.accel_port.getHost().port), client)
        yield until(lambda: stack.origin.pending)
        gone = stack.origin.pending[0].notifyFinish()
        client.transport.loseConnection()
        yield self.assertFailure(gone, ConnectionLost)  # the origin request was abandoned

    @defer.inlineCallbacks
    def test_revalidations_of_one_object_are_collapsed(self):
        stack = stack_with_cache(self)
        origin = HeldOrigin(b"v1", cache_control="max-age=60", etag='"v1"')

        def validated(request):
            if request.getHeader(b"if-none-match") == b'"v1"':
                request.setResponseCode(304)
                request.setHeader(b"date", formatdate(time.time() + 120, usegmt=True).encode())  # accel's now
                return origin(request)
            return origin.answer(request)

        stack.origin.handlers[b"/val"] = validated
        agent = http_client(self)
        yield get(agent, stack.url + "/val")
        layer = layer_of(stack)
        self.patch(layer, "clock", lambda: time.time() + 120)  # two minutes later: stale
        requests = [get(agent, stack.url + "/val") for _ in range(5)]
        yield until(lambda: origin.held)
        yield until(lambda: waiting(stack, "/val") == 4)
        origin.release()
        answers = yield defer.gatherResults(requests)
        self.assertEqual([(r.code, body) for r, body in answers], [(200, b"v1")] * 5)
        self.assertEqual(origin_hits(stack, b"/val"), 2)  # the first fetch and one revalidation
        self.assertIn("fwd=stale; fwd-status=304", cache_status(answers[0][0]))


class MissingBodyTests(unittest.TestCase):
    """A body that left the disk after its head was looked up (evicted, replaced, purged by another
    process just then): the hit becomes a miss, never a cut-off response."""

    timeout = 30

    @defer.inlineCallbacks
    def check(self, headers: dict):
        settings = CacheSettings(dir=temporary_directory(self), memory_max_object_size=1024)
        stack = start_stack(self, config=Config(cache=settings))
        body = bytes(range(256)) * 800
        stack.origin.handlers[b"/large"] = responder(body, cache_control="max-age=60")
        agent = http_client(self)
        yield get(agent, stack.url + "/large")
        response, _ = yield get(agent, stack.url + "/large", headers=headers)
        self.assertTrue(cache_status(response).startswith("accel; hit"))  # head-only in memory now
        disk = stack.accel_site.cache.store.disk
        (head,) = list(disk.iter_heads())
        disk._write(lambda txn: disk._free_body(txn, head.body_id))  # gone, and nobody was told
        response, received = yield get(agent, stack.url + "/large", headers=headers)
        self.assertEqual((response.code, received), (200, body))
        self.assertEqual(origin_hits(stack, b"/large"), 2)
        response, received = yield get(agent, stack.url + "/large", headers=headers)  # stored again
        self.assertEqual((received, origin_hits(stack, b"/large")), (body, 2))

    def test_on_the_prepared_path(self):
        return self.check({})

    def test_on_the_general_path(self):
        return self.check({b"if-none-match": b'"not-this"'})
