"""Sending a route's requests to balancer members: failover, accounting, sticky cookies and health checks.

The choice of a member is pure (``accel.proxy.balancer``); this module does the I/O around it on the shared
``OriginClients``, one pool per member origin.

Failover: a request that could not be sent to a member — the connection was refused or reset before the
response began, or no response byte came before the timeout (``OriginUnavailable``, ``OriginTimeout``) — marks
that member out for ``retry`` seconds and, when it is idempotent and has no body (RFC 9110 §9.2.2: it can be
sent again safely), goes to the next usable member. A member whose connections and queue are full
(``OriginBusy``) was sent nothing: any request goes on to the next member, and the full one stays in. When none
is left the request fails with ``NoUsableMember``
(503, or stale content where the cache may serve it).

Health checks: one timer per balancer with a ``[balancer.NAME.health]`` table; each tick checks every member
that has no check in flight (a slow member never has two). A state change is logged, a repeated result is not.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import UNKNOWN_LENGTH

from accel.config import BalancerSettings, Route
from accel.http.headers import RawFields
from accel.proxy.balancer import Balancer, Member, sticky_cookie, sticky_route
from accel.proxy.manager_record import ManagerRecord
from accel.proxy.origin import IDEMPOTENT, Fetched, OriginBusy, OriginClients, OriginTimeout, OriginUnavailable
from accel.proxy.routing import origin_target

log = Logger()


class NoUsableMember(OriginUnavailable):
    """Every member of the balancer is out, disabled or already failed this request: 503."""


@dataclass
class MemberFetched(Fetched):
    """A member's response: releasing it ends the request in the member's accounting."""

    ended: object = None  # called once, with the body bytes received

    def release(self) -> None:
        super().release()
        if self.ended is not None:
            ended, self.ended = self.ended, None
            ended(self.response.received)

    def tunnel_closed(self, carried: int) -> None:
        """A tunnel is a request in flight at its member (``bybusyness`` sees it) until it closes."""
        if self.ended is not None:
            ended, self.ended = self.ended, None
            ended(carried)


class Balancers:
    """Every configured balancer, its members' routes and its health check timer."""

    def __init__(self, clock):
        """``clock`` (the reactor, or a fake one in tests) gives ``now`` and drives the health checks.
        ``configure`` gives it balancers."""
        self.clock = clock
        self.clients: OriginClients | None = None
        self.balancers: dict[str, Balancer] = {}
        self.health: dict[str, HealthChecks] = {}
        self._member_routes: dict[tuple, tuple[Route, Route]] = {}
        self.record: ManagerRecord | None = None  # worker processes: the manager's changes, shared

    def configure(self, settings: dict[str, BalancerSettings], clients: OriginClients) -> None:
        """Take a (new) configuration and its origin clients: members configured as before keep their state
        and counters, and the health checks go on if they were running."""
        running = any(checks.timer.running for checks in self.health.values())
        self.stop()
        self.clients = clients
        self.balancers = {name: Balancer(s, self.balancers.get(name)) for name, s in settings.items()}
        self.restore_shared()
        self._member_routes.clear()
        self.health = {
            name: HealthChecks(balancer, self.clients, self.clock)
            for name, balancer in self.balancers.items() if balancer.settings.health is not None
        }
        if running:
            self.start()

    def share(self, record: ManagerRecord) -> None:
        """Worker processes: the manager's changes are in force in every process that shares ``record``."""
        self.record = record
        self.restore_shared()

    def restore_shared(self) -> None:
        """Take the manager's changes from the shared record (another process changed a member), if shared."""
        if self.record is not None:
            entries = self.record.entries()
            for balancer in self.balancers.values():
                balancer.restore(entries)

    def figures(self) -> dict:
        """Every member's figures (``Member.figures``) by balancer: what this process publishes for the status
        page, which sums them over the workers."""
        now = self.clock.seconds()
        return {name: [m.figures(now) for m in balancer.members] for name, balancer in self.balancers.items()}

    def start(self) -> None:
        for checks in self.health.values():
            checks.start()

    def stop(self) -> None:
        for checks in self.health.values():
            checks.stop()

    def sticky(self, route: Route, cookie_values: list[bytes]) -> str | None:
        """The member route a request's sticky cookie names, if the route's balancer uses one."""
        balancer = self.balancers.get(route.balancer)
        name = balancer.settings.sticky_cookie if balancer is not None else None
        return sticky_route(cookie_values, name) if name and cookie_values else None

    def member_route(self, route: Route, member: Member) -> Route:
        """``route`` with the member's origin (made once per route and member)."""
        key = (id(route), member.url)  # id: Routes are slow to hash
        found = self._member_routes.get(key)
        if found is None or found[0] is not route:
            found = self._member_routes[key] = (route, replace(route, origin=member.settings.origin))
        return found[1]

    def send(self, route: Route, method: bytes, target: str, headers: RawFields, body=None, interim=None,
             sticky: str | None = None, upgrade: bool = False) -> Deferred[Fetched]:
        """Send a request for a public ``target`` to a member of the route's balancer, failing over while the
        request can be repeated. Fires with a ``MemberFetched``; cancelling it cancels the member's request.
        ``upgrade``: a WebSocket handshake (``OriginClient.fetch``), whose tunnel stays in flight at the
        member until it closes (``MemberFetched.tunnel_closed``)."""
        balancer = self.balancers.get(route.balancer)
        if balancer is None:  # a request of an older generation, whose balancer a reload removed
            return fail(NoUsableMember(f"balancer {route.balancer} is no longer configured"))
        return _Attempts(self, balancer, route, method, target, headers, body, interim, sticky, upgrade).start()


class _Attempts:
    """One request's tries, member after member."""

    def __init__(self, balancers: Balancers, balancer: Balancer, route, method, target, headers, body, interim, sticky,
                 upgrade):
        self.balancers, self.balancer, self.route = balancers, balancer, route
        self.method, self.target, self.headers, self.body, self.interim = method, target, headers, body, interim
        self.sticky = sticky
        self.upgrade = upgrade
        self.tried: list[Member] = []
        self.current: Deferred | None = None
        self.busy = None  # the failure of the last member that was full
        self.result: Deferred[Fetched] = Deferred(lambda _: self.current is not None and self.current.cancel())
        self.repeatable = method in IDEMPOTENT and body is None

    def start(self) -> Deferred[Fetched]:
        self.attempt()
        return self.result

    def attempt(self) -> None:
        now = self.balancers.clock.seconds()
        member = self.balancer.choose(now, self.target, self.sticky, self.tried)
        if member is None:
            if self.busy is not None:
                self.result.errback(self.busy)
                return
            tried = ", ".join(m.url for m in self.tried)
            why = f"no usable member in balancer {self.balancer.name}" + (f" (tried {tried})" if tried else "")
            self.result.errback(NoUsableMember(why))
            return
        self.tried.append(member)
        route = self.balancers.member_route(self.route, member)
        fields = self.headers if route.preserve_host else _with_host(self.headers, route.origin.authority)
        self.balancer.started(member)
        client = self.balancers.clients.for_route(route)
        self.current = client.fetch(self.method, origin_target(route, self.target).encode("latin-1"), fields,
                                    self.body, timeout=route.response_timeout, interim=self.interim,
                                    upgrade=self.upgrade)
        self.current.addCallbacks(lambda fetched: self.answered(member, route, fetched),
                                  lambda failure: self.failed(member, failure))

    def answered(self, member: Member, route: Route, fetched: Fetched) -> None:
        sent = self.body.length if self.body is not None and self.body.length is not UNKNOWN_LENGTH else 0
        settings = self.balancer.settings
        cookie = None
        if settings.sticky_set and member.route != self.sticky:
            cookie = sticky_cookie(settings.sticky_cookie, member.route)
        answer = MemberFetched(fetched.response, route, cookie,
                               lambda received: self.balancer.ended(member, sent + received))
        if self.result.called:  # cancelled meanwhile
            answer.release()
            return
        self.result.callback(answer)

    def failed(self, member: Member, failure) -> None:
        self.balancer.ended(member, 0)
        if failure.check(CancelledError) or self.result.called:
            return
        if failure.check(OriginBusy):
            self.busy = failure
            self.attempt()
            return
        if not failure.check(OriginUnavailable, OriginTimeout):
            self.result.errback(failure)
            return
        self.busy = None
        self.balancer.failed(member, self.balancers.clock.seconds())
        log.warn("balancer {name}: member {url} is out for {retry:g} s: {why}", name=self.balancer.name,
                 url=member.url, retry=self.balancer.settings.retry, why=failure.getErrorMessage())
        if self.repeatable:
            self.attempt()
        else:
            self.result.errback(failure)


def _with_host(headers: RawFields, authority: str) -> RawFields:
    """The header section with ``Host`` naming the member (the request was prepared for the balancer)."""
    host = authority.encode("latin-1")
    return [(name, host) if name.lower() == b"host" else (name, value) for name, value in headers]


class HealthChecks:
    """A balancer's active health checks: one timer, at most one check in flight per member."""

    def __init__(self, balancer: Balancer, clients: OriginClients, clock):
        self.balancer = balancer
        self.clients = clients
        self.clock = clock
        self.settings = balancer.settings.health
        self.in_flight: set[Member] = set()
        self.timer = LoopingCall(self.tick)
        self.timer.clock = clock

    def start(self) -> None:
        if not self.timer.running:
            self.timer.start(self.settings.interval, now=True)

    def stop(self) -> None:
        if self.timer.running:
            self.timer.stop()

    def tick(self) -> None:
        for member in self.balancer.members:
            if member not in self.in_flight and member.admin != "disabled":
                self.check(member)

    def check(self, member: Member) -> Deferred:
        self.in_flight.add(member)
        route = Route(prefix="/", origin=member.settings.origin)
        fields = [(b"host", route.origin.authority.encode("latin-1")), (b"user-agent", b"accel-health-check")]
        d = self.clients.for_route(route).fetch(self.settings.method.encode("ascii"), self.settings.uri.encode("latin-1"),
                                                fields, timeout=self.settings.interval)

        def answered(fetched: Fetched):
            fetched.release()
            code = fetched.response.code
            passed = code in self.settings.expect
            return passed, f"{code}" if passed else f"status {code}"

        def result(outcome):
            self.in_flight.discard(member)
            passed, detail = outcome
            change = self.balancer.checked(member, passed, detail, self.clock.seconds())
            if change is not None:
                log.warn("balancer {name}: health check {state} member {url} ({detail})", name=self.balancer.name,
                         state="takes out" if change == "out" else "puts back", url=member.url, detail=detail)

        d.addCallbacks(answered, lambda failure: (False, failure.getErrorMessage()))
        d.addCallback(result)
        d.addErrback(lambda failure: log.failure("health check of {url} failed", failure=failure, url=member.url))
        return d
