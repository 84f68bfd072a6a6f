"""Balancers end to end: three real origins on loopback behind accel, real clients; balancer time (retry
periods, health check timers) runs on a fake clock the tests advance."""

from __future__ import annotations

import json
import os
from io import BytesIO
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web import server
from twisted.web.client import FileBodyProducer

from accel.app import build_site
from accel.config import parse_config
from accel.proxy.manager_record import ManagerRecord
from tests.raw_origin import RawOrigin
from tests.support import RecordingOrigin, get, http_client, temporary_directory, turns, until
from tests.test_status import metric_samples


class Member:
    """One origin of the cluster, which can go down (refusing connections, dropping open ones) and come back."""

    def __init__(self, testcase):
        self.origin = RecordingOrigin()
        self.site = server.Site(self.origin)
        self.channels = set()
        build = self.site.buildProtocol

        def tracked(addr):
            channel = build(addr)
            self.channels.add(channel)
            return channel

        self.site.buildProtocol = tracked
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.number = self.port.getHost().port
        testcase.addCleanup(self.close)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.number}"

    def got(self, path: bytes = None) -> int:
        return sum(1 for s in self.origin.seen if path is None or s.uri == path)

    @defer.inlineCallbacks
    def down(self):
        yield self.port.stopListening()
        self.port = None
        for channel in self.channels:
            transport = getattr(channel, "_channel", channel).transport
            if transport is not None:
                transport.abortConnection()
        self.channels.clear()
        yield turns(2)

    def up(self):
        self.port = reactor.listenTCP(self.number, self.site, interface="127.0.0.1")

    def close(self):
        for request in self.origin.pending:
            if not request._disconnected and not request.finished:
                request.channel.transport.abortConnection()
        if self.port is not None:
            return self.port.stopListening()


class Cluster:
    def __init__(self, testcase, balancer: str = "", members=("", "", ""), route: str = "", extra: str = "",
                 origins=None):
        self.members = [Member(testcase) for _ in members]
        urls = [url or m.url for url, m in zip(origins or [None] * len(members), self.members)]
        self.clock = Clock()
        self.directory = temporary_directory(testcase, "accel-balancer-")
        self.log = os.path.join(self.directory, "access.log")
        text = (f'[server]\naccess_log = "{self.log}"\n'
                f'[[route]]\nprefix = "/"\norigin = "balancer://app/"\n{route}\n{extra}\n[balancer.app]\n{balancer}\n')
        for url, options in zip(urls, members):
            text += f'[[balancer.app.member]]\nurl = "{url}"\n{options}\n'
        self.text = text
        self.config = parse_config(text, os.path.join(self.directory, "accel.toml"))
        self.site = build_site(self.config, reactor, clock=self.clock)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.agent = http_client(testcase)
        testcase.addCleanup(self.close)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def counts(self, path: bytes = None) -> list[int]:
        return [m.got(path) for m in self.members]

    def get(self, path: str, **options):
        return get(self.agent, self.url + path, **options)

    @defer.inlineCallbacks
    def status(self) -> dict:
        response, body = yield self.get("/accel-status?format=json")
        assert response.code == 200, body
        return json.loads(body)

    @defer.inlineCallbacks
    def states(self) -> list[str]:
        document = yield self.status()
        return [m["state"] for m in document["balancers"]["app"]["members"]]

    def post(self, path: str, fields: dict, as_json: bool = False):
        body = json.dumps(fields).encode() if as_json else urlencode(fields).encode()
        content_type = b"application/json" if as_json else b"application/x-www-form-urlencoded"
        return self.get(path, method=b"POST", headers={b"content-type": content_type},
                        body=FileBodyProducer(BytesIO(body)))

    @defer.inlineCallbacks
    def close(self):
        yield self.port.stopListening()
        yield self.site.close()


class Methods(unittest.TestCase):
    @defer.inlineCallbacks
    def test_byrequests_follows_the_weights_and_the_access_log_names_the_member(self):
        cluster = Cluster(self, members=('weight = 2', "", ""))
        for i in range(8):
            response, _ = yield cluster.get(f"/r{i}")
            self.assertEqual(response.code, 200)
        self.assertEqual(cluster.counts(), [4, 2, 2])
        yield turns(3)
        with open(cluster.log) as f:
            logged = [line.split(" origin=")[1].split()[0] for line in f.read().splitlines()]
        self.assertEqual(sorted(set(logged)), sorted(m.url for m in cluster.members))
        seen = cluster.members[1].origin.seen[0]
        self.assertEqual(seen.header(b"host"), [f"127.0.0.1:{cluster.members[1].number}".encode()])
        document = yield cluster.status()
        self.assertEqual([m["requests"] for m in document["balancers"]["app"]["members"]], [4, 2, 2])

    @defer.inlineCallbacks
    def test_bybusyness_avoids_the_member_with_a_request_in_flight(self):
        cluster = Cluster(self, balancer='method = "bybusyness"')
        hanging = cluster.get("/hang")
        hanging.addErrback(lambda _: None)
        yield until(lambda: sum(cluster.counts()) == 1)
        busy = cluster.counts().index(1)
        for i in range(6):
            yield cluster.get(f"/b{i}")
        self.assertEqual(cluster.counts()[busy], 1)
        self.assertEqual(sum(cluster.counts()), 7)
        hanging.cancel()
        yield turns(3)

    @defer.inlineCallbacks
    def test_bytraffic_avoids_the_member_that_carried_the_most_bytes(self):
        cluster = Cluster(self, balancer='method = "bytraffic"')
        response, body = yield cluster.get("/big/200000")
        self.assertEqual(len(body), 200000)
        heavy = cluster.counts().index(1)
        for i in range(8):
            yield cluster.get(f"/t{i}")
        self.assertEqual(cluster.counts()[heavy], 1)

    @defer.inlineCallbacks
    def test_uri_hash_keeps_a_url_on_its_member(self):
        cluster = Cluster(self, balancer='method = "uri-hash"')
        for _ in range(3):
            for i in range(12):
                yield cluster.get(f"/page/{i}")
        for i in range(12):
            path = f"/page/{i}".encode()
            self.assertEqual(sorted(cluster.counts(path)), [0, 0, 3], path)
        self.assertGreater(sum(1 for c in cluster.counts() if c), 1)


class Failover(unittest.TestCase):
    @defer.inlineCallbacks
    def test_an_idempotent_request_goes_to_another_member_without_a_client_visible_error(self):
        cluster = Cluster(self, balancer="retry = 30")
        yield cluster.get("/warm")  # member 1 now has a pooled connection, which goes down with it
        yield cluster.members[0].down()
        for i in range(6):
            response, body = yield cluster.get(f"/f{i}")
            self.assertEqual(response.code, 200, body)
        self.assertEqual(cluster.counts(), [1, 3, 3])
        document = yield cluster.status()
        first = document["balancers"]["app"]["members"][0]
        self.assertEqual((first["state"], first["failures"]), ("out", 1))
        cluster.clock.advance(31)
        cluster.members[0].up()
        for i in range(3):
            yield cluster.get(f"/again{i}")
        self.assertEqual(cluster.counts()[0], 2)  # back after the retry period

    @defer.inlineCallbacks
    def test_a_request_with_a_body_is_not_repeated_but_the_member_is_marked_out(self):
        cluster = Cluster(self)
        yield cluster.members[0].down()
        response, _ = yield cluster.post("/form", {"a": "1"})
        self.assertEqual(response.code, 502)
        self.assertEqual(cluster.counts(), [0, 0, 0])
        states = yield cluster.states()
        self.assertEqual(states, ["out", "up", "up"])
        response, _ = yield cluster.post("/form", {"a": "1"})
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_a_reset_before_the_response_fails_over(self):
        reset = RawOrigin(self, lambda connection, request: connection.reset())
        cluster = Cluster(self, members=("", ""), origins=[reset.url.rstrip("/"), None])
        config_urls = [m["url"] for m in (yield cluster.status())["balancers"]["app"]["members"]]
        self.assertEqual(config_urls[0], reset.url.rstrip("/"))
        response, _ = yield cluster.get("/x")
        self.assertEqual(response.code, 200)
        self.assertEqual(len(reset.requests), 1)
        self.assertEqual(cluster.members[1].got(), 1)

    @defer.inlineCallbacks
    def test_a_member_silent_past_the_response_timeout_fails_over(self):
        # Short, but long enough for the next member (in this process) to answer on a loaded machine.
        cluster = Cluster(self, route="response_timeout = 0.1")
        cluster.members[0].origin.handlers[b"/slow"] = lambda request: cluster.members[0].origin.pending.append(request) or server.NOT_DONE_YET
        response, body = yield cluster.get("/slow")
        self.assertEqual(response.code, 200)
        self.assertEqual(cluster.counts(), [1, 1, 0])

    @defer.inlineCallbacks
    def test_a_member_that_is_full_passes_the_request_on_and_stays_in(self):
        cluster = Cluster(self, balancer='sticky_cookie = "ROUTEID"', route="max_connections = 1")
        hanging = cluster.get("/hang", headers={b"cookie": b"ROUTEID=.1"})
        hanging.addErrback(lambda _: None)
        yield until(lambda: cluster.counts() == [1, 0, 0])
        for client in cluster.site.balancers.clients._clients.values():
            client.queue_limit = 0  # no room to wait either
        response, _ = yield cluster.get("/x", headers={b"cookie": b"ROUTEID=.1"})
        self.assertEqual(response.code, 200)
        self.assertEqual(cluster.counts(), [1, 1, 0])
        states = yield cluster.states()
        self.assertEqual(states, ["up", "up", "up"])
        hanging.cancel()
        yield turns(3)

    @defer.inlineCallbacks
    def test_no_usable_member_is_503_with_the_error_document(self):
        document = os.path.join(temporary_directory(self, "accel-doc-"), "503.html")
        with open(document, "w") as f:
            f.write("<p>back soon</p>")
        cluster = Cluster(self, members=("", ""), extra=f'[error_documents]\n503 = "{document}"')
        for route in ("1", "2"):
            response, _ = yield cluster.post(f"/accel-status/balancer/app/member/{route}", {"action": "disable"})
            self.assertEqual(response.code, 303)
        response, body = yield cluster.get("/x")
        self.assertEqual((response.code, body), (503, b"<p>back soon</p>"))
        self.assertEqual(cluster.counts(), [0, 0])


class Standby(unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_standby_takes_over_while_every_other_member_is_out_and_hands_back(self):
        cluster = Cluster(self, balancer="retry = 30", members=("", "", "standby = true"))
        for i in range(4):
            yield cluster.get(f"/s{i}")
        self.assertEqual(cluster.counts(), [2, 2, 0])
        yield cluster.members[0].down()
        yield cluster.members[1].down()
        for i in range(3):
            response, _ = yield cluster.get(f"/t{i}")
            self.assertEqual(response.code, 200)
        self.assertEqual(cluster.counts(), [2, 2, 3])
        states = yield cluster.states()
        self.assertEqual(states, ["out", "out", "standby"])
        cluster.members[0].up()
        cluster.members[1].up()
        cluster.clock.advance(31)
        for i in range(4):
            yield cluster.get(f"/u{i}")
        self.assertEqual(cluster.counts(), [4, 4, 3])


class Sticky(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_session_sticks_to_its_member_and_moves_when_it_is_out(self):
        cluster = Cluster(self, balancer='sticky_cookie = "ROUTEID"\nsticky_set = true',
                          members=('route = "a"', 'route = "b"', 'route = "c"'))
        response, _ = yield cluster.get("/login")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"ROUTEID=.a; Path=/; HttpOnly"])
        for i in range(4):
            response, _ = yield cluster.get(f"/p{i}", headers={b"cookie": b"session=x; ROUTEID=xyz.b"})
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        self.assertEqual(cluster.counts(), [1, 4, 0])
        yield cluster.post("/accel-status/balancer/app/member/b", {"action": "disable"})
        response, _ = yield cluster.get("/p", headers={b"cookie": b"ROUTEID=xyz.b"})
        self.assertEqual(response.code, 200)
        cookie = response.headers.getRawHeaders(b"set-cookie")[0]
        self.assertIn(cookie, (b"ROUTEID=.a; Path=/; HttpOnly", b"ROUTEID=.c; Path=/; HttpOnly"))
        self.assertEqual(cluster.counts()[1], 4)

    @defer.inlineCallbacks
    def test_a_draining_member_keeps_its_sessions_but_takes_no_new_ones(self):
        cluster = Cluster(self, balancer='sticky_cookie = "ROUTEID"')
        response, body = yield cluster.post("/accel-status/balancer/app/member/2", {"action": "drain"}, as_json=True)
        self.assertEqual(json.loads(body)["state"], "draining")
        for i in range(4):
            yield cluster.get(f"/n{i}")
        self.assertEqual(cluster.counts()[1], 0)
        yield cluster.get("/mine", headers={b"cookie": b"ROUTEID=s.2"})
        self.assertEqual(cluster.counts()[1], 1)


class HealthChecks(unittest.TestCase):
    def setUp(self):
        self.logged = []
        observer = lambda event: self.logged.append(event.get("log_format", "").format(**event) if "log_format" in event else "")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    @defer.inlineCallbacks
    def test_failing_checks_take_a_member_out_and_passing_ones_put_it_back(self):
        cluster = Cluster(self, balancer='[balancer.app.health]\nuri = "/health"\ninterval = 5\nfails = 2\npasses = 1')
        sick = cluster.members[0].origin
        sick.handlers[b"/health"] = _status(500)
        yield until(lambda: cluster.counts(b"/health") == [1, 1, 1])  # the first round runs at start
        yield until(lambda: not cluster.site.balancers.health["app"].in_flight)
        states = yield cluster.states()
        self.assertEqual(states, ["up", "up", "up"])  # one failure is not enough
        cluster.clock.advance(5)
        yield until(lambda: cluster.counts(b"/health") == [2, 2, 2] and not cluster.site.balancers.health["app"].in_flight)
        states = yield cluster.states()
        self.assertEqual(states, ["out", "up", "up"])
        for i in range(4):
            yield cluster.get(f"/h{i}")
        self.assertEqual(cluster.members[0].got() - cluster.members[0].got(b"/health"), 0)
        self.assertEqual(sum(1 for line in self.logged if "health check takes out member" in line), 1)
        document = yield cluster.status()
        self.assertEqual(document["balancers"]["app"]["members"][0]["health"], "status 500")
        del sick.handlers[b"/health"]
        cluster.clock.advance(5)
        yield until(lambda: cluster.counts(b"/health") == [3, 3, 3] and not cluster.site.balancers.health["app"].in_flight)
        states = yield cluster.states()
        self.assertEqual(states, ["up", "up", "up"])
        self.assertEqual(sum(1 for line in self.logged if "health check puts back member" in line), 1)
        self.assertEqual(sum(1 for line in self.logged if "health check" in line), 2)  # changes only

    @defer.inlineCallbacks
    def test_the_metrics_show_a_member_whose_checks_fail_down_and_the_others_up(self):
        cluster = Cluster(self, balancer='[balancer.app.health]\nuri = "/health"\ninterval = 5\nfails = 1',
                          members=("", 'route = "b"', "standby = true"))
        cluster.members[0].origin.handlers[b"/health"] = _status(503)
        yield until(lambda: cluster.counts(b"/health") == [1, 1, 1])
        yield until(lambda: not cluster.site.balancers.health["app"].in_flight)
        for i in range(4):
            yield cluster.get(f"/m{i}")
        response, body = yield cluster.get("/metrics")
        samples = metric_samples(body.decode())
        def sample(name, member, number):
            return samples[(name, (("balancer", "app"), ("member", member),
                                   ("url", cluster.members[number].url)))]
        self.assertEqual([sample("accel_balancer_member_up", m, n) for n, m in enumerate(("1", "b", "3"))],
                         [0, 1, 1])  # the standby is healthy: up, though it takes requests only when no other is
        self.assertEqual([sample("accel_balancer_member_requests_total", m, n) for n, m in enumerate(("1", "b", "3"))],
                         [0, 4, 0])
        self.assertEqual(sample("accel_balancer_member_in_flight", "b", 1), 0)
        yield cluster.post("/accel-status/balancer/app/member/b", {"action": "drain"}, as_json=True)
        response, body = yield cluster.get("/metrics")
        self.assertEqual(metric_samples(body.decode())[("accel_balancer_member_up", (
            ("balancer", "app"), ("member", "b"), ("url", cluster.members[1].url)))], 0)  # draining: no new requests

    @defer.inlineCallbacks
    def test_never_more_than_one_check_in_flight_per_member(self):
        cluster = Cluster(self, balancer='[balancer.app.health]\nuri = "/health"\ninterval = 5')
        slow = cluster.members[0].origin
        slow.handlers[b"/health"] = lambda request: slow.pending.append(request) or server.NOT_DONE_YET
        checks = cluster.site.balancers.health["app"]
        yield until(lambda: cluster.counts(b"/health") == [1, 1, 1] and len(checks.in_flight) == 1)
        for round_ in range(2, 4):
            cluster.clock.advance(5)
            yield until(lambda: cluster.counts(b"/health")[1:] == [round_, round_] and len(checks.in_flight) == 1)
        yield turns(5)
        self.assertEqual(cluster.counts(b"/health")[0], 1)


class Manager(unittest.TestCase):
    @defer.inlineCallbacks
    def test_json_shape_and_changes(self):
        cluster = Cluster(self, balancer='method = "bybusyness"', members=('route = "a"', "weight = 2", "standby = true"))
        document = yield cluster.status()
        app = document["balancers"]["app"]
        self.assertEqual(app["method"], "bybusyness")
        self.assertEqual([(m["url"], m["route"], m["state"], m["weight"], m["requests"]) for m in app["members"]], [
            (cluster.members[0].url, "a", "up", 1, 0),
            (cluster.members[1].url, "2", "up", 2, 0),
            (cluster.members[2].url, "3", "standby", 1, 0),
        ])
        self.assertEqual(set(app["members"][0]), {"url", "route", "state", "weight", "standby", "requests", "bytes",
                                                  "in_flight", "failures", "health", "out_for"})
        response, body = yield cluster.post("/accel-status/balancer/app/member/a", {"action": "disable"})
        self.assertEqual((response.code, response.headers.getRawHeaders(b"location")), (303, [b"/accel-status"]))
        response, body = yield cluster.post("/accel-status/balancer/app/member/2", {"weight": 5}, as_json=True)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["weight"], 5)
        states = yield cluster.states()
        self.assertEqual(states, ["disabled", "up", "standby"])
        for i in range(3):
            yield cluster.get(f"/m{i}")
        self.assertEqual(cluster.counts(), [0, 3, 0])
        yield cluster.post("/accel-status/balancer/app/member/a", {"action": "enable"})
        states = yield cluster.states()
        self.assertEqual(states[0], "up")
        response, page = yield cluster.get("/accel-status")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertIn(b'action="/accel-status/balancer/app/member/a"', page)
        self.assertIn(cluster.members[2].url.encode(), page)

    @defer.inlineCallbacks
    def test_bad_changes_are_refused(self):
        cluster = Cluster(self)
        for path, fields, code in [
            ("/accel-status/balancer/app/member/9", {"action": "disable"}, 404),
            ("/accel-status/balancer/web/member/1", {"action": "disable"}, 404),
            ("/accel-status/balancer/app/member/1", {"action": "explode"}, 400),
            ("/accel-status/balancer/app/member/1", {"weight": "0"}, 400),
            ("/accel-status/balancer/app/member/1", {}, 400),
            ("/accel-status/other", {"action": "disable"}, 404),
        ]:
            response, _ = yield cluster.post(path, fields)
            self.assertEqual(response.code, code, path)
        response, _ = yield cluster.get("/accel-status/balancer/app/member/1")
        self.assertEqual(response.code, 405)
        response, _ = yield cluster.get("/accel-status/balancer/app/member/1", method=b"POST",
                                        headers={b"origin": b"http://evil.example", b"content-type": b"application/json"},
                                        body=FileBodyProducer(BytesIO(b'{"action": "disable"}')))
        self.assertEqual(response.code, 403)
        states = yield cluster.states()
        self.assertEqual(states, ["up", "up", "up"])
        self.assertEqual(cluster.counts(), [0, 0, 0])  # the status page never reaches an origin

    @defer.inlineCallbacks
    def test_a_client_not_allowed_gets_403(self):
        cluster = Cluster(self, extra='[status]\npath = "/manage"\nallow = ["10.0.0.0/8"]')
        response, _ = yield cluster.get("/manage?format=json")
        self.assertEqual(response.code, 403)
        response, _ = yield cluster.post("/manage/balancer/app/member/1", {"action": "disable"})
        self.assertEqual(response.code, 403)
        self.assertEqual(cluster.site.balancers.balancers["app"].members[0].admin, "enabled")
        response, _ = yield cluster.get("/accel-status")  # not the page any more: an ordinary path
        self.assertEqual(response.code, 200)
        self.assertEqual(sum(cluster.counts()), 1)


class Reload(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_reload_keeps_the_state_of_the_members_it_keeps_and_the_health_checks_go_on(self):
        cluster = Cluster(self, balancer='[balancer.app.health]\nuri = "/health"\ninterval = 5')
        for i in range(3):
            yield cluster.get(f"/r{i}")
        yield cluster.post("/accel-status/balancer/app/member/2", {"action": "disable"})
        changed = cluster.text.replace(f'url = "{cluster.members[2].url}"\n',
                                       f'url = "{cluster.members[2].url}"\nweight = 3\n')
        cluster.site.accelerator.reload(parse_config(changed, "accel.toml"))
        document = yield cluster.status()
        members = document["balancers"]["app"]["members"]
        self.assertEqual([(m["state"], m["requests"], m["weight"]) for m in members],
                         [("up", 1, 1), ("disabled", 1, 1), ("up", 0, 3)])  # the third is a new member
        self.assertTrue(cluster.site.balancers.health["app"].timer.running)
        yield until(lambda: not cluster.site.balancers.health["app"].in_flight)
        checks = cluster.counts(b"/health")
        cluster.clock.advance(5)
        yield until(lambda: cluster.counts(b"/health") == [checks[0] + 1, checks[1], checks[2] + 1])  # not member 2
        for i in range(4):
            yield cluster.get(f"/s{i}")
        self.assertEqual(cluster.counts()[1] - cluster.counts(b"/health")[1], 1)  # still disabled


class SharedChanges(unittest.TestCase):
    """The manager's side of sharing a change with worker processes, in one process (a record in a temporary
    directory; ``announce`` stands for the other workers)."""

    @defer.inlineCallbacks
    def test_a_change_is_answered_once_the_other_workers_have_it(self):
        cluster = Cluster(self)
        announced = []
        record = ManagerRecord(temporary_directory(self, "accel-balancer-record-"),
                               lambda: announced.append(defer.Deferred()) or announced[-1])
        cluster.site.balancers.share(record)
        answer = cluster.post("/accel-status/balancer/app/member/2", {"action": "disable"}, as_json=True)
        yield until(lambda: announced)
        self.assertFalse(answer.called)
        self.assertEqual([e["admin"] for e in record.entries()], ["disabled"])
        announced[0].callback(None)
        response, body = yield answer
        self.assertEqual((response.code, json.loads(body)["state"]), (200, "disabled"))

    @defer.inlineCallbacks
    def test_a_change_that_cannot_be_recorded_is_a_500_and_logged(self):
        cluster = Cluster(self)
        missing = os.path.join(temporary_directory(self, "accel-balancer-record-"), "gone")
        cluster.site.balancers.share(ManagerRecord(missing, lambda: defer.succeed(None)))
        response, _ = yield cluster.post("/accel-status/balancer/app/member/2", {"action": "disable"}, as_json=True)
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(FileNotFoundError)), 1)


class Caching(unittest.TestCase):
    @defer.inlineCallbacks
    def test_cache_status_still_tells_a_hit_from_a_fetch(self):
        directory = temporary_directory(self, "accel-balancer-cache-")
        cluster = Cluster(self, extra=f'[cache]\ndir = "{directory}"')
        for member in cluster.members:
            member.origin.handlers[b"/c"] = _cacheable
        first, _ = yield cluster.get("/c")
        second, _ = yield cluster.get("/c")
        self.assertIn(b"fwd=", first.headers.getRawHeaders(b"cache-status")[0])
        self.assertIn(b"hit", second.headers.getRawHeaders(b"cache-status")[0])
        self.assertEqual(sum(cluster.counts()), 1)
        yield turns(3)
        with open(cluster.log) as f:
            origins = [line.split(" origin=")[1].split()[0] for line in f.read().splitlines()]
        self.assertIn(origins[0], [m.url for m in cluster.members])

    @defer.inlineCallbacks
    def test_the_sticky_cookie_goes_to_its_client_only_and_does_not_keep_the_response_from_being_stored(self):
        directory = temporary_directory(self, "accel-balancer-cache-")
        cluster = Cluster(self, balancer='sticky_cookie = "ROUTEID"\nsticky_set = true',
                          extra=f'[cache]\ndir = "{directory}"')
        for member in cluster.members:
            member.origin.handlers[b"/c"] = _cacheable
        first, _ = yield cluster.get("/c")
        self.assertEqual(first.headers.getRawHeaders(b"set-cookie"), [b"ROUTEID=.1; Path=/; HttpOnly"])
        second, body = yield cluster.get("/c")
        self.assertEqual(body, b"cached body")
        self.assertIn(b"hit", second.headers.getRawHeaders(b"cache-status")[0])
        self.assertIsNone(second.headers.getRawHeaders(b"set-cookie"))
        self.assertEqual(sum(cluster.counts()), 1)

    @defer.inlineCallbacks
    def test_with_no_usable_member_a_stale_response_is_served_where_allowed(self):
        directory = temporary_directory(self, "accel-balancer-cache-")
        # grace = 0: only the response's own stale-if-error allows stale here (the default grace would too)
        cluster = Cluster(self, members=("", ""), extra=f'[cache]\ndir = "{directory}"\ngrace = 0')
        for member in cluster.members:
            member.origin.handlers[b"/s"] = _stale_if_error
            member.origin.handlers[b"/n"] = _cacheable_briefly
        yield cluster.get("/s")
        yield cluster.get("/n")
        for route in ("1", "2"):
            yield cluster.post(f"/accel-status/balancer/app/member/{route}", {"action": "disable"})
        later = cluster.site.cache.layers[0].clock() + 60
        for layer in cluster.site.cache.layers:
            layer.clock = lambda: later
        response, body = yield cluster.get("/s")
        self.assertEqual((response.code, body), (200, b"stale is fine"))
        self.assertIn(b"fwd=stale", response.headers.getRawHeaders(b"cache-status")[0])
        response, body = yield cluster.get("/n")  # no stale-if-error: 503
        self.assertEqual(response.code, 503)
        self.assertEqual(sum(cluster.counts()), 2)


def _stale_if_error(request):
    request.setHeader(b"cache-control", b"max-age=1, stale-if-error=3600")
    return b"stale is fine"


def _cacheable_briefly(request):
    request.setHeader(b"cache-control", b"max-age=1")
    return b"fresh only"


def _status(code: int):
    def respond(request):
        request.setResponseCode(code)
        return b""

    return respond


def _cacheable(request):
    request.setHeader(b"cache-control", b"max-age=600")
    return b"cached body"
