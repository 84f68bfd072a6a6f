"""Each server process's own cache figures, where ``accel cache stats`` can sum them.

The memory tier and its hit and miss counts live inside each server process (every worker of
``twistd accel --workers N`` has its own). A process using a cache directory publishes them about once a
second to ``<cache-dir>/processes/<pid>.json`` (written to a temporary name, then renamed, so a reader
never sees half a file) and removes its file when it closes. Readers skip the files of processes that are
gone (a process killed with SIGKILL leaves its file behind).
"""

from __future__ import annotations

import json
import os

from accel.cache.lease import process_alive

PROCESSES_DIR = "processes"
SUMMED = ("objects", "bytes", "hits", "misses", "evictions")


class ProcessFigures:
    """This process's published figures."""

    def __init__(self, cache_dir: str, pid: int | None = None):
        self.pid = os.getpid() if pid is None else pid
        directory = os.path.join(cache_dir, PROCESSES_DIR)
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{self.pid}.json")

    def publish(self, memory_stats: dict) -> None:
        """Write the figures; a cache directory removed under a running server is not this method's concern."""
        temporary = f"{self.path}.tmp"
        try:
            with open(temporary, "w") as f:
                json.dump({"pid": self.pid, **{k: memory_stats[k] for k in SUMMED}}, f)
            os.replace(temporary, self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def live_figures(cache_dir: str, alive=process_alive) -> list[dict]:
    """The figures of every live process publishing for ``cache_dir``."""
    directory = os.path.join(cache_dir, PROCESSES_DIR)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in sorted(names):
        stem, _, extension = name.partition(".")
        if extension != "json" or not stem.isdigit() or not alive(int(stem)):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                found.append(json.load(f))
        except (OSError, ValueError):
            continue  # it closed meanwhile
    return found


def summed(figures: list[dict]) -> dict:
    return {key: sum(f.get(key, 0) for f in figures) for key in SUMMED}
