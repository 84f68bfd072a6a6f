"""Twisted pieces without sockets: timers on a fake clock (the client connection: tests/test_connection.py)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from accel.cache.collapse import Collapser
from accel.proxy.timer import Deadlines


class TimerTests(unittest.TestCase):
    def test_idle_timer_fires_only_after_silence(self):
        clock = Clock()
        fired = []
        timer = Deadlines(clock).timer(10, lambda: fired.append(clock.seconds()))
        clock.advance(6)
        timer.touch()
        clock.advance(6)
        self.assertEqual(fired, [])
        clock.advance(4)
        self.assertEqual(fired, [16])

    def test_timers_share_one_delayed_call_planned_for_the_earliest_deadline(self):
        clock = Clock()
        deadlines = Deadlines(clock)
        fired = []
        deadlines.timer(10, lambda: fired.append(("slow", clock.seconds())))
        stopped = deadlines.timer(3, lambda: fired.append(("stopped", clock.seconds())))
        deadlines.timer(5, lambda: fired.append(("quick", clock.seconds())))
        self.assertEqual(len([call for call in clock.getDelayedCalls() if call.active()]), 1)
        stopped.stop()
        clock.advance(3)
        clock.advance(2)
        self.assertEqual(fired, [("quick", 5)])
        clock.advance(5)
        self.assertEqual(fired, [("quick", 5), ("slow", 10)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopping_timers_leaves_the_planned_check_alone(self):
        clock = Clock()
        deadlines = Deadlines(clock)
        deadlines.timer(10, lambda: None).stop()
        planned = [call for call in clock.getDelayedCalls() if call.active()]
        for _ in range(100):  # a request's timeouts, started and stopped: no call made or cancelled for each
            deadlines.timer(10, lambda: None).stop()
        self.assertEqual([call for call in clock.getDelayedCalls() if call.active()], planned)
        clock.advance(10)  # the check runs, finds nothing, plans nothing
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_closed_deadlines_leave_no_delayed_call(self):
        clock = Clock()
        deadlines = Deadlines(clock)
        fired = []
        deadlines.timer(10, lambda: fired.append(clock.seconds()))
        deadlines.close()
        self.assertEqual([call for call in clock.getDelayedCalls() if call.active()], [])
        clock.advance(10)
        self.assertEqual((fired, deadlines.timers), ([], set()))

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
