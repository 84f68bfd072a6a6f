"""WebSocket tunnelling (accel.proxy.websocket) through a real accel to a real echo origin (tests/websocket_support)."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import replace

from types import SimpleNamespace

import trustme
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from accel.app import build_site
from accel.config import Config, Route, parse_config, parse_origin
from accel.http.traffic import Traffic
from accel.proxy.client import OriginResponse
from accel.proxy.origin import Fetched
from accel.proxy.websocket import Tunnel, WebSocketTunnels
from tests.support import closed_port, next_turn, raw_request, temporary_directory, until
from tests.test_status import metric_samples
from tests.tls_support import listen_https
from tests.workers_support import Supervised, connection_owner
from tests.websocket_support import BINARY, CLOSE, TEXT, EchoOriginFactory, accept_value, connect


class TunnelTests(unittest.TestCase):
    def start(self, config: Config | None = None, greet: bool = False, **route_options):
        self.origin = EchoOriginFactory(greet)
        port = reactor.listenTCP(0, self.origin, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        origin = f"ws://127.0.0.1:{port.getHost().port}/"
        route = Route(prefix="/ws/", origin=parse_origin(origin), websocket=True, **route_options)
        plain = Route(prefix="/", origin=parse_origin(f"http://127.0.0.1:{port.getHost().port}/"))
        self.config = replace(config or Config(), routes=(route, plain))
        self.site = build_site(self.config, reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.site.close)
        self.addCleanup(self.port.stopListening)
        return self.port.getHost().port

    async def test_handshake_then_text_and_binary_both_ways(self):
        port = self.start(greet=True)
        client = await connect(port)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 101 "))
        self.assertEqual(client.field(b"sec-websocket-accept"), accept_value(client.key))
        self.assertEqual(client.field(b"sec-websocket-protocol"), b"chat")
        self.assertEqual(client.field(b"upgrade").lower(), b"websocket")
        self.assertEqual(await client.message(0), (TEXT, b"welcome"))  # came with the origin's 101
        client.send(TEXT, "héllo".encode())
        self.assertEqual(await client.message(1), (TEXT, "héllo".encode()))
        client.send(BINARY, bytes(range(256)) * 3)
        self.assertEqual(await client.message(2), (BINARY, bytes(range(256)) * 3))
        # what the origin received: the client's WebSocket fields, the proxy's, the path mapped
        line, fields = self.origin.handshakes[0]
        self.assertEqual(line, b"GET /echo HTTP/1.1")
        got = {n.lower(): v for n, v in fields}
        self.assertEqual(got[b"sec-websocket-key"], client.key)
        self.assertEqual(got[b"sec-websocket-version"], b"13")
        self.assertEqual(got[b"sec-websocket-protocol"], b"chat, superchat")
        self.assertEqual(got[b"origin"], b"http://app.test")
        self.assertEqual((got[b"upgrade"], got[b"connection"]), (b"websocket", b"Upgrade"))
        self.assertEqual(got[b"x-forwarded-for"], b"127.0.0.1")
        self.assertEqual(got[b"x-forwarded-host"], b"accel.test")
        client.transport.loseConnection()
        await client.closed

    async def test_a_10_mib_message_each_way(self):
        port = self.start()
        client = await connect(port)
        payload = os.urandom(10 << 20)
        client.send(BINARY, payload)
        opcode, echoed = await client.message(0)
        self.assertEqual((opcode, len(echoed)), (BINARY, len(payload)))
        self.assertTrue(echoed == payload)
        client.transport.loseConnection()
        await client.closed

    async def test_a_client_that_does_not_read_stops_accel_reading_the_origin(self):
        port = self.start()
        client = await connect(port)
        client.transport.pauseProducing()  # the client reads nothing more for now
        client.send(TEXT, b"flood")
        await until(lambda: self.origin.connections and self.origin.connections[0].flood is not None)
        flood = self.origin.connections[0].flood
        stable = 0  # reactor turns the origin has stayed paused without sending more
        while flood.sent < flood.LIMIT and stable < 200:
            before = flood.sent
            await next_turn()
            stable = stable + 1 if flood.paused and flood.sent == before else 0
        # accel stopped reading the origin once the client's side was full: the origin stays paused, having
        # sent only what the sockets and transports in between hold, not the flood's 128 MiB
        self.assertLess(flood.sent, 32 << 20)
        client.transport.resumeProducing()
        await until(lambda: len(client.messages) >= flood.sent // len(flood.MESSAGE))
        client.transport.loseConnection()
        await client.closed

    async def test_close_from_the_client(self):
        port = self.start()
        client = await connect(port)
        client.send(CLOSE, struct.pack("!H", 1000))
        self.assertEqual(await client.message(0), (CLOSE, struct.pack("!H", 1000)))
        await client.closed  # the origin closed after its Close; accel closed the client's connection
        await until(lambda: len(self.origin.closed) == 1)

    async def test_the_client_going_away_closes_the_origin_connection(self):
        port = self.start()
        client = await connect(port)
        client.send(TEXT, b"x")
        await client.message(0)
        client.transport.loseConnection()
        await until(lambda: len(self.origin.closed) == 1)
        await until(lambda: not self.site.accelerator.tunnels.open)
        self.assertEqual(self.site.accelerator.in_flight.count, 0)  # over, for a graceful stop's drain too

    async def test_close_from_the_origin(self):
        port = self.start()
        client = await connect(port)
        client.send(TEXT, b"close-me")
        self.assertEqual(await client.message(0), (CLOSE, struct.pack("!H", 1000)))
        await client.closed

    async def test_idle_tunnels_are_closed(self):
        port = self.start(websocket_idle_timeout=0.2)
        client = await connect(port)
        client.send(TEXT, b"still here")
        await client.message(0)
        await client.closed  # nothing either way: accel closes both sides
        await until(lambda: len(self.origin.closed) == 1)

    async def test_a_refusal_is_relayed_as_a_response(self):
        port = self.start()
        client = await connect(port, b"/ws/reject")
        self.assertTrue(client.head.startswith(b"HTTP/1.1 403 "))
        await client.closed
        self.assertIn(b"no way", client.received)

    async def test_tunnels_per_route_are_capped(self):
        port = self.start(websocket_max_tunnels=1)
        first = await connect(port)
        second = await connect(port)
        self.assertTrue(second.head.startswith(b"HTTP/1.1 503 "))
        first.transport.loseConnection()
        await first.closed
        await until(lambda: not self.site.accelerator.tunnels.open)
        third = await connect(port)
        self.assertTrue(third.head.startswith(b"HTTP/1.1 101 "))
        third.transport.loseConnection()
        await third.closed
        self.assertEqual(len(self.origin.handshakes), 2)

    async def test_no_tunnel_without_websocket_on_the_route_or_to_another_protocol(self):
        port = self.start()
        # the "/" route has no WebSocket: the request is answered as any request; Upgrade never leaks
        reply = await raw_request(port, b"GET /plain HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                        b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.assertFalse(reply.startswith(b"HTTP/1.1 101"))
        reply = await raw_request(port, b"GET /ws/echo HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        self.assertFalse(reply.startswith(b"HTTP/1.1 101"))
        for _, fields in self.origin.handshakes:
            self.assertNotIn(b"upgrade", [n.lower() for n, _ in fields])

    async def test_the_access_log_has_the_tunnel(self):
        path = os.path.join(temporary_directory(self), "access.log")
        port = self.start(Config(access_log=path))
        client = await connect(port)
        client.send(TEXT, b"12345")
        await client.message(0)
        client.transport.loseConnection()
        await client.closed
        await until(lambda: os.path.exists(path) and b"ws_in" in open(path, "rb").read())
        line = open(path).read().strip().splitlines()[-1]
        self.assertIn('"GET /ws/echo HTTP/1.1" 101 ', line)
        self.assertIn(" ws_in=11 ws_out=7", line)  # a masked 5-byte frame in, an unmasked one out


    async def status(self, port: int) -> tuple[dict, dict]:
        """The status JSON and the metrics' samples."""
        def body(reply: bytes) -> str:
            return reply.partition(b"\r\n\r\n")[2].decode()

        document = json.loads(body(await raw_request(
            port, b"GET /accel-status?format=json HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")))
        metrics = body(await raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        return document, metric_samples(metrics)

    async def test_tunnels_and_their_bytes_are_counted_exactly(self):
        port = self.start()
        first, second = await connect(port), await connect(port)
        first.send(TEXT, b"12345")  # a masked frame: 2 + 4 + 5 bytes in, 2 + 5 out
        second.send(BINARY, b"x" * 200)  # 4 + 4 + 200 in, 4 + 200 out
        await first.message(0)
        await second.message(0)
        document, samples = await self.status(port)
        self.assertEqual(document["websocket"], {
            "open": 2, "opened": 2, "bytes": {"client_to_origin": 219, "origin_to_client": 211},
            "closes": {"client": 0, "origin": 0, "idle": 0, "shutdown": 0},
            "routes": [{"route": "/ws/", "open": 2, "opened": 2,
                        "bytes": {"client_to_origin": 219, "origin_to_client": 211},
                        "closes": {"client": 0, "origin": 0, "idle": 0, "shutdown": 0}}],
        })
        self.assertEqual(samples[("accel_websocket_tunnels_open", (("route", "/ws/"),))], 2)
        first.transport.loseConnection()  # the client closes
        second.send(TEXT, b"close-me")  # the origin closes: 2 + 4 + 8 in, a Close frame of 2 + 2 out
        await first.closed
        await second.closed
        await until(lambda: not self.site.accelerator.tunnels.open)
        document, samples = await self.status(port)
        tunnels = document["websocket"]
        self.assertEqual((tunnels["open"], tunnels["opened"]), (0, 2))
        self.assertEqual(tunnels["bytes"], {"client_to_origin": 233, "origin_to_client": 215})
        self.assertEqual(tunnels["closes"], {"client": 1, "origin": 1, "idle": 0, "shutdown": 0})
        route = (("route", "/ws/"),)
        self.assertEqual(samples[("accel_websocket_tunnels_open", route)], 0)
        self.assertEqual(samples[("accel_websocket_tunnels_total", route)], 2)
        self.assertEqual(samples[("accel_websocket_bytes_total", (("direction", "client_to_origin"), *route))], 233)
        self.assertEqual(samples[("accel_websocket_bytes_total", (("direction", "origin_to_client"), *route))], 215)
        self.assertEqual(samples[("accel_websocket_closes_total", (("reason", "origin"), *route))], 1)
        self.assertEqual(samples[("accel_websocket_closes_total", (("reason", "client"), *route))], 1)

    async def test_idle_and_shutdown_closes_are_counted(self):
        port = self.start(websocket_idle_timeout=0.2)
        client = await connect(port)
        await client.closed
        await until(lambda: not self.site.accelerator.tunnels.open)
        document, _ = await self.status(port)
        self.assertEqual(document["websocket"]["closes"]["idle"], 1)
        client = await connect(port)
        self.site.accelerator.tunnels.close()
        await client.closed
        await until(lambda: not self.site.accelerator.tunnels.open)
        document, _ = await self.status(port)
        self.assertEqual(document["websocket"]["closes"], {"client": 0, "origin": 0, "idle": 1, "shutdown": 1})


class BalancerTunnelTests(unittest.TestCase):
    """WebSocket on a balancer:// route: two real echo origins as members."""

    def start(self, balancer: str = "", dead_first: bool = False) -> int:
        self.members = []
        urls = []
        if dead_first:
            urls.append(f"http://127.0.0.1:{closed_port()}/")
        for _ in range(2 - len(urls)):
            factory = EchoOriginFactory()
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.members.append(factory)
            urls.append(f"http://127.0.0.1:{port.getHost().port}/")
        text = ('[[route]]\nprefix = "/ws/"\norigin = "balancer://app/"\nwebsocket = true\n'
                f'[balancer.app]\n{balancer}\n')
        for route, url in zip("ab", urls):
            text += f'[[balancer.app.member]]\nurl = "{url}"\nroute = "{route}"\n'
        self.site = build_site(parse_config(text, "accel.toml"), reactor)
        port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.site.close)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def balancer_members(self) -> list:
        return self.site.balancers.balancers["app"].members

    async def echo(self, client, payload: bytes) -> None:
        client.send(TEXT, payload)
        self.assertEqual(await client.message(len(client.messages)), (TEXT, payload))

    async def test_both_members_get_tunnels_and_each_is_in_flight_until_it_closes(self):
        port = self.start()
        clients = [await connect(port) for _ in range(2)]
        for client in clients:
            self.assertTrue(client.head.startswith(b"HTTP/1.1 101 "), client.head)
            await self.echo(client, b"hi")
        self.assertEqual([len(m.handshakes) for m in self.members], [1, 1])
        self.assertEqual([line for m in self.members for line, _ in m.handshakes], [b"GET /echo HTTP/1.1"] * 2)
        self.assertEqual([m.in_flight for m in self.balancer_members()], [1, 1])  # a tunnel is a request in flight
        for client in clients:
            client.transport.loseConnection()
            await client.closed
        await until(lambda: not self.site.accelerator.tunnels.open)
        self.assertEqual([m.in_flight for m in self.balancer_members()], [0, 0])
        self.assertEqual([m.bytes for m in self.balancer_members()], [(2 + 4 + 2) + (2 + 2)] * 2)  # one echo: a masked frame in, a frame out

    async def test_bybusyness_sends_plain_requests_away_from_the_member_holding_a_tunnel(self):
        port = self.start('method = "bybusyness"')
        client = await connect(port)
        await self.echo(client, b"hi")
        self.assertEqual([len(m.handshakes) for m in self.members], [1, 0])
        for _ in range(3):
            reply = await raw_request(port, b"GET /ws/plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            self.assertTrue(reply.endswith(b"plain"), reply)
        self.assertEqual([len(m.handshakes) for m in self.members], [1, 3])
        client.transport.loseConnection()
        await client.closed

    async def test_a_dead_member_is_skipped(self):
        port = self.start(dead_first=True)
        for _ in range(2):
            client = await connect(port)
            self.assertTrue(client.head.startswith(b"HTTP/1.1 101 "), client.head)
            await self.echo(client, b"through the live one")
            client.transport.loseConnection()
            await client.closed
        self.assertEqual(len(self.members[0].handshakes), 2)
        now = reactor.seconds()
        self.assertEqual([(m.route, m.state(now)) for m in self.balancer_members()], [("a", "out"), ("b", "up")])

    async def test_a_sticky_session_keeps_its_member(self):
        port = self.start('sticky_cookie = "ROUTEID"\nsticky_set = true')
        first = await connect(port)
        cookie = first.field(b"set-cookie")
        self.assertIsNotNone(cookie)
        route = cookie.split(b";")[0].rpartition(b".")[2]
        pinned = self.members[b"ab".index(route)]
        clients = [first] + [await connect(port, extra=b"Cookie: ROUTEID=." + route + b"\r\n") for _ in range(3)]
        for client in clients:
            await self.echo(client, b"same member")
            client.transport.loseConnection()
            await client.closed
        self.assertEqual(len(pinned.handshakes), 4)
        self.assertEqual(sum(len(m.handshakes) for m in self.members), 4)
        self.assertIsNone(clients[1].field(b"set-cookie"))  # the session already names its member


class SecureOriginTests(unittest.TestCase):
    """wss:// origins are verified like https:// ones."""

    def accel(self, leaf, ca_path: str) -> int:
        self.origin = EchoOriginFactory()
        port = listen_https(self, self.origin, leaf).getHost().port
        route = Route(prefix="/ws/", origin=parse_origin(f"wss://127.0.0.1:{port}/"), websocket=True, tls_ca=ca_path)
        site = build_site(Config(routes=(route,)), reactor)
        accel_port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(site.close)
        self.addCleanup(accel_port.stopListening)
        return accel_port.getHost().port

    def ca_file(self, ca) -> str:
        path = os.path.join(temporary_directory(self), "ca.pem")
        ca.cert_pem.write_to_path(path)
        return path

    async def test_a_verified_wss_origin(self):
        ca = trustme.CA()
        port = self.accel(ca.issue_cert("127.0.0.1"), self.ca_file(ca))
        client = await connect(port)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 101 "))
        payload = os.urandom(1 << 20)
        client.send(BINARY, payload)
        self.assertEqual(await client.message(0), (BINARY, payload))
        client.transport.loseConnection()
        await client.closed
        await until(lambda: len(self.origin.closed) == 1)

    async def test_an_untrusted_wss_origin_is_502(self):
        port = self.accel(trustme.CA().issue_cert("127.0.0.1"), self.ca_file(trustme.CA()))
        client = await connect(port)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 502 "))
        self.assertEqual(self.origin.handshakes, [])


class IdleTimeoutUnitTests(unittest.TestCase):
    """The tunnel's idle timer on a fake clock: any byte either way restarts it."""

    def test_idle_both_ways_closes_both_sides(self):
        clock = MemoryReactorClock()
        logged = []
        client, origin = StringTransport(), StringTransport()
        channel = SimpleNamespace(transport=client, site=SimpleNamespace(log=logged.append))
        finished = []
        request = SimpleNamespace(channel=channel, sentLength=0, log_extra="", connectionLost=finished.append)
        route = Route(prefix="/ws/", origin=parse_origin("ws://o/"), websocket=True, websocket_idle_timeout=300)
        tunnels = WebSocketTunnels(forwarder=None, reactor=clock)
        tunnels.count[route.prefix] = 1  # as handle() counts the handshake
        figures = Traffic().tunnel_opened("/ws/")
        switched = OriginResponse(SimpleNamespace(transport=origin), 101, b"Switching Protocols", b"HTTP/1.1", [], 0)
        tunnel = Tunnel(tunnels, route, request, Fetched(switched), figures)
        tunnels.open.add(tunnel)
        tunnel.start()
        self.assertIs(client.producer, origin)  # each transport's buffer steers the other's reading
        self.assertIs(origin.producer, client)
        clock.advance(200)
        tunnel.client.dataReceived(b"ping")
        clock.advance(200)
        tunnel.origin.dataReceived(b"pong!")
        clock.advance(299)
        self.assertFalse(client.disconnecting or origin.disconnecting)
        self.assertEqual((origin.value(), client.value()), (b"ping", b"pong!"))
        clock.advance(1)
        self.assertTrue(client.disconnecting and origin.disconnecting)
        tunnel.client.connectionLost(None)
        tunnel.origin.connectionLost(None)
        self.assertEqual(logged, [request])
        self.assertEqual(len(finished), 1)  # the request is over: its notifyFinish fires (drain counts it)
        self.assertEqual((request.sentLength, request.log_extra), (5, " ws_in=4 ws_out=5"))
        self.assertEqual((tunnels.count, tunnels.open), ({"/ws/": 0}, set()))
        # open, opened, bytes to the origin and to the client, closes: client, origin, idle, shutdown
        self.assertEqual(figures, [0, 1, 4, 5, 0, 0, 1, 0])


class TwoWorkersTests(unittest.TestCase):
    """Tunnel figures are summed over worker processes like every other figure."""

    async def test_tunnels_held_by_two_workers_are_summed(self):
        directory = temporary_directory(self)
        origin = EchoOriginFactory()
        origin_port = reactor.listenTCP(0, origin, interface="127.0.0.1")
        self.addCleanup(origin_port.stopListening)
        config_path = os.path.join(directory, "accel.toml")
        with open(config_path, "w") as f:
            f.write('[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nworkers = 2\nshutdown_timeout = 5\n'
                    f'[[route]]\nprefix = "/ws/"\norigin = "ws://127.0.0.1:{origin_port.getHost().port}/"\n'
                    f'[cache]\ndir = "{os.path.join(directory, "cache")}"\n')
        accel = Supervised(self, config_path)
        await accel.workers_accepting(2)
        workers = accel.accepting[:2]
        clients, owners = [], set()
        while owners != set(workers):  # tunnels until each worker holds one (the kernel spreads connections)
            self.assertLess(len(clients), 100, "every connection went to the same worker")
            client = await connect(accel.port)
            self.addCleanup(client.transport.loseConnection)
            self.assertTrue(client.head.startswith(b"HTTP/1.1 101 "), client.head)
            clients.append(client)
            owners.add(connection_owner(accel.port, client.transport.getHost().port, workers))
        for client in clients:
            client.send(BINARY, b"x" * 100)  # 2 + 4 + 100 bytes in, 2 + 100 out
            await client.message(0)
        n = len(clients)

        async def status() -> dict:
            reply = await raw_request(accel.port, b"GET /accel-status?format=json HTTP/1.1\r\nHost: a\r\n"
                                                  b"Connection: close\r\n\r\n")
            return json.loads(reply.partition(b"\r\n\r\n")[2])

        tunnels = (await status())["websocket"]
        self.assertEqual((tunnels["open"], tunnels["opened"]), (n, n))
        self.assertEqual(tunnels["bytes"], {"client_to_origin": 106 * n, "origin_to_client": 102 * n})
        for client in clients:
            client.transport.loseConnection()
            await client.closed
        await until(lambda: len(origin.closed) == n)
        while (tunnels := (await status())["websocket"])["open"]:  # each worker sees its client go, in its time
            pass
        self.assertEqual((tunnels["opened"], tunnels["closes"]["client"]), (n, n))
        await accel.kill()
