"""The status page, the Prometheus metrics and the JSON access log: exact counts after a known sequence of
requests across two real worker processes, the allow list, and the JSON log line."""

from __future__ import annotations

import json
import re
import os
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from click.testing import CliRunner
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from accel.cli.main import main
from accel.cli.top import fetch, sample
from accel.config import Config, ConfigError, StatusSettings, parse_config
from accel.http.traffic import BUCKETS, Traffic, merge, percentile
from accel.http.status import build_document
from twisted.web import server

from tests.support import RecordingOrigin, closed_port, raw_request, start_stack, temporary_directory, until
from tests.test_fast_hits import counted_fast_hits
from tests.workers_support import Supervised


def request(port: int, method: bytes, path: bytes, extra: bytes = b"") -> defer.Deferred:
    return raw_request(port, b"%s %s HTTP/1.1\r\nHost: example.test\r\n%sConnection: close\r\n\r\n" % (method, path, extra))


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def counts(document: dict, route: str) -> dict:
    """{(method, status, cache): count} of one route."""
    return {(c["method"], c["status"], c["cache"]): c["count"] for c in document["counters"] if c["route"] == route}


def request_ids(seen) -> list[bytes]:
    """The X-Request-Id values an origin received with a request."""
    return [value for name, value in seen.headers if name.lower() == b"x-request-id"]


def metric_samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class TwoWorkersTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_counts_after_a_known_sequence_are_exact(self):
        directory = temporary_directory(self, "accel-status-")
        origin = RecordingOrigin()
        origin_port = reactor.listenTCP(0, server.Site(origin), interface="127.0.0.1")
        self.addCleanup(origin_port.stopListening)
        origin_url = f"http://127.0.0.1:{origin_port.getHost().port}/"
        dead = closed_port()
        config_path = os.path.join(directory, "accel.toml")
        log_path = os.path.join(directory, "access.log")
        with open(config_path, "w") as f:
            f.write(f'[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nworkers = 2\nshutdown_timeout = 5\n'
                    f'access_log = "{log_path}"\naccess_log_format = "json"\n'
                    f'[[route]]\nprefix = "/c/"\norigin = "{origin_url}"\n'
                    f'[[route]]\nprefix = "/nocache/"\norigin = "{origin_url}"\n[route.cache]\nenabled = false\n'
                    f'[[route]]\nprefix = "/dead/"\norigin = "http://127.0.0.1:{dead}/"\n'
                    f'[cache]\ndir = "{os.path.join(directory, "cache")}"\n')
        accel = Supervised(self, config_path)
        yield accel.workers_accepting(2)
        port = accel.port

        def cached(request):
            request.setHeader(b"cache-control", b"max-age=600")
            return b"cached body"

        origin.handlers[b"/a"] = cached  # /c/a at the origin's /
        # A miss, three hits, two passes, an origin error, a purge, and a miss again: each on its own
        # connection, which the kernel gives to either worker.
        responses = [(yield request(port, b"GET", b"/c/a"))]
        for _ in range(3):
            responses.append((yield request(port, b"GET", b"/c/a")))
        for _ in range(2):
            responses.append((yield request(port, b"GET", b"/nocache/x")))
        responses.append((yield request(port, b"GET", b"/dead/y")))
        responses.append((yield request(port, b"PURGE", b"/c/a")))
        responses.append((yield request(port, b"GET", b"/c/a")))
        self.assertEqual([r.split(b" ", 2)[1] for r in responses],
                         [b"200"] * 6 + [b"502", b"200", b"200"])

        document = json.loads(body_of((yield request(port, b"GET", b"/accel-status?format=json"))))
        self.assertEqual(document["workers"], 2)
        self.assertEqual(document["requests"]["total"], 9)
        c = counts(document, "/c/")
        self.assertEqual(c.get(("read", "2xx", "memory"), 0) + c.get(("read", "2xx", "disk"), 0), 3)
        self.assertEqual(c[("read", "2xx", "miss")], 2)
        self.assertEqual(sum(c.values()), 5)
        self.assertEqual(counts(document, "/nocache/"), {("read", "2xx", "pass"): 2})
        self.assertEqual(counts(document, "/dead/"), {("read", "5xx", "miss"): 1})  # a miss whose fetch failed
        self.assertEqual(counts(document, "-"), {("purge", "2xx", "none"): 1})
        outcomes = document["cache"]["outcomes"]
        self.assertEqual((outcomes["memory"] + outcomes["disk"], outcomes["miss"], outcomes["pass"], outcomes["none"]),
                         (3, 3, 2, 1))
        self.assertEqual(document["cache"]["hit_ratio"], 0.375)  # 3 hits of 8 requests for origins' content
        self.assertEqual(document["cache"]["purges"], {"url": 1})
        self.assertEqual(document["requests"]["by_status"], {"2xx": 8, "5xx": 1})
        origins = {o["origin"]: o for o in document["origins"]}
        self.assertEqual(origins[origin_url.rstrip("/")]["fetches"], 4)
        self.assertEqual(origins[f"http://127.0.0.1:{dead}"]["failures"], 1)
        self.assertEqual(document["cache"]["tiers"]["disk"]["objects"], 1)
        routes = {r["route"]: r for r in document["routes"]}
        self.assertEqual((routes["/dead/"]["errors"], routes["/dead/"]["error_rate"]), (1, 1.0))
        self.assertEqual(document["top_urls"]["by_requests"][0], {"target": "/c/a", "requests": 6, "misses": 2})

        # The metrics: the same figures, plus the status request that was just answered.
        metrics = (yield request(port, b"GET", b"/metrics"))
        self.assertIn(b"Content-Type: text/plain; version=", metrics)
        samples = metric_samples(body_of(metrics).decode())
        def requests_total(route, method, status, cache):
            key = ("accel_requests_total", (("cache", cache), ("method", method), ("route", route), ("status", status)))
            return samples.get(key, 0)
        self.assertEqual(requests_total("/c/", "read", "2xx", "miss"), 2)
        self.assertEqual(requests_total("/c/", "read", "2xx", "memory") + requests_total("/c/", "read", "2xx", "disk"), 3)
        self.assertEqual(requests_total("/nocache/", "read", "2xx", "pass"), 2)
        self.assertEqual(requests_total("/dead/", "read", "5xx", "miss"), 1)
        self.assertEqual(requests_total("-", "read", "2xx", "none"), 1)  # the JSON status request
        self.assertEqual(samples[("accel_purges_total", (("kind", "url"),))], 1)
        self.assertEqual(samples[("accel_workers", ())], 2)
        self.assertEqual(samples[("accel_request_duration_seconds_count", (("route", "/c/"),))], 5)
        self.assertEqual(samples[("accel_origin_failures_total", (("origin", f"http://127.0.0.1:{dead}"),))], 1)
        self.assertEqual(samples[("accel_cache_objects", (("tier", "disk"),))], 1)

        # The JSON access log: one object a line, every field, the request id the client got.
        yield until(lambda: os.path.exists(log_path) and open(log_path).read().count("\n") >= 11)
        lines = [json.loads(line) for line in open(log_path)]
        self.assertEqual({tuple(sorted(line)) for line in lines}, {tuple(sorted(
            ("time", "client", "method", "target", "status", "bytes", "duration", "route", "origin", "cache", "tls",
             "request_id")))})
        first = next(line for line in lines if line["target"] == "/c/a")
        self.assertEqual((first["client"], first["method"], first["status"], first["route"], first["cache"],
                          first["tls"]), ("127.0.0.1", "GET", 200, "/c/", "miss", None))
        self.assertEqual(first["origin"], origin_url.rstrip("/"))
        ids = [line["request_id"] for line in lines]
        self.assertEqual(len(set(ids)), len(ids))
        self.assertIn(b"X-Request-Id: %s\r\n" % first["request_id"].encode(), responses[0])
        self.assertEqual(request_ids(origin.seen[0]), [first["request_id"].encode()])
        yield accel.kill()


class AllowTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_others_get_403_and_nothing_reaches_the_origin(self):
        network = parse_config('[status]\nallow = ["10.0.0.0/8"]\n', "t.toml").status
        stack = start_stack(self, Config(status=network))
        port = stack.accel_port.getHost().port
        for path in (b"/accel-status", b"/accel-status?format=json", b"/metrics"):
            response = yield request(port, b"GET", path)
            self.assertTrue(response.startswith(b"HTTP/1.1 403 "), response)
        self.assertEqual(stack.origin.seen, [])

    @defer.inlineCallbacks
    def test_loopback_is_served_by_default_never_cached_and_other_paths_still_route(self):
        stack = start_stack(self, Config(status=StatusSettings(path="/_status", metrics_path="/_metrics")))
        port = stack.accel_port.getHost().port
        page = yield request(port, b"GET", b"/_status")
        self.assertTrue(page.startswith(b"HTTP/1.1 200 "), page)
        self.assertIn(b"Cache-Control: no-store", page)
        self.assertIn(b"<h1>accel status</h1>", page)
        yield request(port, b"GET", b"/accel-status")  # not the page here: routed to the origin
        self.assertEqual([s.uri for s in stack.origin.seen], [b"/accel-status"])
        posted = yield request(port, b"POST", b"/_metrics", b"Content-Length: 0\r\n")
        self.assertTrue(posted.startswith(b"HTTP/1.1 405 "), posted)


class CountingOffTests(unittest.TestCase):
    """[status] metrics = false: no request is counted, on the fast hit path or the general one; /metrics is 404."""

    @defer.inlineCallbacks
    def test_nothing_is_counted_and_the_page_says_so(self):
        cache_dir = temporary_directory(self, "accel-counting-")
        config = parse_config(f'[status]\nmetrics = false\n[cache]\ndir = "{cache_dir}"\n', "t.toml")
        stack = start_stack(self, config)
        stack.origin.handlers[b"/hot"] = lambda r: (r.setHeader(b"cache-control", b"max-age=60"), b"hot")[1]
        port = stack.accel_port.getHost().port
        fast = counted_fast_hits(self, stack)
        for path in (b"/hot", b"/hot", b"/hot", b"/pass", b"/hot"):
            response = yield request(port, b"GET", path)
            self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        self.assertTrue(fast)  # the fast path answered hits (the first hit, from disk, takes the general one)
        metrics = yield request(port, b"GET", b"/metrics")
        self.assertTrue(metrics.startswith(b"HTTP/1.1 404 "), metrics)
        self.assertEqual([s.uri for s in stack.origin.seen], [b"/hot", b"/pass"])  # /metrics was not forwarded
        document = json.loads(body_of((yield request(port, b"GET", b"/accel-status?format=json"))))
        self.assertFalse(document["counting"])
        self.assertEqual((document["requests"]["total"], document["bytes"], document["origins"], document["routes"]),
                         (0, {"in": 0, "out": 0}, [], []))
        self.assertEqual(document["cache"]["tiers"]["disk"]["objects"], 1)  # what is still known is shown
        page = body_of((yield request(port, b"GET", b"/accel-status")))
        self.assertIn(b"Counting is off ([status] metrics = false)", page)
        self.assertNotIn(b"<h2>Routes</h2>", page)

    @defer.inlineCallbacks
    def test_counting_is_on_by_default(self):
        stack = start_stack(self)
        port = stack.accel_port.getHost().port
        yield request(port, b"GET", b"/x")
        document = json.loads(body_of((yield request(port, b"GET", b"/accel-status?format=json"))))
        self.assertTrue(document["counting"])
        self.assertEqual(document["requests"]["total"], 1)
        self.assertNotIn(b"Counting is off", body_of((yield request(port, b"GET", b"/accel-status"))))


class RequestIdTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_trusted_peers_id_is_kept_another_one_is_replaced(self):
        trusted = start_stack(self, parse_config('[server]\ntrusted_proxies = ["127.0.0.1"]\n', "t.toml"))
        port = trusted.accel_port.getHost().port
        response = yield request(port, b"GET", b"/x", b"X-Request-Id: abc-123\r\n")
        self.assertIn(b"X-Request-Id: abc-123\r\n", response)
        self.assertEqual(request_ids(trusted.origin.seen[0]), [b"abc-123"])
        untrusted = start_stack(self)
        port = untrusted.accel_port.getHost().port
        response = yield request(port, b"GET", b"/x", b"X-Request-Id: abc-123\r\n")
        self.assertNotIn(b"abc-123", response)
        sent = request_ids(untrusted.origin.seen[0])
        self.assertEqual(len(sent), 1)
        self.assertIn(b"X-Request-Id: %s\r\n" % sent[0], response)


def test_merge_sums_processes_and_percentiles_follow_the_buckets():
    a, b = Traffic(clock=lambda: 100.0), Traffic(clock=lambda: 50.0)
    a.request("/", b"GET", 200, "memory", 0.0007, b"/x")
    b.request("/", b"GET", 200, "memory", 0.0007, b"/x")
    b.request("/", b"POST", 503, "pass", 3.0, b"/y")
    b.fetched("http://o", 3.0, 503)
    b.purged("tag")
    merged = merge([a.snapshot(), b.snapshot()])
    assert merged["requests"] == {("/", "read", "2xx", "memory"): 2, ("/", "write", "5xx", "pass"): 1}
    assert merged["started"] == 50.0
    assert merged["urls"] == {"/x": [2, 0], "/y": [1, 0]}
    histogram = merged["latency"]["/"]
    assert sum(histogram[:-1]) == 3 and histogram[BUCKETS.index(0.001)] == 2
    assert percentile(histogram, 0.5) == 0.0005 + (0.001 - 0.0005) * 0.75  # 1.5 of the 2 in (0.5 ms, 1 ms]
    document = build_document([{"traffic": a.snapshot()}, {"traffic": b.snapshot(), "in_flight": 2}], None, 150.0)
    assert document["uptime"] == 100.0
    assert document["requests"]["in_flight"] == 2
    assert document["cache"]["purges"] == {"tag": 1}
    assert document["origins"][0]["error_rate"] == 1.0


def test_config_names_and_mistakes():
    config = parse_config('[server]\naccess_log_format = "json"\n[status]\npath = "/s"\nmetrics_path = "/m"\n'
                          'allow = ["10.0.0.0/8"]\n', "t.toml")
    assert (config.access_log_format, config.status.path, config.status.metrics_path) == ("json", "/s", "/m")
    assert (config.status.metrics, parse_config('[status]\nmetrics = false\n', "t.toml").status.metrics) == (True, False)
    with pytest.raises(ConfigError, match=re.escape("t.toml, line 2: status.metrics: expected true or false, got 'no'")):
        parse_config('[status]\nmetrics = "no"\n', "t.toml")
    for text, key in (('[server]\naccess_log_format = "xml"\n', "server.access_log_format"),
                      ('[status]\npath = "status"\n', "status.path"),
                      ('[status]\nmetrics_path = "/accel-status"\n', "status.metrics_path"),
                      ('[status]\npaht = "/s"\n', "status.paht")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            parse_config(text, "t.toml")


class TopTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_once_json_against_a_running_server(self):
        stack = start_stack(self, Config(cache=replace(Config().cache, dir=temporary_directory(self, "accel-top-"))))
        stack.origin.handlers[b"/t"] = lambda r: (r.setHeader(b"cache-control", b"max-age=60"), b"t")[1]
        port = stack.accel_port.getHost().port
        url = f"http://127.0.0.1:{port}/accel-status"
        # accel top blocks on its requests: it runs in a thread while the reactor serves
        before = yield deferToThread(fetch, url)
        for _ in range(3):
            yield request(port, b"GET", b"/t")
        result = yield deferToThread(CliRunner().invoke, main, ["top", url, "--once", "--json", "--interval", "0.05"])
        self.assertEqual(result.exit_code, 0, result.output)
        s = json.loads(result.output)
        self.assertEqual(s["top_by_requests"][0], {"target": "/t", "requests": 3, "misses": 1})
        self.assertEqual(s["top_by_misses"], [{"target": "/t", "misses": 1, "requests": 3}])
        self.assertEqual(s["workers"], 1)
        self.assertEqual(s["requests"], 1)  # between its two documents: its own first request
        self.assertEqual(s["origins"][0]["fetches"], 1)
        self.assertGreater(s["requests_per_second"], 0)
        after = {**before, "time": before["time"] + 2}
        after = json.loads(json.dumps(after))
        after["requests"]["total"] += 10
        after["cache"]["outcomes"]["memory"] += 6
        after["cache"]["outcomes"]["miss"] += 2
        self.assertEqual((sample(before, after)["requests_per_second"], sample(before, after)["hit_ratio"]), (5.0, 0.75))

    def test_without_url_or_config_it_says_what_it_needs(self):
        result = CliRunner().invoke(main, ["top"])
        self.assertEqual(result.exit_code, 1)
        self.assertIn("accel: give the status page's URL", result.output)
