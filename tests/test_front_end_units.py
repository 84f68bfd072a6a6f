"""Twisted pieces without sockets: timers on a fake clock (the client connection: tests/test_connection.py)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from accel.cache.collapse import Collapser
from accel.proxy.timer import IdleTimer


class TimerTests(unittest.TestCase):
    def test_idle_timer_fires_only_after_silence(self):
        clock = Clock()
        fired = []
        timer = IdleTimer(clock, 10, lambda: fired.append(clock.seconds()))
        clock.advance(6)
        timer.touch()
        clock.advance(6)
        self.assertEqual(fired, [])
        clock.advance(4)
        self.assertEqual(fired, [16])

    def test_collapsed_waiters_are_released_by_the_leader_or_the_timeout(self):
        clock = Clock()
        collapser = Collapser(clock, timeout=5, max_waiters=2)
        self.assertIsNone(collapser.join("k"))  # the leader
        first, second = collapser.join("k"), collapser.join("k")
        third = collapser.join("k")
        self.assertTrue(third.called)  # over the cap: goes alone at once
        self.assertFalse(first.called or second.called)
        collapser.release("k")
        self.assertTrue(first.called and second.called)
        self.assertIsNone(collapser.join("k"))  # a new leader
        late = collapser.join("k")
        clock.advance(5)
        self.assertTrue(late.called)
        self.assertEqual(clock.getDelayedCalls(), [])
