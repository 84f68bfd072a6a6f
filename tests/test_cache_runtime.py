"""The cache's per-process runtime (accel.app.CacheRuntime): housekeeping and closing."""

from __future__ import annotations

import threading

from twisted.internet import defer, reactor
from twisted.trial import unittest

from accel.app import CacheRuntime
from accel.config import CacheSettings
from tests.support import temporary_directory, until


class CloseTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_close_waits_for_the_sync_thread(self):
        runtime = CacheRuntime(CacheSettings(dir=temporary_directory(self), map_size=8 << 20), reactor)
        disk = runtime.store.disk
        entered, release = threading.Event(), threading.Event()
        sync, close = disk.sync, disk.close
        closed_during_sync = []

        def slow_sync():  # an fsync that takes its time, in the thread
            entered.set()
            release.wait(30)
            sync()  # on a closed environment this would crash the process

        self.patch(disk, "sync", slow_sync)
        self.patch(disk, "close", lambda: (closed_during_sync.append(not release.is_set()), close()))
        runtime.sync()
        yield until(entered.is_set)
        closing = runtime.close()
        self.assertEqual((closing.called, closed_during_sync), (False, []))
        release.set()
        yield closing
        self.assertEqual(closed_during_sync, [False])
        self.assertIs(runtime.close(), closing)  # closing twice is closing once
