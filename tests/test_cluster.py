"""Purge fan-out between accel nodes (accel.cache.fanout) and the health check (accel.http.health): real accel
sites on loopback, each with its own LMDB cache, in front of one real origin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

from twisted.internet import defer, protocol, reactor, threads
from twisted.trial import unittest
from twisted.web import server

from accel.app import build_site
from accel.config import CacheSettings, ClusterSettings, Config, PurgeSettings, Route, StatusSettings, parse_origin
from tests.support import CountingSite, RecordingOrigin, get, http_client, temporary_directory

import ipaddress

SITE = {b"host": b"www.example.com"}  # what every node is asked for (behind a balancer: the public name)


class Node:
    def __init__(self, testcase, config: Config):
        self.config = config
        self.site = build_site(config, reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        testcase.addCleanup(self.site.close)
        testcase.addCleanup(self.port.stopListening)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def with_config(self, config: Config) -> None:
        self.config = config
        self.site.accelerator.reload(config)


class ClusterTests(unittest.TestCase):
    def setUp(self):
        self.origin = RecordingOrigin()

        def cached(request):
            request.setHeader(b"cache-control", b"max-age=600")
            request.setHeader(b"surrogate-key", b"news")
            return b"object"

        self.origin.handlers[b"/obj"] = cached
        origin_port = reactor.listenTCP(0, CountingSite(self.origin), interface="127.0.0.1")
        self.addCleanup(origin_port.stopListening)
        self.origin_url = f"http://127.0.0.1:{origin_port.getHost().port}/"
        self.agent = http_client(self)

    def node_config(self, **purge) -> Config:
        directory = temporary_directory(self, "accel-cluster-")
        return Config(
            routes=(Route(prefix="/", origin=parse_origin(self.origin_url)),),
            cache=CacheSettings(dir=directory, map_size=32 << 20),
            purge=PurgeSettings(**purge),
        )

    def cluster(self, n: int = 3, timeout: float = 5.0, **purge) -> list[Node]:
        """``n`` nodes, each with the others as its peers."""
        nodes = [Node(self, self.node_config(**purge)) for _ in range(n)]
        for node in nodes:
            peers = tuple(parse_origin(other.url) for other in nodes if other is not node)
            node.with_config(replace(node.config, cluster=ClusterSettings(peers=peers, purge_timeout=timeout)))
        return nodes

    @defer.inlineCallbacks
    def cached_on(self, nodes) -> None:
        for node in nodes:
            response, _ = yield get(self.agent, node.url + "/obj", headers=SITE)
            self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def cache_status(self, node) -> bytes:
        response, _ = yield get(self.agent, node.url + "/obj", headers=SITE)
        return response.headers.getRawHeaders(b"cache-status")[0]

    @defer.inlineCallbacks
    def purge(self, node, headers=None):
        response, body = yield get(self.agent, node.url + "/obj", b"PURGE", {**SITE, **(headers or {})})
        return response.code, json.loads(body)

    @defer.inlineCallbacks
    def test_a_purge_on_one_node_reaches_every_node_and_each_peer_confirms(self):
        nodes = self.cluster()
        yield self.cached_on(nodes)
        code, answer = yield self.purge(nodes[0])
        self.assertEqual((code, answer["status"], answer["purged"]), (200, "ok", 1))
        self.assertEqual(answer["peers"], {n.url: {"status": "ok", "code": 200, "purged": 1} for n in nodes[1:]})
        for node in nodes:
            self.assertIn(b"fwd=uri-miss", (yield self.cache_status(node)))

    @defer.inlineCallbacks
    def test_a_peer_holding_nothing_confirms_and_a_forwarded_purge_is_not_forwarded_again(self):
        nodes = self.cluster()
        yield self.cached_on(nodes[:1])
        code, answer = yield self.purge(nodes[0], {b"X-Purge-Method": b"prefix"})
        self.assertEqual(code, 200)
        self.assertEqual({n: a["code"] for n, a in answer["peers"].items()}, {n.url: 404 for n in nodes[1:]})
        code, answer = yield self.purge(nodes[1], {b"X-Purge-Forwarded": b"1"})
        self.assertEqual(code, 404)  # applied on that node only
        self.assertNotIn("peers", answer)

    @defer.inlineCallbacks
    def test_every_mode_is_forwarded(self):
        nodes = self.cluster()
        yield self.cached_on(nodes)
        code, answer = yield self.purge(nodes[2], {b"Surrogate-Key": b"news", b"X-Purge-Soft": b"1"})
        self.assertEqual((code, answer["mode"], answer["soft"]), (200, "tag", True))
        self.assertEqual([a["purged"] for a in answer["peers"].values()], [1, 1])
        for node in nodes:
            self.assertIn(b"fwd=stale", (yield self.cache_status(node)))

    @defer.inlineCallbacks
    def test_a_peer_that_refuses_fails_the_purge_with_502_and_says_why(self):
        nodes = self.cluster(secret="s3")
        refusing = nodes[2]
        refusing.with_config(replace(refusing.config, purge=PurgeSettings(secret="other")))
        yield self.cached_on(nodes)
        code, answer = yield self.purge(nodes[0], {b"X-Purge-Secret": b"s3"})
        self.assertEqual((code, answer["status"]), (502, "peer failed"))
        self.assertEqual(answer["peers"][nodes[1].url]["status"], "ok")
        self.assertEqual(answer["peers"][refusing.url],
                         {"status": "failed", "code": 403, "detail": "answered 403: missing or wrong secret"})
        self.assertIn(b"fwd=uri-miss", (yield self.cache_status(nodes[1])))  # applied where it was admitted

    @defer.inlineCallbacks
    def test_a_peer_that_is_down_or_silent_fails_the_purge(self):
        silent = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        down = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
        down_url = f"http://127.0.0.1:{down.getHost().port}"
        yield down.stopListening()
        node = Node(self, self.node_config())
        silent_url = f"http://127.0.0.1:{silent.getHost().port}"
        # A refused connection fails at once, whatever purge_timeout is; the silent peer waits it out, so it
        # is asked alone, with a short one.
        node.with_config(replace(node.config, cluster=ClusterSettings(peers=(parse_origin(down_url),))))
        code, answer = yield self.purge(node)
        self.assertEqual((code, answer["peers"][down_url]["status"]), (502, "failed"))
        self.assertIn("refused", answer["peers"][down_url]["detail"].lower())
        node.with_config(replace(node.config, cluster=ClusterSettings(peers=(parse_origin(silent_url),), purge_timeout=0.1)))
        code, answer = yield self.purge(node)
        self.assertEqual(code, 502)
        self.assertEqual(answer["peers"][silent_url], {"status": "failed", "detail": "no answer within 0.1 s (purge_timeout)"})

    @defer.inlineCallbacks
    def test_accel_cache_purge_cluster_purges_here_and_on_every_peer(self):
        nodes = self.cluster()
        yield self.cached_on(nodes)
        first = nodes[0].config
        path = os.path.join(first.cache.dir, "..", os.path.basename(first.cache.dir) + ".toml")
        self.addCleanup(os.remove, path)
        peers = ", ".join(f'"{n.url}"' for n in nodes[1:])
        with open(path, "w") as f:
            # (the route: the URL maps to the key of its origin, as on the nodes)
            f.write(f'[cache]\ndir = "{first.cache.dir}"\n[cluster]\npeers = [{peers}]\n'
                    f'[[route]]\nprefix = "/"\norigin = "{first.routes[0].origin.url}"\n')
        command = [sys.executable, "-c", "from accel.cli.main import main; main()", "cache", "--config", path,
                   "purge", "--cluster", "--json", "http://www.example.com/obj"]
        done = yield threads.deferToThread(subprocess.run, command, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        answer = json.loads(done.stdout)
        self.assertEqual((answer["status"], answer["purged"]), ("ok", 1))
        self.assertEqual([a["purged"] for a in answer["peers"].values()], [1, 1])
        for node in nodes:
            self.assertIn(b"fwd=uri-miss", (yield self.cache_status(node)))
        nodes[2].with_config(replace(nodes[2].config, purge=PurgeSettings(secret="other")))
        done = yield threads.deferToThread(subprocess.run, command, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 3, done.stdout + done.stderr)
        self.assertEqual(json.loads(done.stdout)["peers"][nodes[2].url]["code"], 403)


class HealthTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_health_check_answers_serving_then_draining_to_allowed_addresses_and_peers_only(self):
        origin_port = reactor.listenTCP(0, server.Site(RecordingOrigin()), interface="127.0.0.1")
        self.addCleanup(origin_port.stopListening)
        route = Route(prefix="/", origin=parse_origin(f"http://127.0.0.1:{origin_port.getHost().port}/"))
        node = Node(self, Config(routes=(route,)))
        agent = http_client(self)
        response, body = yield get(agent, node.url + "/accel-health")
        self.assertEqual((response.code, body), (200, b"serving\n"))
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        node.site.accelerator.health.draining = True
        response, body = yield get(agent, node.url + "/accel-health")
        self.assertEqual((response.code, body), (503, b"draining\n"))
        elsewhere = StatusSettings(allow=(ipaddress.ip_network("10.0.0.0/8"),), health_path="/h")
        node.with_config(replace(node.config, status=elsewhere))
        response, _ = yield get(agent, node.url + "/h")
        self.assertEqual(response.code, 403)
        as_peer = ClusterSettings(peers=(parse_origin("http://127.0.0.1:1"),))
        node.with_config(replace(node.config, status=elsewhere, cluster=as_peer))
        response, _ = yield get(agent, node.url + "/h")
        self.assertEqual(response.code, 503)
