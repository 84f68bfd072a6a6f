"""What worker processes share of their balancers, without processes: the record of the manager's changes
(pure entries, then the file), and the members' figures merged over the workers."""

from __future__ import annotations

import json
import os
from dataclasses import replace

from twisted.internet.defer import succeed

from accel.proxy.balancer import Balancer, manager_state, recorded_changes
from accel.proxy.manager import BalancerManager, merged_member
from accel.proxy.manager_record import RECORD, ManagerRecord, forget
from tests.test_balancer_units import settings


def test_a_change_is_an_entry_until_the_member_is_back_as_configured():
    balancer = Balancer(settings(1, 2))
    one, two = balancer.members
    balancer.set_admin(one, "disable")
    entries = recorded_changes([], "app", one)
    balancer.set_weight(two, 5)
    entries = recorded_changes(entries, "app", two)
    assert manager_state(entries, "app", one.settings) == ("disabled", 1)
    assert manager_state(entries, "app", two.settings) == ("enabled", 5)
    balancer.set_admin(one, "drain")
    entries = recorded_changes(entries, "app", one)  # replaced, not added
    assert [(e["route"], e["admin"], e["weight"]) for e in entries] == [("2", "enabled", 5), ("1", "draining", 1)]
    balancer.set_admin(one, "enable")
    balancer.set_weight(two, 2)  # its configured weight
    entries = recorded_changes(recorded_changes(entries, "app", one), "app", two)
    assert entries == []
    assert json.loads(json.dumps(entries)) == entries  # what the file holds


def test_an_entry_applies_only_to_the_member_configured_the_same_way():
    balancer = Balancer(settings(1, 1))
    one = balancer.members[0]
    balancer.set_admin(one, "disable")
    entries = recorded_changes([], "app", one)
    assert manager_state(entries, "web", one.settings) == ("enabled", 1)  # another balancer
    assert manager_state(entries, "app", balancer.members[1].settings) == ("enabled", 1)  # another member
    for changed in (replace(one.settings, weight=4), replace(one.settings, standby=True),
                    replace(one.settings, route="9")):  # a reload changed it: it starts afresh
        assert manager_state(entries, "app", changed) == ("enabled", changed.weight)


def test_entries_that_make_no_sense_are_skipped():
    member = Balancer(settings(1)).members[0]
    key = {"balancer": "app", "route": "1", "url": member.url, "configured_weight": 1, "standby": False}
    for bad in ({**key, "admin": "exploded", "weight": 1}, {**key, "admin": "disabled", "weight": 0},
                {**key, "admin": "disabled", "weight": "3"}, {**key, "admin": "disabled"}):
        assert manager_state([bad], "app", member.settings) == ("enabled", 1)


def test_restore_takes_the_record_and_puts_members_without_an_entry_back_as_configured():
    balancer = Balancer(settings(1, 1, method="uri-hash"))
    one, two = balancer.members
    elsewhere = Balancer(settings(1, 1, method="uri-hash"))  # another process's, where the manager was used
    elsewhere.set_admin(elsewhere.members[0], "disable")
    elsewhere.set_weight(elsewhere.members[1], 3)
    entries = recorded_changes(recorded_changes([], "app", elsewhere.members[0]), "app", elsewhere.members[1])
    balancer.restore(entries)
    assert (one.admin, one.weight, two.admin, two.weight) == ("disabled", 1, "enabled", 3)
    assert balancer._ring_members.count(two) == 3 * balancer._ring_members.count(one)  # the ring follows the weight
    assert {balancer.choose(0.0, f"/{i}").route for i in range(50)} == {"2"}
    balancer.restore([])
    assert (one.admin, one.weight, two.admin, two.weight) == ("enabled", 1, "enabled", 1)


# -- the record's file ---------------------------------------------------------------------------------------

def test_the_record_is_shared_through_the_directory_and_each_save_announced(tmp_path):
    announced = []
    mine = ManagerRecord(str(tmp_path), lambda: succeed(announced.append("mine")))
    theirs = ManagerRecord(str(tmp_path), lambda: succeed(None))  # another process's
    assert mine.entries() == []
    balancer = Balancer(settings(1, 1))
    balancer.set_admin(balancer.members[1], "disable")
    mine.save("app", balancer.members[1])
    assert announced == ["mine"]
    assert manager_state(theirs.entries(), "app", balancer.members[1].settings) == ("disabled", 1)
    balancer.set_weight(balancer.members[0], 2)
    theirs.save("app", balancer.members[0])  # read, changed and written again: the first change stays
    assert len(mine.entries()) == 2
    assert sorted(os.listdir(tmp_path)) == [RECORD, f"{RECORD}.lock"]  # no temporary file left
    forget(str(tmp_path))
    assert mine.entries() == []
    forget(str(tmp_path))  # nothing to forget is no error


def test_a_damaged_record_is_no_change(tmp_path):
    record = ManagerRecord(str(tmp_path), lambda: succeed(None))
    for text in ("{not json", '{"a": 1}', '[1, "x"]'):
        (tmp_path / RECORD).write_text(text)
        assert record.entries() == []


# -- figures over the workers ----------------------------------------------------------------------------------

def figures(state="up", requests=0, out_for=0.0, health=None, **others) -> dict:
    return {"url": "http://10.0.0.1:8080", "route": "1", "state": state, "weight": 1, "standby": False,
            "requests": requests, "bytes": 10 * requests, "in_flight": others.get("in_flight", 0),
            "failures": others.get("failures", 0), "health": health, "out_for": out_for}


def test_counters_are_summed_and_the_member_is_up_while_any_worker_takes_it():
    mine = figures("up", 3, health="200")
    theirs = figures("out", 4, out_for=42.5, failures=1, in_flight=2, health="status 500")
    merged = merged_member(mine, [(10, mine), (11, theirs)])
    assert (merged["requests"], merged["bytes"], merged["failures"], merged["in_flight"]) == (7, 70, 1, 2)
    assert (merged["state"], merged["out_for"], merged["health"]) == ("up", 42.5, "200")
    assert "workers" not in merged
    out = merged_member(theirs, [(10, figures("out")), (11, theirs)])
    assert out["state"] == "out"
    standby = {**figures("standby"), "standby": True}
    assert merged_member(standby, [(10, standby), (11, {**theirs, "standby": True})])["state"] == "standby"


def test_the_managers_state_is_shown_as_it_is_everywhere():
    for state in ("disabled", "draining"):
        mine = figures(state, 1)
        assert merged_member(mine, [(10, mine), (11, figures(state, 2))])["state"] == state


def test_the_breakdown_by_worker():
    mine, theirs = figures("up", 3), figures("out", 4, out_for=9.0, health="status 503")
    merged = merged_member(mine, [(10, mine), (11, theirs)], per_worker=True)
    assert merged["workers"] == [
        {"pid": 10, "state": "up", "requests": 3, "bytes": 30, "in_flight": 0, "failures": 0, "health": None,
         "out_for": 0.0},
        {"pid": 11, "state": "out", "requests": 4, "bytes": 40, "in_flight": 0, "failures": 0,
         "health": "status 503", "out_for": 9.0},
    ]


def test_without_published_figures_the_member_is_this_processs_view():
    mine = figures("out", 2, out_for=3.0)
    assert merged_member(mine, []) == mine


def test_the_page_names_the_workers_that_see_a_member_otherwise():
    mine, theirs = figures("up", 3), figures("out", 4, out_for=9.0)
    row = BalancerManager.member_html("/s", "app", merged_member(mine, [(10, mine), (11, theirs)], per_worker=True))
    assert '<td class="state up">up (out in worker 11)</td>' in row
    assert "<td>7</td>" in row  # the requests, summed
    disabled = figures("disabled")
    row = BalancerManager.member_html("/s", "app", merged_member(disabled, [(10, disabled)], per_worker=True))
    assert 'value="disable"' not in row and 'value="enable"' in row and 'value="drain"' in row
