"""This process's traffic figures: plain counters the request path bumps, read only when someone asks.

The request path does a few dictionary and attribute increments per request (``Traffic.request``); nothing
is formatted, locked or sent then. With ``counting`` off (``[status] metrics = false``) the per-request figures
(requests, latencies, URLs, origin fetches, bytes in and out: ``request``, ``fetched``, ``received``, ``sent``)
stay as they are; the gauges (client connections) and the rare events (purges, collapsed waiters, WebSocket
tunnels) still count. The status page and the Prometheus metrics (``accel.http.status``) take a
``snapshot()`` of every worker's figures and add them up (``merge``): counts and histogram buckets are sums,
so the total over the workers is exact.

WebSocket tunnels count per route as well (``tunnel_opened``): each tunnel adds the bytes it relays to its
route's figures as they flow, and ``tunnel_closed`` records why it closed.

Latencies go into fixed histogram buckets (``BUCKETS``, seconds, Prometheus' ``le`` bounds); percentiles are
estimated from the summed buckets as Prometheus' ``histogram_quantile`` does (``percentile``).
"""

from __future__ import annotations

import time
from bisect import bisect_left

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOP_URLS = 1000  # the busiest targets each process keeps, for ``accel top``
_URLS_TRIMMED_AT = 4 * TOP_URLS

# Cache outcomes: served from the memory tier, from the disk tier, fetched for the cache (miss), forwarded
# without the cache (pass), or none of those (the status page, a purge, a refusal).
OUTCOMES = ("memory", "disk", "miss", "pass", "none")

# WebSocket tunnels: why one closed — the client or the origin closed its connection, nothing went either
# way for ``websocket_idle_timeout``, or accel was stopping.
CLOSE_REASONS = ("client", "origin", "idle", "shutdown")
# A route's tunnel figures (``Traffic.tunnels``): open now, opened in all, bytes each way, closes by reason.
TUNNELS_OPEN, TUNNELS_OPENED, TO_ORIGIN, TO_CLIENT, FIRST_CLOSE = range(5)

_METHOD_CLASSES = {b"GET": "read", b"HEAD": "read", b"POST": "write", b"PUT": "write", b"PATCH": "write",
                   b"DELETE": "write", b"PURGE": "purge"}


def route_label(route) -> str:
    """How the figures name a route (an ``accel.config.Route``): its prefix, after its hosts if it has any."""
    return f"{','.join(route.hosts)} {route.prefix}" if route.hosts else route.prefix


def new_histogram() -> list:
    """Counts per bucket of ``BUCKETS`` plus one for larger values, then the sum of the values."""
    return [0] * (len(BUCKETS) + 1) + [0.0]


class Traffic:
    """The counters of one process. ``clock`` gives the wall-clock time (the start, for uptime)."""

    def __init__(self, clock=time.time):
        self.started = clock()
        self.counting = True  # the request paths count requests and bytes (``[status] metrics``)
        self.requests: dict[tuple[str, str, str, str], int] = {}  # (route, method class, status class, outcome)
        self.latency: dict[str, list] = {}  # route -> histogram of request durations
        self.origins: dict[str, list] = {}  # origin -> [fetches, failures, 5xx answers, histogram...]
        self.urls: dict[bytes, list[int]] = {}  # request-target -> [requests, misses]
        self.purges: dict[str, int] = {}  # kind (url, prefix, tag, all) -> purges
        self.bytes_in = 0
        self.bytes_out = 0
        self.connections = 0  # client connections open now
        self.collapsed = 0  # requests that waited for another request's fetch of their URL
        self.tunnels: dict[str, list[int]] = {}  # route -> its WebSocket tunnels' figures (TUNNELS_OPEN...)

    def received(self, size: int) -> None:
        """Bytes read from a client."""
        if self.counting:
            self.bytes_in += size

    def sent(self, size: int) -> None:
        """Bytes written to a client."""
        if self.counting:
            self.bytes_out += size

    def request(self, route: str, method: bytes, status: int, outcome: str, seconds: float, target: bytes) -> None:
        """One answered request (``route``: its label, "-" for none)."""
        if self.counting:
            self.answered(counted_as(route, method, status, outcome), seconds, target)

    def answered(self, key: tuple[str, str, str, str], seconds: float, target: bytes) -> None:
        """One answered request, counted under ``key`` (``counted_as``'s, which a caller answering many alike
        makes once); only while ``counting``."""
        route, outcome = key[0], key[3]
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = new_histogram()
        histogram[bisect_left(BUCKETS, seconds)] += 1
        histogram[-1] += seconds
        counts = self.urls.get(target)
        if counts is None:
            if len(self.urls) >= _URLS_TRIMMED_AT:
                self._trim_urls()
            counts = self.urls[target] = [0, 0]
        counts[0] += 1
        if outcome == "miss":
            counts[1] += 1

    def _trim_urls(self) -> None:
        busiest = sorted(self.urls.items(), key=lambda item: item[1][0], reverse=True)[:TOP_URLS]
        self.urls = dict(busiest)

    def fetched(self, origin: str, seconds: float, status: int | None) -> None:
        """One origin fetch: its response header section came after ``seconds``; ``status`` None: it failed."""
        if not self.counting:
            return
        figures = self.origins.get(origin)
        if figures is None:
            figures = self.origins[origin] = [0, 0, 0] + new_histogram()
        figures[0] += 1
        if status is None:
            figures[1] += 1
        elif status >= 500:
            figures[2] += 1
        figures[3 + bisect_left(BUCKETS, seconds)] += 1
        figures[-1] += seconds

    def tunnel_opened(self, route: str) -> list[int]:
        """A WebSocket tunnel opened on ``route`` (its label): the route's tunnel figures, where the tunnel adds
        the bytes it relays (at ``TO_ORIGIN`` and ``TO_CLIENT``) as they flow."""
        figures = self.tunnels.get(route)
        if figures is None:
            figures = self.tunnels[route] = [0] * (FIRST_CLOSE + len(CLOSE_REASONS))
        figures[TUNNELS_OPEN] += 1
        figures[TUNNELS_OPENED] += 1
        return figures

    def purged(self, kind: str) -> None:
        self.purges[kind] = self.purges.get(kind, 0) + 1

    def snapshot(self) -> dict:
        """The figures as JSON-able data (what a worker publishes)."""
        return {
            "started": self.started,
            "counting": self.counting,
            "requests": [[*key, count] for key, count in self.requests.items()],
            "latency": self.latency,
            "origins": {origin: {"fetches": f[0], "failures": f[1], "errors": f[2], "latency": f[3:]}
                        for origin, f in self.origins.items()},
            "urls": [[target.decode("latin-1"), c[0], c[1]]
                     for target, c in sorted(self.urls.items(), key=lambda item: item[1][0], reverse=True)[:TOP_URLS]],
            "purges": self.purges,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connections": self.connections,
            "collapsed": self.collapsed,
            "tunnels": self.tunnels,
        }


def counted_as(route: str, method: bytes, status: int, outcome: str) -> tuple[str, str, str, str]:
    """The key ``Traffic.requests`` counts a request under: route label, method class, status class, outcome."""
    return route, _METHOD_CLASSES.get(method, "other"), _STATUS_CLASSES[status // 100], outcome


def tunnel_closed(figures: list[int], reason: str) -> None:
    """A tunnel counted in ``figures`` (``Traffic.tunnel_opened``'s) closed, for one of ``CLOSE_REASONS``."""
    figures[TUNNELS_OPEN] -= 1
    figures[FIRST_CLOSE + CLOSE_REASONS.index(reason)] += 1


_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


def _add_lists(into: list, values: list) -> list:
    return [a + b for a, b in zip(into, values)] if into else list(values)


def merge(snapshots: list[dict]) -> dict:
    """The sum of several processes' snapshots (``started``: the earliest)."""
    requests: dict[tuple, int] = {}
    latency: dict[str, list] = {}
    origins: dict[str, dict] = {}
    urls: dict[str, list[int]] = {}
    purges: dict[str, int] = {}
    tunnels: dict[str, list[int]] = {}
    totals = {"bytes_in": 0, "bytes_out": 0, "connections": 0, "collapsed": 0}
    started = None
    counting = True
    for s in snapshots:
        started = s["started"] if started is None else min(started, s["started"])
        counting = counting and s["counting"]
        for *key, count in s["requests"]:
            requests[tuple(key)] = requests.get(tuple(key), 0) + count
        for route, histogram in s["latency"].items():
            latency[route] = _add_lists(latency.get(route), histogram)
        for origin, f in s["origins"].items():
            known = origins.setdefault(origin, {"fetches": 0, "failures": 0, "errors": 0, "latency": []})
            for name in ("fetches", "failures", "errors"):
                known[name] += f[name]
            known["latency"] = _add_lists(known["latency"], f["latency"])
        for target, count, misses in s["urls"]:
            known_url = urls.setdefault(target, [0, 0])
            known_url[0] += count
            known_url[1] += misses
        for kind, count in s["purges"].items():
            purges[kind] = purges.get(kind, 0) + count
        for route, figures in s["tunnels"].items():
            tunnels[route] = _add_lists(tunnels.get(route), figures)
        for name in totals:
            totals[name] += s[name]
    return {"started": started, "counting": counting, "requests": requests, "latency": latency, "origins": origins, "urls": urls,
            "purges": purges, "tunnels": tunnels, **totals}


def percentile(histogram: list, fraction: float) -> float | None:
    """The ``fraction`` quantile of a histogram (linear within its bucket, as Prometheus'
    ``histogram_quantile``); None when it is empty. Values past the last bound count as that bound."""
    counts = histogram[:-1]
    total = sum(counts)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[i - 1] if i else 0.0
            return lower + (BUCKETS[i] - lower) * (rank - seen) / count
        seen += count
    return BUCKETS[-1]
