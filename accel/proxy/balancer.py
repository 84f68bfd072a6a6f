"""Choosing a balancer member for a request (mod_proxy_balancer's lbmethods), and the member states that failed
requests, health checks and the manager change. Pure: no I/O, time is an argument (``now``, in seconds).

A member is *usable* (takes new requests) when it is enabled, not taken out by health checks, and not within
``retry`` seconds of a failed request. The choice for a request:

1. sticky: a request whose sticky cookie names a member goes to it while it is usable, or draining (a drained
   member keeps its sessions and takes no new ones);
2. else the usable members that are not hot standbys, or, when there is none, the usable standbys;
3. among those, the balancer's method:

   ``byrequests``  weighted round robin, smooth (each member's score grows by its weight, the highest is
                   chosen and loses the total): weights 3:1 give a a a b, interleaved, not in bursts.
   ``bytraffic``   the fewest bytes carried per unit of weight (ties: fewest requests per weight).
   ``bybusyness``  the fewest requests in flight per unit of weight (ties: fewest requests per weight).
   ``uri-hash``    consistent hashing of the request-target on a ring with ``VIRTUAL_NODES`` points per unit
                   of weight: a member that comes or goes moves only its own share of URLs, which keeps
                   caching origins' caches warm. Members that are not candidates are skipped clockwise.

Worker processes share the manager's changes through a record (``recorded_changes``, ``manager_state``): a
list of entries, each naming a member by its balancer, route, URL, configured weight and standby, with the
admin state and weight the manager gave it. A member the manager put back as configured has no entry.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

from accel.config import BalancerMember, BalancerSettings, HealthCheck

VIRTUAL_NODES = 160  # ring points per unit of weight (uri-hash)

ENABLED, DISABLED, DRAINING = "enabled", "disabled", "draining"
ACTIONS = {"enable": ENABLED, "disable": DISABLED, "drain": DRAINING}


class Member:
    """A member's settings and everything that changes at run time."""

    def __init__(self, settings: BalancerMember):
        self.settings = settings
        self.route = settings.route
        self.weight = settings.weight
        self.standby = settings.standby
        self.admin = ENABLED  # set by the manager
        self.out_until = 0.0  # failed a request: out until then
        self.health_out = False  # taken out by health checks
        self.health_fails = self.health_passes = 0  # consecutive check results
        self.last_health: str | None = None  # "passed" / the reason it failed
        self.requests = 0
        self.bytes = 0
        self.in_flight = 0
        self.failures = 0  # requests that could not be sent
        self.score = 0  # smooth weighted round robin

    @property
    def url(self) -> str:
        return self.settings.origin.url

    def usable(self, now: float) -> bool:
        """Whether it may take a new request."""
        return self.admin == ENABLED and not self.health_out and now >= self.out_until

    def state(self, now: float) -> str:
        """up | out | disabled | draining | standby, as the manager shows it."""
        if self.admin != ENABLED:
            return self.admin
        if self.health_out or now < self.out_until:
            return "out"
        return "standby" if self.standby else "up"

    def figures(self, now: float) -> dict:
        """What the balancer manager shows of it (JSON-able): a process publishes these for the status page."""
        return {
            "url": self.url,
            "route": self.route,
            "state": self.state(now),
            "weight": self.weight,
            "standby": self.standby,
            "requests": self.requests,
            "bytes": self.bytes,
            "in_flight": self.in_flight,
            "failures": self.failures,
            "health": self.last_health,
            "out_for": max(0.0, round(self.out_until - now, 1)),
        }


class Balancer:
    def __init__(self, settings: BalancerSettings, previous: Balancer | None = None):
        """``previous`` (the same balancer before a configuration reload) hands its run-time state on to the
        members that are still configured the same way (same URL and route)."""
        self.settings = settings
        self.name = settings.name
        self.method = settings.method
        self.members = [Member(m) for m in settings.members]
        if previous is not None:
            kept = {(m.url, m.route): m for m in previous.members}
            for i, member in enumerate(self.members):
                old = kept.get((member.url, member.route))
                if old is not None and old.settings == member.settings:
                    self.members[i] = old
        self.by_route = {m.route: m for m in self.members}
        self._build_ring()

    # Choosing ----------------------------------------------------------------------------------------

    def choose(self, now: float, target: str = "", sticky: str | None = None, tried: Iterable[Member] = ()) -> Member | None:
        """The member for a request to ``target`` (sticky: the route its cookie names), not one of ``tried``;
        None when no member is usable."""
        tried = set(tried)
        pinned = self.by_route.get(sticky) if sticky is not None else None
        if pinned is not None and pinned not in tried and (pinned.usable(now) or self._drained_but_up(pinned, now)):
            return pinned
        usable = [m for m in self.members if m not in tried and m.usable(now)]
        candidates = [m for m in usable if not m.standby] or usable
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        return _PICK[self.method](self, candidates, target)

    @staticmethod
    def _drained_but_up(member: Member, now: float) -> bool:
        return member.admin == DRAINING and not member.health_out and now >= member.out_until

    def _by_requests(self, candidates: list[Member], target: str) -> Member:
        total = 0
        best = None
        for member in candidates:
            member.score += member.weight
            total += member.weight
            if best is None or member.score > best.score:
                best = member
        best.score -= total
        return best

    def _by_traffic(self, candidates: list[Member], target: str) -> Member:
        return min(candidates, key=lambda m: (m.bytes / m.weight, m.requests / m.weight))

    def _by_busyness(self, candidates: list[Member], target: str) -> Member:
        return min(candidates, key=lambda m: (m.in_flight / m.weight, m.requests / m.weight))

    def _by_uri_hash(self, candidates: list[Member], target: str) -> Member:
        wanted = set(candidates)
        start = bisect.bisect(self._ring_points, _hash(target))
        for i in range(len(self._ring_points)):
            member = self._ring_members[(start + i) % len(self._ring_points)]
            if member in wanted:
                return member
        return candidates[0]  # standbys are not on the ring; only they are left

    def _build_ring(self) -> None:
        ring = sorted(
            (_hash(f"{m.url} {m.route} {i}"), n)
            for n, m in enumerate(self.members) if not m.standby
            for i in range(VIRTUAL_NODES * m.weight)
        )
        self._ring_points = [point for point, _ in ring]
        self._ring_members = [self.members[n] for _, n in ring]

    # What happened -----------------------------------------------------------------------------------

    def started(self, member: Member) -> None:
        member.requests += 1
        member.in_flight += 1

    def ended(self, member: Member, carried: int) -> None:
        """A request is over (answered or failed); ``carried`` bytes went either way."""
        member.in_flight -= 1
        member.bytes += carried

    def failed(self, member: Member, now: float) -> None:
        """The member could not take a request: out for ``retry`` seconds."""
        member.failures += 1
        member.out_until = now + self.settings.retry
        member.health_passes = 0  # health checks put it back early only after a fresh run of passes

    def checked(self, member: Member, passed: bool, detail: str, now: float) -> str | None:
        """Record a health check result; returns "out" or "back" when it changed the member's state."""
        health: HealthCheck = self.settings.health
        member.last_health = detail
        if passed:
            member.health_fails = 0
            member.health_passes += 1
            was_out = member.health_out or now < member.out_until
            if was_out and member.health_passes >= health.passes:
                member.health_out = False
                member.out_until = 0.0  # a passing check also ends a failed request's retry period
                return "back"
            return None
        member.health_passes = 0
        member.health_fails += 1
        if not member.health_out and member.health_fails >= health.fails:
            member.health_out = True
            return "out"
        return None

    # The manager -------------------------------------------------------------------------------------

    def set_admin(self, member: Member, action: str) -> None:
        """enable | disable | drain (``ACTIONS``)."""
        member.admin = ACTIONS[action]

    def set_weight(self, member: Member, weight: int) -> None:
        if weight <= 0:
            raise ValueError("a weight must be a whole number greater than 0")
        member.weight = weight
        member.score = 0
        self._build_ring()

    def restore(self, entries: list[dict]) -> None:
        """Give every member the admin state and weight the record of manager changes ``entries`` holds for it
        (another process's change), or its configuration's when it holds none."""
        for member in self.members:
            admin, weight = manager_state(entries, self.name, member.settings)
            member.admin = admin
            if weight != member.weight:
                self.set_weight(member, weight)


_PICK = {
    "byrequests": Balancer._by_requests,
    "bytraffic": Balancer._by_traffic,
    "bybusyness": Balancer._by_busyness,
    "uri-hash": Balancer._by_uri_hash,
}


def _entry_key(balancer: str, settings: BalancerMember) -> dict:
    """What names a member in the record: a member configured otherwise (a reload) does not take its entry."""
    return {"balancer": balancer, "route": settings.route, "url": settings.origin.url,
            "configured_weight": settings.weight, "standby": settings.standby}


def recorded_changes(entries: list[dict], balancer: str, member: Member) -> list[dict]:
    """The record ``entries`` with ``member``'s admin state and weight as they are now (in ``balancer``): its
    entry replaced, or removed when they are its configuration's."""
    key = _entry_key(balancer, member.settings)
    kept = [e for e in entries if {k: e.get(k) for k in key} != key]
    if member.admin == ENABLED and member.weight == member.settings.weight:
        return kept
    return kept + [{**key, "admin": member.admin, "weight": member.weight}]


def manager_state(entries: list[dict], balancer: str, settings: BalancerMember) -> tuple[str, int]:
    """(admin state, weight) the record gives the member configured with ``settings``: enabled with its
    configured weight when it has no entry. Entries that do not make sense (a damaged file) are skipped."""
    key = _entry_key(balancer, settings)
    for e in entries:
        if ({k: e.get(k) for k in key} == key and e.get("admin") in ACTIONS.values()
                and isinstance(e.get("weight"), int) and e["weight"] > 0):
            return e["admin"], e["weight"]
    return ENABLED, settings.weight


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


def sticky_route(cookie_values: Iterable[bytes], name: str) -> str | None:
    """The member route a sticky cookie names: the part after the last "." of the value of cookie ``name``
    (mod_proxy_balancer's convention: "<session id>.<route>", or ".<route>" when accel sets it)."""
    wanted = name.encode("latin-1")
    for header in cookie_values:
        for pair in header.split(b";"):
            key, eq, value = pair.strip().partition(b"=")
            if eq and key == wanted and b"." in value:
                return value.rpartition(b".")[2].strip(b'"').decode("latin-1") or None
    return None


def sticky_cookie(name: str, route: str) -> bytes:
    """The Set-Cookie value that pins a client to ``route``."""
    return f"{name}=.{route}; Path=/; HttpOnly".encode("latin-1")
