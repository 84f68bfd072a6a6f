"""Per-process figures that ``accel cache stats`` and the status page sum."""

from __future__ import annotations

import os
import shutil
import socket

from twisted.internet import defer, reactor
from twisted.trial import unittest

from accel.cache.figures import FiguresExchange, ProcessFigures, live_figures, summed
from tests.support import temporary_directory

STATS = {"objects": 3, "urls": 2, "bytes": 300, "max_bytes": 1000, "max_objects": 10, "hits": 7, "misses": 2,
         "evictions": 1}


def test_live_processes_are_summed_and_gone_ones_ignored(tmp_path):
    mine = ProcessFigures(str(tmp_path))
    other = ProcessFigures(str(tmp_path), pid=os.getpid() + 1_000_000)  # no such process
    mine.publish(STATS)
    other.publish(STATS)
    found = live_figures(str(tmp_path), alive=lambda pid: pid == os.getpid())
    assert found == [{"pid": os.getpid(), **STATS}]
    assert summed(found + found) == {"objects": 6, "bytes": 600, "hits": 14, "misses": 4, "evictions": 2}
    mine.close()
    assert live_figures(str(tmp_path)) == []


def test_no_directory_means_no_process(tmp_path):
    assert live_figures(str(tmp_path / "missing")) == []


def test_publishing_into_a_removed_directory_is_no_error(tmp_path):
    figures = ProcessFigures(str(tmp_path / "cache"))
    shutil.rmtree(tmp_path / "cache")
    figures.publish(STATS)  # the server goes on; the figures come back with the directory
    figures.close()


class ExchangeTests(unittest.TestCase):
    """Two exchanges in this process stand for two server processes: each needs a live pid of its own
    (this process's and its parent's)."""

    def exchange(self, directory: str, pid: int, published: list) -> FiguresExchange:
        figures = ProcessFigures(directory, pid=pid)
        figures.publish(STATS)
        exchange = FiguresExchange(reactor, directory, lambda: published.append(pid), pid=pid)
        self.addCleanup(exchange.close)
        return exchange

    @defer.inlineCallbacks
    def test_asking_runs_each_other_process_handler_before_it_fires(self):
        directory = temporary_directory(self, "accel-figures-")
        published, changed = [], []
        mine = self.exchange(directory, os.getpid(), published)
        theirs = self.exchange(directory, os.getppid(), published)
        theirs.handle(b"balancers", lambda: changed.append("read again"))
        yield mine.ask(b"balancers", timeout=30)
        self.assertEqual((changed, published), (["read again"], []))  # only what was asked, once
        yield mine.refresh(timeout=30)
        self.assertEqual(published, [os.getpid(), os.getppid()])

    @defer.inlineCallbacks
    def test_a_handler_that_fails_is_logged_and_the_asker_still_answered(self):
        directory = temporary_directory(self, "accel-figures-")
        mine = self.exchange(directory, os.getpid(), [])
        theirs = self.exchange(directory, os.getppid(), [])
        theirs.handle(b"balancers", lambda: 1 / 0)
        yield mine.ask(b"balancers", timeout=30)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        yield mine.ask(b"balancers", timeout=30)  # the exchange goes on
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @defer.inlineCallbacks
    def test_a_process_that_does_not_answer_holds_the_asker_up_until_the_timeout(self):
        directory = temporary_directory(self, "accel-figures-")
        mine = self.exchange(directory, os.getpid(), [])
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # listening, never answering
        silent.bind(f"\0accel-figures-{os.getppid()}")
        self.addCleanup(silent.close)
        ProcessFigures(directory, pid=os.getppid()).publish(STATS)
        asked = mine.ask(b"balancers", timeout=0.1)
        self.assertFalse(asked.called)
        yield asked
        self.assertEqual(mine.waiting, {})
