"""Member choice without I/O: the methods and weights, hot standby, sticky routes, health results, reloads,
and the configuration of balancers."""

from __future__ import annotations

from collections import Counter

import pytest

from accel.config import BalancerMember, BalancerSettings, ConfigError, HealthCheck, parse_config, parse_origin
from accel.proxy.balancer import Balancer, sticky_cookie, sticky_route


def settings(*weights, method="byrequests", standby=(), health=None, retry=60.0) -> BalancerSettings:
    members = tuple(
        BalancerMember(parse_origin(f"http://10.0.0.{i + 1}:8080"), str(i + 1), w, i in standby)
        for i, w in enumerate(weights)
    )
    return BalancerSettings("app", members, method, retry=retry, health=health)


def picks(balancer: Balancer, n: int, now: float = 0.0, targets=None) -> list[str]:
    chosen = []
    for i in range(n):
        member = balancer.choose(now, targets[i] if targets else f"/{i}")
        chosen.append(member.route if member else None)
    return chosen


def test_byrequests_follows_the_weights_interleaved():
    balancer = Balancer(settings(3, 1, 1))
    chosen = picks(balancer, 50)
    assert Counter(chosen) == {"1": 30, "2": 10, "3": 10}
    assert chosen[:5].count("1") == 3  # smooth: not 3 in a row, then the others
    assert chosen[:2] != ["1", "1"] or chosen[2] != "1"


def test_bytraffic_prefers_the_fewest_bytes_per_weight():
    balancer = Balancer(settings(1, 2, 1, method="bytraffic"))
    one, two, three = balancer.members
    one.bytes, two.bytes, three.bytes = 1000, 1500, 900
    assert balancer.choose(0.0).route == "2"  # 750 per unit of weight
    two.bytes = 2000
    assert balancer.choose(0.0).route == "3"


def test_bybusyness_prefers_the_fewest_in_flight_per_weight():
    balancer = Balancer(settings(1, 1, 1, method="bybusyness"))
    first = balancer.choose(0.0)
    balancer.started(first)
    second = balancer.choose(0.0)
    balancer.started(second)
    third = balancer.choose(0.0)
    assert len({first.route, second.route, third.route}) == 3
    balancer.started(third)
    balancer.ended(second, 10)
    assert balancer.choose(0.0) is second


def test_uri_hash_is_stable_and_moves_only_the_share_of_a_member_that_leaves():
    balancer = Balancer(settings(1, 1, 1, method="uri-hash"))
    targets = [f"/page/{i}" for i in range(3000)]
    before = picks(balancer, len(targets), targets=targets)
    assert picks(balancer, len(targets), targets=targets) == before  # the same URL, the same member
    shares = Counter(before)
    assert all(800 < shares[r] < 1200 for r in "123"), shares
    balancer.failed(balancer.by_route["2"], now=0.0)
    after = picks(balancer, len(targets), targets=targets)
    moved = [t for t, b, a in zip(targets, before, after) if a != b]
    assert {b for t, b, a in zip(targets, before, after) if a != b} == {"2"}  # only member 2's URLs moved
    assert len(moved) == shares["2"]


def test_uri_hash_adding_a_member_moves_about_its_share():
    targets = [f"/img/{i}.png" for i in range(4000)]
    three = picks(Balancer(settings(1, 1, 1, method="uri-hash")), len(targets), targets=targets)
    four = picks(Balancer(settings(1, 1, 1, 1, method="uri-hash")), len(targets), targets=targets)
    moved = sum(a != b for a, b in zip(three, four))
    assert all(b == "4" for a, b in zip(three, four) if a != b)  # URLs move only to the new member
    assert 700 < moved < 1300  # about a quarter


def test_uri_hash_weights():
    targets = [f"/w/{i}" for i in range(4000)]
    shares = Counter(picks(Balancer(settings(3, 1, method="uri-hash")), len(targets), targets=targets))
    assert 2700 < shares["1"] < 3300


def test_standby_takes_over_only_while_every_other_member_is_out_and_hands_back():
    balancer = Balancer(settings(1, 1, 1, standby={2}, retry=60))
    assert set(picks(balancer, 10)) == {"1", "2"}
    balancer.failed(balancer.by_route["1"], now=100.0)
    balancer.failed(balancer.by_route["2"], now=100.0)
    assert set(picks(balancer, 5, now=120.0)) == {"3"}
    assert balancer.by_route["3"].state(120.0) == "standby"
    assert set(picks(balancer, 4, now=160.0)) == {"1", "2"}  # retry over: the standby loses the traffic


def test_none_usable():
    balancer = Balancer(settings(1, 1))
    for member in balancer.members:
        balancer.set_admin(member, "disable")
    assert balancer.choose(0.0) is None
    assert balancer.members[0].state(0.0) == "disabled"


def test_tried_members_are_skipped():
    balancer = Balancer(settings(1, 1, 1))
    first = balancer.choose(0.0)
    second = balancer.choose(0.0, tried=[first])
    third = balancer.choose(0.0, tried=[first, second])
    assert len({first, second, third}) == 3
    assert balancer.choose(0.0, tried=[first, second, third]) is None


def test_sticky_member_wins_until_it_is_out_and_draining_keeps_its_sessions():
    balancer = Balancer(settings(1, 1, 1))
    assert {balancer.choose(0.0, sticky="3").route for _ in range(5)} == {"3"}
    balancer.set_admin(balancer.by_route["3"], "drain")
    assert balancer.choose(0.0, sticky="3").route == "3"  # its session goes on
    assert "3" not in picks(balancer, 6)  # no new ones
    assert balancer.by_route["3"].state(0.0) == "draining"
    balancer.failed(balancer.by_route["3"], now=0.0)
    assert balancer.choose(1.0, sticky="3").route != "3"
    assert balancer.choose(1.0, sticky="nope").route in ("1", "2")


def test_sticky_cookie_parsing():
    assert sticky_route([b"a=1; ROUTEID=abc.2; b=3"], "ROUTEID") == "2"
    assert sticky_route([b"x=y", b"ROUTEID=.1"], "ROUTEID") == "1"
    assert sticky_route([b"ROUTEID=nodot"], "ROUTEID") is None
    assert sticky_route([b"OTHER=.1"], "ROUTEID") is None
    assert sticky_route([b"ROUTEID=a.b.c"], "ROUTEID") == "c"
    assert sticky_cookie("ROUTEID", "2") == b"ROUTEID=.2; Path=/; HttpOnly"


def test_health_results_take_out_after_fails_and_put_back_after_passes():
    balancer = Balancer(settings(1, 1, health=HealthCheck(fails=2, passes=2)))
    member = balancer.members[0]
    assert balancer.checked(member, False, "status 500", 0.0) is None
    assert balancer.checked(member, False, "status 500", 5.0) == "out"
    assert balancer.checked(member, False, "status 500", 10.0) is None  # no change, nothing to log
    assert member.state(10.0) == "out" and not member.usable(10.0)
    assert balancer.checked(member, True, "200", 15.0) is None
    assert balancer.checked(member, True, "200", 20.0) == "back"
    assert member.usable(20.0)
    balancer.failed(member, now=30.0)  # a failed request: out for retry seconds...
    assert balancer.checked(member, True, "200", 31.0) is None  # one pass: the retry period still runs
    assert not member.usable(31.0)
    assert balancer.checked(member, True, "200", 32.0) == "back"  # a fresh run of passes ends it early
    assert member.usable(32.0)


def test_weight_change_rebalances():
    balancer = Balancer(settings(1, 1))
    balancer.set_weight(balancer.members[1], 3)
    assert Counter(picks(balancer, 40)) == {"1": 10, "2": 30}
    with pytest.raises(ValueError):
        balancer.set_weight(balancer.members[0], 0)


def test_a_reload_keeps_the_state_of_members_configured_the_same():
    old = Balancer(settings(1, 1))
    old.members[0].requests = 7
    old.set_admin(old.members[1], "disable")
    new = Balancer(settings(1, 2), previous=old)
    assert new.members[0].requests == 7
    assert new.members[1].admin == "enabled"  # weight changed: a new member


BASE = """
[[route]]
prefix = "/"
origin = "balancer://app/"
[balancer.app]
{balancer}
[[balancer.app.member]]
url = "http://127.0.0.1:8001"
{member}
[[balancer.app.member]]
url = "http://127.0.0.1:8002"
route = "b"
"""


def test_the_issue_configuration_parses():
    config = parse_config(BASE.format(
        balancer='method = "uri-hash"\nsticky_cookie = "ROUTEID"\nsticky_set = true\nretry = 30\n'
                 '[balancer.app.health]\nuri = "/health"\nmethod = "GET"\ninterval = 5\nexpect = [200, 204]\nfails = 2\npasses = 1',
        member='route = "a"\nweight = 2\nstandby = false'), "accel.toml")
    app = config.balancers["app"]
    assert config.routes[0].balancer == "app"
    assert (app.method, app.sticky_cookie, app.sticky_set, app.retry) == ("uri-hash", "ROUTEID", True, 30.0)
    assert [(m.route, m.weight) for m in app.members] == [("a", 2), ("b", 1)]
    assert app.health.expect == {200, 204}
    assert config.status.path == "/accel-status"


@pytest.mark.parametrize(
    "balancer, member, message",
    [
        ('method = "random"', "", "balancer.app.method: expected byrequests | bytraffic | bybusyness | uri-hash"),
        ("sticky_set = true", "", "balancer.app.sticky_set: expected sticky_cookie as well"),
        ("retry = -1", "", "balancer.app.retry: expected a number of seconds, 0 or more"),
        ('[balancer.app.health]\nexpect = "2xy"', "", "balancer.app.health.expect: expected a status class"),
        ('[balancer.app.health]\nmethod = "POST"', "", "balancer.app.health.method: expected GET, HEAD or OPTIONS"),
        ("", 'route = "b"', "balancer.app.member: expected a different route for each member"),
        ("", "weight = 0", "balancer.app.member[0].weight: expected a whole number greater than 0"),
        ("", 'url = "ftp://x"', "balancer.app.member[0].url: expected an http:// or https:// URL"),
        ("", "colour = 1", "balancer.app.member[0].colour: expected a known key"),
    ],
)
def test_balancer_mistakes_name_the_key(balancer, member, message):
    text = BASE.format(balancer=balancer, member=member)
    if member.startswith("url"):
        text = text.replace('url = "http://127.0.0.1:8001"\n', "")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "accel.toml")
    assert message in str(caught.value)


def test_a_route_to_an_unknown_balancer_and_a_bad_status_table():
    with pytest.raises(ConfigError, match=r"route\[0\].origin: expected a \[balancer.web\] table"):
        parse_config('[[route]]\nprefix = "/"\norigin = "balancer://web/"\n', "accel.toml")
    with pytest.raises(ConfigError, match="status.path"):
        parse_config('[status]\npath = "/s/"\n', "accel.toml")
    with pytest.raises(ConfigError, match="status.allow"):
        parse_config('[status]\nallow = ["nonsense"]\n', "accel.toml")
