"""A request's objects are freed by reference counting when it ends: none is left in a reference cycle.

Serving processes collect cyclic garbage rarely (``accel.app.settle_garbage_collection``); a cycle through a
request would make every request's objects wait for the collector and the collector cost CPU again.
"""

from __future__ import annotations

import gc
from collections import Counter

from twisted.internet import defer
from twisted.trial import unittest

from accel.config import CacheSettings, Config
from tests.support import raw_request, start_stack, temporary_directory


def _answer(cache_control: bytes):
    def handle(request):
        request.setHeader(b"cache-control", cache_control)
        return b"x" * 100

    return handle


def _request(path: str, last: bool = False, method: str = "GET") -> bytes:
    close = "Connection: close\r\n" if last else ""
    return f"{method} {path} HTTP/1.1\r\nHost: example.test\r\n{close}\r\n".encode()


class NoCycleTests(unittest.TestCase):
    def setUp(self):
        directory = temporary_directory(self)
        self.stack = start_stack(self, config=Config(cache=CacheSettings(dir=directory)))
        self.stack.origin.handlers[b"/stored"] = _answer(b"max-age=60")
        self.stack.origin.handlers[b"/passed"] = _answer(b"no-store")

    def exchanges(self, round_: int):
        """Pass-through, a stored miss, its hit (general path and HEAD), a 404 route miss and a 502, on one
        keep-alive connection that the last request closes; then a hit on a connection of its own."""
        port = self.stack.accel_port.getHost().port
        pipelined = b"".join([
            _request("/passed"),
            _request(f"/stored?{round_}"),
            _request(f"/stored?{round_}"),
            _request(f"/stored?{round_}", method="HEAD"),
            _request("/status/404"),
            _request("/passed", last=True),
        ])
        return defer.gatherResults([raw_request(port, pipelined), raw_request(port, _request("/stored?0", last=True))])

    @defer.inlineCallbacks
    def test_requests_leave_no_cyclic_garbage(self):
        answers = yield self.exchanges(0)  # the first of each builds pools, memos and tables that stay
        self.assertEqual(answers[0].count(b"HTTP/1.1 200"), 5)
        gc.collect()
        # What exists now (this stack, and earlier tests' sites the collector has not reached yet) is kept
        # alive, so that only the objects the requests below create can turn up as garbage.
        existing = [o for o in gc.get_objects() if _ours(o)]
        known = {id(o) for o in existing}
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.addCleanup(gc.set_debug, 0)
        self.addCleanup(gc.garbage.clear)
        for round_ in range(1, 4):
            yield self.exchanges(round_)
        gc.collect()
        left = Counter(type(o).__qualname__ for o in gc.garbage if _ours(o) and id(o) not in known)
        self.assertEqual(left, Counter())


def _ours(thing) -> bool:
    module = getattr(type(thing), "__module__", None)
    return isinstance(module, str) and module.startswith("accel.")
