"""The pure decisions behind origin protection: client address, allow/deny, the token bucket, header rules,
the shared bucket table, and the configuration keys."""

from __future__ import annotations

import ipaddress
import os

from dataclasses import replace

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.http_headers import Headers

from accel.config import AddressList, ConfigError, HeaderRule, parse_config
from accel.http.access import Client, access_allowed, client_of
from accel.http.header_rules import HeaderRules
from accel.proxy.buckets import PROBES, SharedBuckets
from accel.proxy.ratelimit import take

NET = ipaddress.ip_network
TRUSTED = (NET("10.0.0.0/8"),)


def peer(host: str):
    return IPv6Address("TCP", host, 1234) if ":" in host else IPv4Address("TCP", host, 1234)


# -- the client address -------------------------------------------------------------------------------------

@pytest.mark.parametrize("peer_host, xff, client", [
    ("192.0.2.1", [b"198.51.100.7"], "192.0.2.1"),  # untrusted peer: its X-Forwarded-For means nothing
    ("10.0.0.1", [b"198.51.100.7"], "198.51.100.7"),
    ("10.0.0.1", [b"203.0.113.9, 198.51.100.7"], "198.51.100.7"),  # the left entry may be forged
    ("10.0.0.1", [b"198.51.100.7, 10.0.0.2"], "198.51.100.7"),  # skip trusted proxies from the right
    ("10.0.0.1", [b"198.51.100.7", b"10.0.0.2"], "198.51.100.7"),  # several fields are one list
    ("10.0.0.1", [b"10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # all trusted: the leftmost
    ("10.0.0.1", [], "10.0.0.1"),
    ("10.0.0.1", [b"garbage, 10.0.0.2"], "10.0.0.2"),  # not an address: the chain ends there
    ("10.0.0.1", [b"[2001:db8::1]:443"], "2001:db8::1"),
    ("10.0.0.1", [b"198.51.100.7:5000"], "198.51.100.7"),
    ("::ffff:10.0.0.1", [b"198.51.100.7"], "198.51.100.7"),  # an IPv4 peer of a dual-stack socket
])
def test_client_address(peer_host, xff, client):
    assert client_of(peer(peer_host), xff, TRUSTED, False).name == client


def test_unix_peer_is_trusted_only_when_listed():
    unix = UNIXAddress(None)
    assert client_of(unix, [b"198.51.100.7"], TRUSTED, False).ip is None
    assert client_of(unix, [b"198.51.100.7"], TRUSTED, True).name == "198.51.100.7"


def test_deny_wins_and_local_means_loopback_and_unix_peers():
    lan, local = AddressList((NET("192.168.1.0/24"),)), AddressList(local=True)
    one = Client(ipaddress.ip_address("192.168.1.5"))
    assert access_allowed(one, lan, AddressList())
    assert not access_allowed(one, lan, AddressList((NET("192.168.1.5/32"),)))
    assert not access_allowed(Client(ipaddress.ip_address("192.168.2.5")), lan, AddressList())
    assert access_allowed(Client(ipaddress.ip_address("192.168.2.5")), None, AddressList())
    assert access_allowed(Client(ipaddress.ip_address("127.0.0.2")), local, AddressList())
    assert access_allowed(Client(ipaddress.ip_address("::1")), local, AddressList())
    assert access_allowed(Client(None), local, AddressList())
    assert not access_allowed(Client(None), lan, AddressList())
    assert not access_allowed(Client(ipaddress.ip_address("127.0.0.1")), None, local)


# -- the token bucket ----------------------------------------------------------------------------------------

def test_a_new_bucket_is_full_and_refills_at_the_rate():
    got = take(None, 0.0, 100.0, rate=2.0, capacity=3.0)
    assert (got.allowed, got.tokens) == (True, 2.0)
    tokens = got.tokens
    for _ in range(2):
        got = take(tokens, 100.0, 100.0, 2.0, 3.0)
        tokens = got.tokens
    refused = take(tokens, 100.0, 100.0, 2.0, 3.0)
    assert (refused.allowed, refused.retry_after) == (False, 1)
    assert take(tokens, 100.0, 100.5, 2.0, 3.0).allowed  # half a second: one token back
    assert take(tokens, 100.0, 99.0, 2.0, 3.0).allowed is False  # a clock going back adds nothing
    assert take(tokens, 100.0, 1e6, 2.0, 3.0).tokens == 2.0  # never more than capacity


def test_retry_after_is_the_time_to_the_next_token():
    assert take(0.0, 0.0, 0.0, rate=1 / 60, capacity=1.0).retry_after == 60
    assert take(0.5, 0.0, 0.0, rate=1 / 60, capacity=1.0).retry_after == 30


def test_the_bucket_table_is_shared_through_its_file_and_stays_bounded(tmp_path):
    path = str(tmp_path / "rate-limits")
    first, second = SharedBuckets(path, slots=64), SharedBuckets(path, slots=4096)
    assert second.slots == 64  # the size the first process made it
    allowed = [t.take(b"client-a", 10.0, 0.001, 5.0).allowed for t in (first, second) * 5]
    assert allowed.count(True) == 5
    for i in range(1000):  # far more keys than slots: the oldest are taken over, the file keeps its size
        first.take(b"key-%d" % i, 20.0 + i, 0.001, 5.0)
    assert os.path.getsize(path) == 16 + 64 * 32
    assert first.take(b"client-a", 2000.0, 0.001, 5.0).tokens == 4.0  # forgotten: a full bucket again
    assert PROBES <= 64
    first.close(), second.close()


# -- header rules --------------------------------------------------------------------------------------------

def test_request_rules_apply_in_order():
    rules = HeaderRules([
        HeaderRule("request", "set", "X-Env", "prod"),
        HeaderRule("request", "append", "X-Tag", "b"),
        HeaderRule("request", "unset", "Cookie"),
    ])
    fields = [(b"X-Env", b"dev"), (b"x-env", b"test"), (b"X-Tag", b"a"), (b"Cookie", b"s=1")]
    assert rules.to_origin(fields) == [(b"X-Tag", b"a"), (b"X-Env", b"prod"), (b"X-Tag", b"b")]


def test_response_rules_skip_errors_unless_always():
    rules = HeaderRules([
        HeaderRule("response", "set", "X-Frame-Options", "DENY", always=True),
        HeaderRule("response", "append", "X-Note", "ok"),
        HeaderRule("response", "unset", "X-Powered-By"),
    ])
    ok, error = Headers({b"x-powered-by": [b"PHP/8"], b"x-frame-options": [b"ALLOW"]}), Headers()
    rules.to_client(ok, 200)
    rules.to_client(error, 503)
    assert (ok.getRawHeaders(b"x-frame-options"), ok.getRawHeaders(b"x-note"), ok.hasHeader(b"x-powered-by")) == (
        [b"DENY"], [b"ok"], False)
    assert (error.getRawHeaders(b"x-frame-options"), error.hasHeader(b"x-note")) == ([b"DENY"], False)
    assert rules.touches(200, frozenset({b"X-Powered-By"})) and not rules.touches(503, frozenset({b"X-Note"}))


# -- configuration -------------------------------------------------------------------------------------------

ROUTE = '[[route]]\nprefix = "/"\norigin = "http://127.0.0.1:9/"\n'


def test_routes_inherit_the_server_defaults():
    config = parse_config(
        '[server]\nallow = ["10.0.0.0/8", "local"]\nmethods = ["GET", "POST"]\n'
        '[server.rate_limit]\nrequests = 100\nburst = 50\n'
        '[[server.header]]\nside = "response"\naction = "set"\nname = "X-Frame-Options"\nvalue = "DENY"\nalways = true\n'
        '[limits]\nmax_body_size = 1000\n'
        + ROUTE + 'deny = ["10.1.0.0/16"]\n'
        '[[route.header]]\nside = "request"\naction = "unset"\nname = "Cookie"\n'
        '[[route]]\nprefix = "/upload/"\norigin = "http://127.0.0.1:9/"\nmax_body_size = 5000000\nmethods = ["PUT"]\n'
        '[route.rate_limit]\nrequests = 5\nper = 60\nkey = "X-Api-Key"\nhits_count = false\n',
        "t.toml",
    )
    root, upload = config.routes
    p = root.protection
    assert p.allow == AddressList((NET("10.0.0.0/8"),), True) and p.deny == AddressList((NET("10.1.0.0/16"),))
    assert (p.methods, p.max_body_size) == (("GET", "POST", "HEAD"), 1000)  # HEAD comes with GET
    assert (p.rate_limit.requests, p.rate_limit.burst, p.rate_limit.scope) == (100, 50, "server")
    assert [(h.side, h.name) for h in p.headers] == [("response", "X-Frame-Options"), ("request", "Cookie")]
    q = upload.protection
    assert (q.methods, q.max_body_size, q.allow) == (("PUT",), 5000000, p.allow)
    assert (q.rate_limit.key, q.rate_limit.per, q.rate_limit.hits_count, q.rate_limit.scope) == (
        "x-api-key", 60.0, False, "route[1]")


@pytest.mark.parametrize("text, message", [
    ('[[server.header]]\nside = "response"\naction = "set"\nname = "Transfer-Encoding"\nvalue = "x"\n',
     "server.header[0].name: expected an end-to-end field"),
    ('[[server.header]]\nside = "response"\naction = "set"\nname = "Connection"\nvalue = "x"\n',
     "server.header[0].name: expected an end-to-end field"),
    ('[[server.header]]\nside = "response"\naction = "set"\nname = "Content-Length"\nvalue = "1"\n',
     "server.header[0].name: expected an end-to-end field"),
    ('[[server.header]]\nside = "request"\naction = "set"\nname = "X-A"\nvalue = "1"\nalways = true\n',
     "server.header[0].always: expected always only on response rules"),
    ('[[server.header]]\nside = "response"\naction = "set"\nname = "X-A"\nvalue = "a\\r\\nb"\n',
     "server.header[0].value: expected a field value without control characters"),
    ('[[server.header]]\nside = "both"\naction = "set"\nname = "X-A"\nvalue = "1"\n',
     "server.header[0].side: expected \"request\" or \"response\""),
    ('[server]\nmax_body_size = 10\n', "server.max_body_size: expected a known key"),
    ('[server]\ndeny = ["nowhere"]\n', 'server.deny: expected IP addresses or networks such as 10.0.0.0/8, or "local"'),
    ('[server]\nallow = ["unix"]\n', 'server.allow: expected IP addresses or networks such as 10.0.0.0/8, or "local"'),
    ('[purge]\nallow = ["local"]\n', 'purge.allow: expected IP addresses or networks such as 10.0.0.0/8, or "unix"'),
    ('[server]\nmethods = ["get"]\n', "server.methods: expected method names in upper case"),
    ('[server.rate_limit]\nper = 1\n', "server.rate_limit.requests: expected a whole number greater than 0"),
    ('[server.rate_limit]\nrequests = 1\nkey = "a b"\n', "server.rate_limit.key: expected \"client\" or a request"),
    ('[server.rate_limit]\nrequests = 1\nrate = 2\n', "server.rate_limit.rate: expected a known key"),
    ('[limits]\nmax_body_size = -1\n', "limits.max_body_size: expected a number of bytes"),
])
def test_mistakes_name_the_key(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.toml")
    assert message in str(caught.value)


# -- admission: the order of the checks, and who pays a token ---------------------------------------------

def admission_for(route_lines: str, server_lines: str = ""):
    from accel.proxy.admission import Admission

    config = parse_config(f"[server]\n{server_lines}\n{ROUTE}{route_lines}\n", "t.toml")
    return Admission(config, SharedBuckets(None, slots=64), clock=lambda: 0.0), config.routes[0]


def fields(**values):
    table = {name.replace("_", "-").encode(): [v.encode()] for name, v in values.items()}
    return lambda name: table.get(name, [])


def test_a_request_refused_for_who_it_is_or_what_it_does_takes_no_token():
    admission, route = admission_for('deny = ["192.0.2.0/24"]\nmethods = ["GET"]\nmax_body_size = 10\n'
                                     '[route.rate_limit]\nrequests = 1\nper = 60\n')
    outsider, insider = peer("192.0.2.1"), peer("198.51.100.1")
    assert admission.admit(route, outsider, b"GET", fields(), 0.0).status == 403
    assert admission.admit(route, insider, b"POST", fields(), 0.0).status == 405
    assert admission.admit(route, insider, b"GET", fields(content_length="11"), 0.0).status == 413
    assert admission.admit(route, insider, b"GET", fields(), 0.0) is None  # the one token is still there
    refusal = admission.admit(route, insider, b"GET", fields(), 1.0)
    assert (refusal.status, refusal.headers) == (429, {b"retry-after": b"59"})
    assert admission.admit(route, insider, b"GET", fields(), 60.0) is None  # refilled
    assert dict(admission.refusals) == {("/", 403): 1, ("/", 405): 1, ("/", 413): 1, ("/", 429): 1}


def test_with_hits_count_false_only_requests_to_the_origin_are_charged():
    admission, route = admission_for("[route.rate_limit]\nrequests = 1\nper = 60\nhits_count = false\n")
    client = peer("198.51.100.1")
    assert [admission.admit(route, client, b"GET", fields(), 0.0) for _ in range(3)] == [None] * 3
    assert admission.charge(route, client, fields(), 0.0) is None
    assert admission.charge(route, client, fields(), 0.0).status == 429


def test_a_header_key_falls_back_to_the_client_address_and_server_buckets_are_shared_by_routes():
    admission, route = admission_for("", '[server.rate_limit]\nrequests = 1\nper = 60\nkey = "X-Api-Key"\n')
    other = replace(route, prefix="/other/")  # inherits the same [server] limit: the same buckets
    client = peer("198.51.100.1")
    assert admission.admit(route, client, b"GET", fields(x_api_key="k1"), 0.0) is None
    assert admission.admit(other, client, b"GET", fields(x_api_key="k1"), 0.0).status == 429
    assert admission.admit(other, client, b"GET", fields(x_api_key="k2"), 0.0) is None
    assert admission.admit(route, client, b"GET", fields(), 0.0) is None  # no key: the client's bucket
    assert admission.admit(route, client, b"GET", fields(), 0.0).status == 429


def test_a_route_without_rules_is_admitted_without_looking_at_the_request():
    admission, route = admission_for("")
    assert admission.admit(route, peer("192.0.2.1"), b"BREW", lambda name: 1 / 0, 0.0) is None


def test_check_config_shows_each_routes_effective_protection(tmp_path):
    from click.testing import CliRunner

    from accel.cli.main import main

    path = tmp_path / "accel.toml"
    path.write_text('[server]\nallow = ["local"]\n[server.rate_limit]\nrequests = 100\nburst = 50\n'
                    '[limits]\nmax_body_size = 1000\n' + ROUTE + 'methods = ["GET"]\n')
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert ("allow local; methods GET, HEAD; bodies up to 1000 bytes; "
            "100 requests per 1 s + burst 50 by client (server-wide buckets)") in result.output
