"""The balancer manager: a part of the status page (``accel.http.status``) that shows every balancer and member
and changes members at run time (mod_proxy_balancer's balancer-manager).

JSON: ``{"balancers": {"<name>": {"method": ..., "members": [{"url": ..., "route": ..., "state": ..., ...}]}}}``.
POST ``<path>/balancer/<name>/member/<route>`` with ``action=enable|disable|drain`` and/or ``weight=N``.

With worker processes each worker balances its own requests: a change is recorded where every worker takes it
(``Balancers.record``, ``accel.proxy.manager_record``) before it is answered, and the members' figures are
summed over the workers' published figures (``merged_member``).
"""

from __future__ import annotations

import html
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from accel.http.status import StatusError
from accel.proxy.balancer import ACTIONS, DISABLED, DRAINING, ENABLED, Balancer, Member
from accel.proxy.balancing import Balancers

SUMMED = ("requests", "bytes", "in_flight", "failures")  # a member's counters, summed over the processes
PER_WORKER = ("state", *SUMMED, "health", "out_for")  # what the breakdown by worker shows of each


def merged_member(local: dict, published: list[tuple[int | None, dict]], per_worker: bool = False) -> dict:
    """A member as the manager shows it, from this process's view of it (``local``: ``Member.figures``) and
    every process's published figures of it (``published``: (pid, figures) pairs, this process's among them).

    - settings, weight and the last health check: ``local``'s (the manager's changes are in force everywhere);
    - ``requests``, ``bytes``, ``in_flight``, ``failures``: summed;
    - ``state``: disabled or draining as the manager set it; otherwise up (or standby) while any process
      takes new requests for it, out when every one has it out (each runs its own health checks and retry
      periods); ``out_for``: the longest retry period left in any process;
    - ``per_worker``: ``workers`` lists each process's pid, state, counters, health and out_for.
    """
    published = published or [(None, local)]
    merged = dict(local)
    for key in SUMMED:
        merged[key] = sum(figures[key] for _, figures in published)
    if local["state"] not in (DISABLED, DRAINING):
        taking = [figures["state"] for _, figures in published if figures["state"] in ("up", "standby")]
        merged["state"] = taking[0] if taking else "out"
    merged["out_for"] = max(figures["out_for"] for _, figures in published)
    if per_worker:
        merged["workers"] = [{"pid": pid, **{key: figures[key] for key in PER_WORKER}} for pid, figures in published]
    return merged


def _published(process: dict, balancer: str, member: Member) -> dict | None:
    """A process's published figures of ``member`` (found by route and URL), if it has the member."""
    for figures in process.get("balancers", {}).get(balancer, ()):
        if figures["route"] == member.route and figures["url"] == member.url:
            return figures
    return None


class BalancerManager:
    title = "Balancers"
    prefix = "balancer"

    def __init__(self, balancers: Balancers, processes: Callable[[], Deferred], per_worker: bool = False):
        """``processes()`` fires with every server process's published figures (this process's alone without
        worker processes), whose ``"balancers"`` (``Balancers.figures``) the members' figures are summed from;
        ``per_worker``: worker processes, each member's JSON lists them."""
        self.balancers = balancers
        self.processes = processes
        self.per_worker = per_worker

    def now(self) -> float:
        return self.balancers.clock.seconds()

    def describe(self, processes: list[dict]) -> dict:
        return {"balancers": {name: self.describe_balancer(name, b, processes)
                              for name, b in self.balancers.balancers.items()}}

    def describe_balancer(self, name: str, balancer: Balancer, processes: list[dict]) -> dict:
        settings = balancer.settings
        health = settings.health
        return {
            "method": settings.method,
            "sticky_cookie": settings.sticky_cookie,
            "sticky_set": settings.sticky_set,
            "retry": settings.retry,
            "health": None if health is None else {"uri": health.uri, "method": health.method, "interval": health.interval,
                                                   "fails": health.fails, "passes": health.passes},
            "members": [self.describe_member(name, m, processes) for m in balancer.members],
        }

    def describe_member(self, name: str, member: Member, processes: list[dict]) -> dict:
        published = [(p.get("pid"), found) for p in processes if (found := _published(p, name, member)) is not None]
        return merged_member(member.figures(self.now()), published, self.per_worker)

    def change(self, rest: list[str], form: dict[str, str]) -> Deferred:
        """``rest`` = [name, "member", route]; ``form`` has ``action`` and/or ``weight``. Fires with the member's
        JSON once every worker has the change."""
        if len(rest) != 3 or rest[1] != "member":
            raise StatusError(404, "Members are changed at <path>/balancer/<name>/member/<route>.")
        name = rest[0]
        balancer = self.balancers.balancers.get(name)
        if balancer is None:
            raise StatusError(404, f"There is no balancer {name!r}.")
        member = balancer.by_route.get(rest[2])
        if member is None:
            raise StatusError(404, f"Balancer {name!r} has no member with route {rest[2]!r}.")
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
        record = self.balancers.record
        shared = record.save(name, member) if record is not None else succeed(None)
        shared.addCallback(lambda _: self.processes())
        return shared.addCallback(lambda processes: self.describe_member(name, member, processes))

    def html(self, path: str, document: dict) -> str:
        """The section of the page, from the document's ``"balancers"`` (``describe``)."""
        balancers = document["balancers"]
        if not balancers:
            return "<p>No balancers are configured.</p>"
        return "\n".join(self.balancer_html(path, name, b) for name, b in balancers.items())

    def balancer_html(self, path: str, name: str, balancer: dict) -> str:
        about = f"method {balancer['method']}, retry {balancer['retry']:g} s"
        if balancer["sticky_cookie"]:
            about += f", sticky cookie {balancer['sticky_cookie']}" + (" (set by accel)" if balancer["sticky_set"] else "")
        if (health := balancer["health"]) is not None:
            about += f", health check {health['method']} {health['uri']} every {health['interval']:g} s"
        heads = "".join(f"<th>{h}</th>" for h in ("Route", "URL", "State", "Weight", "Requests", "Bytes", "In flight",
                                                  "Failures", "Last health check", "Change"))
        rows = "\n".join(self.member_html(path, name, m) for m in balancer["members"])
        return (f"<h3 id=\"balancer-{html.escape(name)}\">{html.escape(name)}</h3><p>{html.escape(about)}</p>\n"
                f"<table><tr>{heads}</tr>\n{rows}</table>")

    @staticmethod
    def member_html(path: str, name: str, member: dict) -> str:
        """A member's row from its JSON (``describe_member``)."""
        action = html.escape(f"{path}/balancer/{name}/member/{member['route']}")
        state = member["state"]
        admin = state if state in (DISABLED, DRAINING) else ENABLED
        buttons = "".join(
            f"<form method=\"post\" action=\"{action}\"><button name=\"action\" value=\"{verb}\">{verb}</button></form>"
            for verb in ACTIONS if ACTIONS[verb] != admin
        )
        weight = (f"<form method=\"post\" action=\"{action}\"><input type=\"number\" name=\"weight\" min=\"1\" "
                  f"value=\"{member['weight']}\"><button>set weight</button></form>")
        shown = state + (" (standby)" if member["standby"] and state != "standby" else "")
        elsewhere = [f"{w['state']} in worker {w['pid']}" for w in member.get("workers", ()) if w["state"] != state]
        if elsewhere:
            shown += f" ({', '.join(elsewhere)})"
        cells = [member[key] for key in ("weight", "requests", "bytes", "in_flight", "failures")] + [member["health"] or ""]
        tds = (f"<td>{html.escape(member['route'])}</td><td>{html.escape(member['url'])}</td>"
               f"<td class=\"state {state}\">{html.escape(shown)}</td>"
               + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells))
        route = html.escape(member["route"])
        return f"<tr data-route=\"{route}\" data-state=\"{state}\">{tds}<td>{buttons} {weight}</td></tr>"
