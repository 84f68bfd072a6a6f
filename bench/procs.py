"""Child processes of the bench: start, wait for a port, measure memory, stop.

Every child runs in its own session (process group), writes its output to a
log file in the run's temporary directory and is stopped by signalling the
whole group, so nothing outlives the run.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ChildError(RuntimeError):
    """A child did not start or died; the message carries its log's tail."""


def free_port():
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port):
    """True when a TCP connection to 127.0.0.1:port succeeds."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Child:
    """One child process in its own process group; use as a context manager."""

    def __init__(self, name, argv, log_path, cwd=None, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )

    @property
    def pid(self):
        return self.proc.pid

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, lines=20):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self):
        """Raise ChildError if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise ChildError(
                f"{self.name} exited with status {code}: {' '.join(self.argv)}\n"
                f"--- {self.log_path} ---\n{self.log_tail()}"
            )

    def wait_port(self, port, timeout=START_TIMEOUT_S):
        """Wait until 127.0.0.1:port accepts; return seconds since the child started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if port_accepts(port):
                return time.monotonic() - self.started_at
            time.sleep(0.01)
        raise ChildError(f"{self.name} did not listen on port {port} within {timeout}s\n{self.log_tail()}")

    def wait_file(self, path, timeout=START_TIMEOUT_S):
        """Wait until ``path`` exists (a child announcing its port) and return its text."""
        path = Path(path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if path.exists():
                return path.read_text()
            time.sleep(0.01)
        raise ChildError(f"{self.name} did not write {path} within {timeout}s\n{self.log_tail()}")

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM the process group, then SIGKILL it if it lingers; safe to call twice."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in the group (workers of a dead master) goes too.
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def tree_rss_mib(pid):
    """Resident memory of ``pid`` and all its descendants, in MiB."""
    total_kib, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total_kib += _status_kib(p, "VmRSS")
        except OSError:
            continue
        todo.extend(_children(p))
    return total_kib / 1024


def hwm_mib(pid):
    """Peak resident memory (VmHWM) of one process, in MiB."""
    return _status_kib(pid, "VmHWM") / 1024
