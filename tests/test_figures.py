"""Per-process figures that ``accel cache stats`` and the status page sum."""

from __future__ import annotations

import os
import shutil

from accel.cache.figures import ProcessFigures, live_figures, summed

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
