"""Load generation for the throughput scenarios: wrk, or the Python stand-in.

``run_wrk`` runs ``wrk -t2 -cN -dSs --latency [-H FIELD] URL`` and ``parse_wrk`` turns its
report into ``{"rps", "p50_ms", "p99_ms", "requests", "errors", "non_2xx"}``,
the same keys ``client.load`` returns.
"""

import re
import subprocess

WRK_THREADS = 2

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY_RE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_REQUESTS_RE = re.compile(r"^\s*(\d+) requests in", re.M)
_SOCKET_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(RuntimeError):
    pass


def parse_wrk(output):
    """Parse wrk's ``--latency`` report."""
    rps = _RPS_RE.search(output)
    requests = _REQUESTS_RE.search(output)
    percentiles = {int(p): float(v) * _UNITS_MS[u] for p, v, u in _LATENCY_RE.findall(output)}
    if not rps or not requests or set(percentiles) != {50, 99}:
        raise WrkError(f"cannot parse wrk output:\n{output}")
    socket_errors = _SOCKET_ERRORS_RE.search(output)
    non_2xx = _NON_2XX_RE.search(output)
    return {
        "requests": int(requests.group(1)),
        "rps": float(rps.group(1)),
        "p50_ms": percentiles[50],
        "p99_ms": percentiles[99],
        "errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def run_wrk(wrk, port, path, connections, duration, headers=()):
    """Run wrk against 127.0.0.1:port/path (with extra request ``headers``) and return the parsed summary."""
    return finish_wrk(start_wrk(wrk, port, path, connections, duration, headers), duration)


def start_wrk(wrk, port, path, connections, duration, headers=()):
    """Start wrk in the background (for a scenario that acts on the server meanwhile)."""
    argv = [
        wrk,
        f"-t{min(WRK_THREADS, connections)}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        *(arg for header in headers for arg in ("-H", header)),
        f"http://127.0.0.1:{port}{path}",
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(proc, duration):
    """Wait for a wrk started by ``start_wrk`` and return the parsed summary."""
    try:
        stdout, stderr = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise WrkError(f"{' '.join(proc.args)} did not finish")
    if proc.returncode != 0:
        raise WrkError(f"{' '.join(proc.args)} exited {proc.returncode}:\n{stdout}{stderr}")
    return parse_wrk(stdout)
