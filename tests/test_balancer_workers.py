"""Balancers with ``twistd accel --workers 2``: the balancer manager's changes reach every worker (and the
workers started later), and its figures are summed over the workers. Real supervisor and worker processes,
two real member origins on loopback, clients whose connections are traced to the worker that holds them."""

from __future__ import annotations

import itertools
import json
import os
import signal

from twisted.internet import defer
from twisted.trial import unittest

from accel.proxy.manager_record import RECORD
from tests.support import temporary_directory
from tests.test_balancer import Member
from tests.test_status import metric_samples
from tests.workers_support import Supervised, connect, connection_owner, eventually

STATUS = b"/accel-status?format=json"


class BalancerWorkerTests(unittest.TestCase):
    def setUp(self):
        self.dir = temporary_directory(self, "accel-balancer-workers-")
        self.members = {"a": Member(self), "b": Member(self)}
        self.addCleanup(self._close_member_connections)  # runs after accel's processes are killed
        self.config_path = os.path.join(self.dir, "accel.toml")
        self.paths = (b"/page/%d" % n for n in itertools.count())  # never the same URL twice: nothing is a hit

    def write_config(self) -> None:
        members = "".join(f'[[balancer.app.member]]\nurl = "{m.url}"\nroute = "{route}"\n'
                          for route, m in self.members.items())
        with open(self.config_path, "w") as f:
            f.write('[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nworkers = 2\nshutdown_timeout = 5\n'
                    '[[route]]\nprefix = "/"\norigin = "balancer://app/"\n[balancer.app]\nmethod = "byrequests"\n'
                    f'{members}[cache]\ndir = "{os.path.join(self.dir, "cache")}"\n')

    @defer.inlineCallbacks
    def start(self):
        self.write_config()
        accel = Supervised(self, self.config_path)
        yield accel.workers_accepting(2)
        return accel

    @defer.inlineCallbacks
    def _close_member_connections(self):
        for member in self.members.values():
            for channel in member.channels:
                transport = getattr(channel, "_channel", channel).transport
                if transport is not None:
                    transport.abortConnection()
        yield eventually(lambda: all(not getattr(getattr(c, "_channel", c).transport, "connected", False)
                                     for m in self.members.values() for c in m.channels))

    def received(self) -> dict[str, int]:
        """The requests each member's origin received."""
        return {route: m.got() for route, m in self.members.items()}

    @defer.inlineCallbacks
    def clients_of(self, accel, workers: list[int]) -> dict:
        """A keep-alive connection held by each of ``workers`` (each asked for the status page once); the
        connections other workers took are left aside."""
        owned = {}
        for _ in range(100):
            client = yield connect(accel.port, self)
            status, _, _ = yield client.request(b"GET", STATUS)
            self.assertEqual(status, 200)
            owner = connection_owner(accel.port, client.local_port, workers)
            if owner is not None:  # (not a retiring worker's, which closed it after answering)
                owned.setdefault(owner, client)
            if len(owned) == len(workers):
                return owned
        self.fail(f"no connection reached every worker of {workers}: {list(owned)}")

    @staticmethod
    def change(client, route: str, **fields):
        body = json.dumps(fields).encode()
        headers = b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        return client.request(b"POST", b"/accel-status/balancer/app/member/" + route.encode(), headers, body)

    @defer.inlineCallbacks
    def members_of(self, client) -> dict[str, dict]:
        """The balancer manager's members, by route, as the worker holding ``client`` shows them."""
        status, _, body = yield client.request(b"GET", STATUS)
        self.assertEqual(status, 200)
        return {m["route"]: m for m in json.loads(body)["balancers"]["app"]["members"]}

    @defer.inlineCallbacks
    def send(self, client, n: int):
        for _ in range(n):
            status, _, _ = yield client.request(b"GET", next(self.paths))
            self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def assert_only_b_receives(self, clients, n: int = 4):
        before = self.received()
        for client in clients:
            yield self.send(client, n)
        self.assertEqual(self.received(), {"a": before["a"], "b": before["b"] + n * len(clients)})

    # -- manager changes ----------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_member_disabled_on_one_worker_gets_no_request_from_any_worker(self):
        accel = yield self.start()
        first, second = (yield self.clients_of(accel, accel.accepting[:2])).values()
        status, _, body = yield self.change(first, "a", action="disable")
        self.assertEqual((status, json.loads(body)["state"]), (200, "disabled"))
        yield self.assert_only_b_receives([first, second])
        for client in (first, second):
            members = yield self.members_of(client)
            self.assertEqual({route: m["state"] for route, m in members.items()}, {"a": "disabled", "b": "up"})

        status, _, _ = yield self.change(second, "a", action="enable")  # and back, from the other worker
        self.assertEqual(status, 200)
        before = self.received()
        for client in (first, second):
            yield self.send(client, 2)  # round robin: one each
        self.assertEqual(self.received(), {"a": before["a"] + 2, "b": before["b"] + 2})

    @defer.inlineCallbacks
    def test_workers_started_later_start_with_the_changes_in_force(self):
        accel = yield self.start()
        clients = yield self.clients_of(accel, accel.accepting[:2])
        receiver = accel.accepting[0]
        yield self.change(clients[receiver], "a", action="disable")
        yield self.change(clients[receiver], "b", weight="3")

        os.kill(receiver, signal.SIGKILL)  # the worker that took the POSTs: its replacement reads the record
        yield accel.workers_accepting(3)
        replacement = accel.accepting[2]
        clients = yield self.clients_of(accel, [replacement])
        members = yield self.members_of(clients[replacement])
        self.assertEqual([(m["state"], m["weight"]) for m in members.values()], [("disabled", 1), ("up", 3)])
        yield self.assert_only_b_receives([clients[replacement]])

        old = list(accel.accepting)
        accel.signal("HUP")  # a new generation of workers, the same configuration
        yield accel.logged(rb"reloaded: 2 workers accept")
        new = [pid for pid in accel.accepting if pid not in old]
        clients = yield self.clients_of(accel, new)
        for client in clients.values():
            members = yield self.members_of(client)
            self.assertEqual([(m["state"], m["weight"]) for m in members.values()], [("disabled", 1), ("up", 3)])
        yield self.assert_only_b_receives(list(clients.values()))

    # -- figures ------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_member_figures_are_the_sums_over_the_workers(self):
        cache = os.path.join(self.dir, "cache")
        os.makedirs(cache)
        with open(os.path.join(cache, RECORD), "w") as f:  # a previous run's change: a start forgets it
            json.dump([{"balancer": "app", "route": "a", "url": self.members["a"].url, "configured_weight": 1,
                        "standby": False, "admin": "disabled", "weight": 1}], f)
        accel = yield self.start()
        workers = accel.accepting[:2]
        clients = yield self.clients_of(accel, workers)
        for client in clients.values():
            yield self.send(client, 5)
        received = self.received()
        self.assertEqual(sum(received.values()), 10)
        self.assertGreater(received["a"], 0)

        members = yield self.members_of(clients[workers[0]])
        self.assertEqual({route: m["requests"] for route, m in members.items()}, received)
        self.assertEqual({route: m["failures"] + m["in_flight"] for route, m in members.items()}, {"a": 0, "b": 0})
        for route, member in members.items():  # the breakdown by worker adds up, and names both workers
            self.assertEqual({w["pid"] for w in member["workers"]}, set(workers))
            self.assertEqual(sum(w["requests"] for w in member["workers"]), received[route])
            self.assertEqual(member["bytes"], sum(w["bytes"] for w in member["workers"]))
        for pid in workers:  # each worker sent its 5 requests
            self.assertEqual(sum(w["requests"] for m in members.values() for w in m["workers"] if w["pid"] == pid), 5)

        status, _, body = yield clients[workers[1]].request(b"GET", b"/metrics")
        samples = metric_samples(body.decode())
        for route, member in self.members.items():
            labels = (("balancer", "app"), ("member", route), ("url", member.url))
            self.assertEqual(samples[("accel_balancer_member_requests_total", labels)], received[route])
            self.assertEqual(samples[("accel_balancer_member_up", labels)], 1)
