"""Fetch leases across processes (``accel.cache.lease``) and the collapser built on them: a real LMDB
environment, real datagram sockets; two collapsers with their own wake-up addresses stand for two processes."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from accel.cache.collapse import Collapser
from accel.cache.lease import LeaseTable, Lead, Skip, Wait
from accel.cache.shared_collapse import SharedCollapser
from tests.support import temporary_directory

URL = "http://example.test/a"


def table(testcase, alive=lambda pid: True) -> LeaseTable:
    path = temporary_directory(testcase, "accel-lease-")
    leases = LeaseTable(path, alive=alive)
    testcase.addCleanup(leases.close)
    return leases


class LeaseTableTests(unittest.TestCase):
    def test_the_first_leads_the_others_wait_and_are_named_at_release(self):
        leases = table(self)
        self.assertEqual(leases.acquire(URL, "a", now=100, ttl=30), Lead())
        self.assertEqual(leases.acquire(URL, "b", now=101, ttl=30), Wait(os.getpid()))
        self.assertEqual(leases.acquire(URL, "c", now=101, ttl=30), Wait(os.getpid()))
        self.assertEqual(leases.acquire(URL, "b", now=102, ttl=30), Wait(os.getpid()))  # noted once
        self.assertEqual(leases.release(URL, "b"), [])  # not the owner: nothing changes
        self.assertEqual(leases.release(URL, "a"), ["b", "c"])
        self.assertEqual(leases.acquire(URL, "b", now=103, ttl=30), Lead())

    def test_an_expired_lease_or_one_whose_process_is_gone_is_taken_over(self):
        leases = table(self)
        leases.acquire(URL, "a", now=100, ttl=30)
        self.assertEqual(leases.acquire(URL, "b", now=131, ttl=30), Lead())
        gone = table(self, alive=lambda pid: False)
        gone.acquire(URL, "a", now=100, ttl=30)
        self.assertEqual(gone.acquire(URL, "b", now=101, ttl=30), Lead())

    def test_a_response_that_was_not_storable_leaves_a_marker_that_skips_collapsing_until_it_expires(self):
        leases = table(self)
        leases.acquire(URL, "a", now=100, ttl=30)
        leases.acquire(URL, "b", now=100, ttl=30)
        self.assertEqual(leases.release(URL, "a", hit_for_miss_until=130), ["b"])
        self.assertEqual(leases.acquire(URL, "b", now=129, ttl=30), Skip())
        self.assertEqual(leases.acquire(URL, "b", now=130, ttl=30), Lead())

    def test_sweep_removes_what_expired(self):
        leases = table(self)
        leases.acquire(URL, "a", now=100, ttl=30)
        leases.acquire(URL + "2", "a", now=100, ttl=60)
        self.assertEqual(leases.sweep(now=140), 1)
        self.assertEqual(leases.acquire(URL + "2", "b", now=141, ttl=30), Wait(os.getpid()))


class SharedCollapserTests(unittest.TestCase):
    def collapser(self, leases, timeout=30.0, alive=lambda pid: True) -> SharedCollapser:
        shared = SharedCollapser(Collapser(reactor, timeout, 100), leases, reactor, hit_for_miss_ttl=30, alive=alive)
        self.addCleanup(shared.close)
        return shared

    @defer.inlineCallbacks
    def test_the_other_process_is_woken_by_a_datagram_when_the_leader_releases(self):
        leases = table(self)
        first, second = self.collapser(leases), self.collapser(leases)
        self.assertIsNone(first.join(URL))
        waiting = second.join(URL)
        local_waiter = second.join(URL)  # a second request in the same process waits behind the first
        self.assertFalse(waiting.called)
        first.release(URL)
        yield waiting
        yield local_waiter
        self.assertIsNone(second.join(URL))  # the lease is free again
        second.release(URL)

    @defer.inlineCallbacks
    def test_the_leader_knows_other_processes_wait_so_its_fetch_goes_on_without_its_client(self):
        leases = table(self)
        first, second = self.collapser(leases), self.collapser(leases)
        first.join(URL)
        self.assertFalse(first.has_waiters(URL))
        waiting = second.join(URL)
        self.assertTrue(first.has_waiters(URL))
        self.assertFalse(second.has_waiters(URL))  # it waits; it does not lead
        first.release(URL)
        yield waiting

    @defer.inlineCallbacks
    def test_not_storable_wakes_the_waiters_and_other_processes_then_skip_collapsing(self):
        leases = table(self)
        first, second = self.collapser(leases), self.collapser(leases)
        first.join(URL)
        waiting = second.join(URL)
        first.release(URL, storable=False)
        yield waiting
        self.assertIsNone(second.join(URL))  # fetches without a lease ...
        self.assertIsNone(second.join(URL))  # ... and without making its neighbours wait
        self.assertEqual(second.held, set())

    @defer.inlineCallbacks
    def test_a_waiter_stops_waiting_when_the_leaders_process_is_gone(self):
        leases = table(self)
        first = self.collapser(leases)
        second = self.collapser(leases, alive=lambda pid: False)  # it sees the leader's process gone
        first.join(URL)
        yield second.join(URL)  # within a liveness check, without a release
        self.assertEqual(second.remote, {})

    @defer.inlineCallbacks
    def test_a_waiter_stops_waiting_after_the_collapse_timeout(self):
        leases = table(self)
        first, second = self.collapser(leases), self.collapser(leases, timeout=0.05)
        first.join(URL)
        yield second.join(URL)
        self.assertEqual(second.remote, {})
