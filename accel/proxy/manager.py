"""The balancer manager: a part of the status page (``accel.http.status``) that shows every balancer and member
and changes members at run time (mod_proxy_balancer's balancer-manager).

JSON: ``{"balancers": {"<name>": {"method": ..., "members": [{"url": ..., "route": ..., "state": ..., ...}]}}}``.
POST ``<path>/balancer/<name>/member/<route>`` with ``action=enable|disable|drain`` and/or ``weight=N``.
"""

from __future__ import annotations

import html

from accel.http.status import StatusError
from accel.proxy.balancer import ACTIONS, Balancer, Member
from accel.proxy.balancing import Balancers


class BalancerManager:
    title = "Balancers"
    prefix = "balancer"

    def __init__(self, balancers: Balancers):
        self.balancers = balancers

    def now(self) -> float:
        return self.balancers.clock.seconds()

    def describe(self) -> dict:
        now = self.now()
        return {"balancers": {name: self.describe_balancer(b, now) for name, b in self.balancers.balancers.items()}}

    def describe_balancer(self, balancer: Balancer, now: float) -> dict:
        settings = balancer.settings
        health = settings.health
        return {
            "method": settings.method,
            "sticky_cookie": settings.sticky_cookie,
            "sticky_set": settings.sticky_set,
            "retry": settings.retry,
            "health": None if health is None else {"uri": health.uri, "method": health.method, "interval": health.interval,
                                                   "fails": health.fails, "passes": health.passes},
            "members": [self.describe_member(m, now) for m in balancer.members],
        }

    @staticmethod
    def describe_member(member: Member, now: float) -> dict:
        return {
            "url": member.url,
            "route": member.route,
            "state": member.state(now),
            "weight": member.weight,
            "standby": member.standby,
            "requests": member.requests,
            "bytes": member.bytes,
            "in_flight": member.in_flight,
            "failures": member.failures,
            "health": member.last_health,
            "out_for": max(0.0, round(member.out_until - now, 1)),
        }

    def change(self, rest: list[str], form: dict[str, str]) -> dict:
        """``rest`` = [name, "member", route]; ``form`` has ``action`` and/or ``weight``."""
        if len(rest) != 3 or rest[1] != "member":
            raise StatusError(404, "Members are changed at <path>/balancer/<name>/member/<route>.")
        balancer = self.balancers.balancers.get(rest[0])
        if balancer is None:
            raise StatusError(404, f"There is no balancer {rest[0]!r}.")
        member = balancer.by_route.get(rest[2])
        if member is None:
            raise StatusError(404, f"Balancer {rest[0]!r} has no member with route {rest[2]!r}.")
        action, weight = form.get("action"), form.get("weight")
        if action is None and weight is None:
            raise StatusError(400, "Send action=enable|disable|drain or weight=N.")
        if action is not None and action not in ACTIONS:
            raise StatusError(400, "action must be enable, disable or drain.")
        if weight is not None and not (weight.isdigit() and int(weight) > 0):
            raise StatusError(400, "weight must be a whole number greater than 0.")
        if action is not None:
            balancer.set_admin(member, action)
        if weight is not None:
            balancer.set_weight(member, int(weight))
        return self.describe_member(member, self.now())

    def html(self, path: str) -> str:
        now = self.now()
        if not self.balancers.balancers:
            return "<p>No balancers are configured.</p>"
        return "\n".join(self.balancer_html(path, name, b, now) for name, b in self.balancers.balancers.items())

    def balancer_html(self, path: str, name: str, balancer: Balancer, now: float) -> str:
        settings = balancer.settings
        about = f"method {settings.method}, retry {settings.retry:g} s"
        if settings.sticky_cookie:
            about += f", sticky cookie {settings.sticky_cookie}" + (" (set by accel)" if settings.sticky_set else "")
        if settings.health is not None:
            about += f", health check {settings.health.method} {settings.health.uri} every {settings.health.interval:g} s"
        heads = "".join(f"<th>{h}</th>" for h in ("Route", "URL", "State", "Weight", "Requests", "Bytes", "In flight",
                                                  "Failures", "Last health check", "Change"))
        rows = "\n".join(self.member_html(path, name, m, now) for m in balancer.members)
        return (f"<h3 id=\"balancer-{html.escape(name)}\">{html.escape(name)}</h3><p>{html.escape(about)}</p>\n"
                f"<table><tr>{heads}</tr>\n{rows}</table>")

    @staticmethod
    def member_html(path: str, name: str, member: Member, now: float) -> str:
        action = html.escape(f"{path}/balancer/{name}/member/{member.route}")
        state = member.state(now)
        buttons = "".join(
            f"<form method=\"post\" action=\"{action}\"><button name=\"action\" value=\"{verb}\">{verb}</button></form>"
            for verb in ACTIONS if ACTIONS[verb] != member.admin
        )
        weight = (f"<form method=\"post\" action=\"{action}\"><input type=\"number\" name=\"weight\" min=\"1\" "
                  f"value=\"{member.weight}\"><button>set weight</button></form>")
        shown = state + (" (standby)" if member.standby and state != "standby" else "")
        cells = (member.weight, member.requests, member.bytes, member.in_flight, member.failures, member.last_health or "")
        tds = (f"<td>{html.escape(member.route)}</td><td>{html.escape(member.url)}</td>"
               f"<td class=\"state {state}\">{shown}</td>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells))
        return f"<tr data-route=\"{html.escape(member.route)}\" data-state=\"{state}\">{tds}<td>{buttons} {weight}</td></tr>"
