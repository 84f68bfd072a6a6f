"""The status document as Prometheus metrics (text exposition format), made with ``prometheus_client``.

The request path never calls the client library: the figures are plain counters summed over the workers
(``accel.http.status.build_document``), and a collector turns them into metric families when scraped.
"""

from __future__ import annotations

from itertools import accumulate

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")


def _buckets(bounds: list[float], histogram: list) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs, +Inf last, and the sum, from a histogram of ``accel.http.traffic``."""
    cumulative = list(accumulate(histogram[:-1]))
    pairs = [(repr(float(b)), c) for b, c in zip(bounds, cumulative)] + [("+Inf", cumulative[-1])]
    return pairs, histogram[-1]


class _DocumentCollector:
    def __init__(self, document: dict):
        self.document = document

    def collect(self):
        d = self.document
        bounds = d["histograms"]["bounds"]
        requests = CounterMetricFamily("accel_requests", "Requests answered, by route, method class, status class "
                                       "and cache outcome", labels=("route", "method", "status", "cache"))
        for c in d["counters"]:
            requests.add_metric((c["route"], c["method"], c["status"], c["cache"]), c["count"])
        yield requests
        durations = HistogramMetricFamily("accel_request_duration_seconds", "Time to answer a request, by route",
                                          labels=("route",))
        for route, histogram in sorted(d["histograms"]["requests"].items()):
            durations.add_metric((route,), *_buckets(bounds, histogram))
        yield durations
        fetches = HistogramMetricFamily("accel_origin_fetch_duration_seconds",
                                        "Time until an origin's response header section, by origin",
                                        labels=("origin",))
        for origin, histogram in sorted(d["histograms"]["origins"].items()):
            fetches.add_metric((origin,), *_buckets(bounds, histogram))
        yield fetches
        failures = CounterMetricFamily("accel_origin_failures", "Origin fetches that got no response",
                                       labels=("origin",))
        connections = GaugeMetricFamily("accel_origin_connections", "Connections to an origin, by state",
                                        labels=("origin", "state"))
        for o in d["origins"]:
            failures.add_metric((o["origin"],), o["failures"])
            for state in ("open", "idle"):
                connections.add_metric((o["origin"], state), o["connections"][state])
        yield failures
        yield connections
        cache = d["cache"]
        objects = GaugeMetricFamily("accel_cache_objects", "Objects stored, by tier", labels=("tier",))
        size = GaugeMetricFamily("accel_cache_bytes", "Body bytes stored, by tier", labels=("tier",))
        for tier, figures in cache["tiers"].items():
            if figures is not None:
                objects.add_metric((tier,), figures["objects"])
                size.add_metric((tier,), figures["bytes"])
        yield objects
        yield size
        evictions = CounterMetricFamily("accel_cache_evictions", "Objects evicted, by tier", labels=("tier",))
        evictions.add_metric(("memory",), cache["tiers"]["memory"]["evictions"])
        yield evictions
        purges = CounterMetricFamily("accel_purges", "Purges, by kind", labels=("kind",))
        for kind, count in cache["purges"].items():
            purges.add_metric((kind,), count)
        yield purges
        yield from _tunnel_metrics(d["websocket"])
        yield from _member_metrics(d.get("balancers", {}))
        yield CounterMetricFamily("accel_collapsed_waiters", "Requests that waited for another request's fetch",
                                  value=cache["collapsed_waiters"])
        yield CounterMetricFamily("accel_received_bytes", "Bytes received from clients", value=d["bytes"]["in"])
        yield CounterMetricFamily("accel_sent_bytes", "Bytes sent to clients", value=d["bytes"]["out"])
        yield GaugeMetricFamily("accel_requests_in_flight", "Requests being answered", value=d["requests"]["in_flight"])
        yield GaugeMetricFamily("accel_client_connections", "Client connections open",
                                value=d["requests"]["connections"])
        yield GaugeMetricFamily("accel_workers", "Server processes whose figures are summed", value=d["workers"])
        yield GaugeMetricFamily("accel_uptime_seconds", "Seconds since the oldest worker started", value=d["uptime"])


def _tunnel_metrics(websocket: dict):
    """The WebSocket tunnels' figures, by route."""
    open_ = GaugeMetricFamily("accel_websocket_tunnels_open", "WebSocket tunnels open", labels=("route",))
    opened = CounterMetricFamily("accel_websocket_tunnels", "WebSocket tunnels opened (101 relayed)",
                                 labels=("route",))
    carried = CounterMetricFamily("accel_websocket_bytes", "Bytes relayed through WebSocket tunnels, by direction",
                                  labels=("route", "direction"))
    closes = CounterMetricFamily("accel_websocket_closes", "WebSocket tunnels closed, by who closed first "
                                 "(client, origin) or why (idle, shutdown)", labels=("route", "reason"))
    for r in websocket["routes"]:
        route = r["route"]
        open_.add_metric((route,), r["open"])
        opened.add_metric((route,), r["opened"])
        for direction, count in r["bytes"].items():
            carried.add_metric((route, direction), count)
        for reason, count in r["closes"].items():
            closes.add_metric((route, reason), count)
    return open_, opened, carried, closes


# A member is up while it takes new requests: enabled, not out after failed health checks or within a failed
# request's retry period (accel.proxy.balancer.Member.usable; with workers, in any worker); a hot standby that
# is usable counts as up.
_UP_STATES = frozenset({"up", "standby"})


def _member_metrics(balancers: dict):
    """Each balancer member's state and counters, as the balancer manager shows them (``balancers`` is its
    part of the document: with worker processes, the counters summed over the workers and the state up while
    any worker takes new requests for the member, ``accel.proxy.manager.merged_member``)."""
    labels = ("balancer", "member", "url")
    up = GaugeMetricFamily("accel_balancer_member_up", "1 while the member takes new requests (enabled, passing "
                           "its health checks, not in a retry period), else 0", labels=labels)
    requests = CounterMetricFamily("accel_balancer_member_requests", "Requests sent to the member", labels=labels)
    failures = CounterMetricFamily("accel_balancer_member_failures", "Requests the member could not take",
                                   labels=labels)
    carried = CounterMetricFamily("accel_balancer_member_bytes", "Bytes carried to and from the member",
                                  labels=labels)
    in_flight = GaugeMetricFamily("accel_balancer_member_in_flight", "Requests (and WebSocket tunnels) at the "
                                  "member now", labels=labels)
    for name, balancer in sorted(balancers.items()):
        for m in balancer["members"]:
            values = (name, m["route"], m["url"])
            up.add_metric(values, 1 if m["state"] in _UP_STATES else 0)
            requests.add_metric(values, m["requests"])
            failures.add_metric(values, m["failures"])
            carried.add_metric(values, m["bytes"])
            in_flight.add_metric(values, m["in_flight"])
    return up, requests, failures, carried, in_flight


def exposition(document: dict) -> bytes:
    """The metrics of a status document in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DocumentCollector(document))
    return generate_latest(registry)
