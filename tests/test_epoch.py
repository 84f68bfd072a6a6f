"""Tests for the cross-process purge counter (accel.cache.epoch)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from accel.cache.epoch import BUCKETS, PurgeEpoch, url_bucket

ROOT = Path(__file__).resolve().parents[1]


def test_starts_at_zero_and_bumps(tmp_path):
    epoch = PurgeEpoch(tmp_path / "purge-epoch")
    assert epoch.current() == 0
    assert epoch.bump() == 1
    assert epoch.bump() == 2
    assert epoch.current() == 2
    epoch.close()
    assert (tmp_path / "purge-epoch").stat().st_size == 8 * (1 + BUCKETS)


def test_bump_is_visible_to_another_instance(tmp_path):
    first = PurgeEpoch(tmp_path / "purge-epoch")
    second = PurgeEpoch(tmp_path / "purge-epoch")
    seen = second.current()
    first.bump()
    assert second.current() == seen + 1
    second.bump()
    assert first.current() == seen + 2
    first.close()
    second.close()


def test_unchanged_sees_another_instances_changes(tmp_path):
    first = PurgeEpoch(tmp_path / "purge-epoch")
    other = PurgeEpoch(tmp_path / "purge-epoch")
    url = "http://o/a"
    bucket = url_bucket(url)
    seen = (first.current(), bucket, first.generation(bucket))
    assert first.unchanged(*seen)
    assert url_bucket("http://o/elsewhere") != bucket
    other.changed(["http://o/elsewhere"])
    assert first.unchanged(*seen)  # another bucket's change
    other.changed([url])
    assert not first.unchanged(*seen)
    seen = (first.current(), bucket, first.generation(bucket))
    other.bump()
    assert not first.unchanged(*seen)
    first.close()
    other.close()


def test_value_survives_reopen(tmp_path):
    epoch = PurgeEpoch(tmp_path / "purge-epoch")
    epoch.bump()
    epoch.close()
    assert PurgeEpoch(tmp_path / "purge-epoch").current() == 1


def test_concurrent_bumps_from_processes_are_not_lost(tmp_path):
    path = tmp_path / "purge-epoch"
    epoch = PurgeEpoch(path)
    code = textwrap.dedent(f"""
        from accel.cache.epoch import PurgeEpoch
        epoch = PurgeEpoch({str(path)!r})
        for _ in range(500):
            epoch.bump()
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    children = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(4)]
    for _ in range(500):
        epoch.bump()
    assert [child.wait(timeout=30) for child in children] == [0] * 4
    assert epoch.current() == 2500
    epoch.close()
