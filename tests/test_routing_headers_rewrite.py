"""Unit tests, no sockets: routing, header rules and ProxyPassReverse."""

from __future__ import annotations

import ipaddress

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from accel.config import Route, parse_origin
from accel.http.addresses import peer_in, peer_name, split_authority
from accel.http.headers import ClientSide, end_to_end, request_to_origin, response_to_client
from accel.proxy.rewrite import ReverseMap, any_reversed, reverse_fields
from accel.proxy.routing import RouteTable, origin_target


def route(prefix, url=None):
    return Route(prefix=prefix, origin=parse_origin(url) if url else None)


TABLE = RouteTable(
    [
        route("/", "http://main:8000/"),
        route("/api/users/", "http://users:9001/v1/"),
        route("/api/payments/", "http://pay:9002/"),
        route("/api/users/internal/"),
        route("/app", "http://app:7000/"),
    ]
)


@pytest.mark.parametrize(
    "path, prefix",
    [
        ("/", "/"),
        ("/api/users/42", "/api/users/"),
        ("/api/users/internal/x", "/api/users/internal/"),
        ("/api/payments/", "/api/payments/"),
        ("/api/other", "/"),
        ("/app", "/app"),
        ("/app/x", "/app"),
        ("/app?x=1", "/app"),
        ("/application", "/"),
    ],
)
def test_longest_prefix_wins(path, prefix):
    assert TABLE.match(path).prefix == prefix


def test_exclusion_route_matches_but_has_no_origin():
    assert TABLE.match("/api/users/internal/secret").exclude


def test_no_route():
    assert RouteTable([route("/only/", "http://o/")]).match("/other") is None


@pytest.mark.parametrize(
    "prefix, origin, target, upstream",
    [
        ("/api/users/", "http://users:9001/v1/", "/api/users/42?x=1", "/v1/42?x=1"),
        ("/", "http://main/", "/a/b", "/a/b"),
        ("/app", "http://app/", "/app", "/"),
        ("/app", "http://app/", "/app/x", "/x"),
        ("/app", "http://app/base", "/app/x", "/base/x"),
        ("/app/", "http://app/base", "/app/x", "/base/x"),
        ("/app", "http://app/", "/app?q", "/?q"),
    ],
)
def test_origin_target(prefix, origin, target, upstream):
    assert origin_target(route(prefix, origin), target) == upstream


CLIENT = ClientSide(address="192.0.2.7", host=b"www.example.com", scheme="https", port=443, trusted=False)


def forward(fields, client=CLIENT, preserve_host=False):
    return request_to_origin(
        fields,
        client,
        origin_authority="origin:8000",
        preserve_host=preserve_host,
        server_name="edge1",
        via="accel",
        client_version=b"HTTP/1.1",
    )


def values(fields, name):
    return [v for n, v in fields if n.lower() == name]


def test_hop_by_hop_and_connection_nominated_fields_are_dropped():
    fields = [
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"p"),
        (b"Keep-Alive", b"300"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authorization", b"x"),
        (b"Accept", b"a"),
        (b"Accept", b"b"),
    ]
    assert end_to_end(fields) == [(b"Accept", b"a"), (b"Accept", b"b")]


def test_request_fields_to_origin():
    out = forward([(b"Host", b"www.example.com"), (b"X-Forwarded-For", b"6.6.6.6"), (b"Content-Length", b"3")])
    assert values(out, b"host") == [b"origin:8000"]
    assert values(out, b"x-forwarded-for") == [b"192.0.2.7"]
    assert values(out, b"x-forwarded-host") == [b"www.example.com"]
    assert values(out, b"x-forwarded-server") == [b"edge1"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-port") == [b"443"]
    assert values(out, b"via") == [b"1.1 accel"]
    assert values(out, b"content-length") == []


def test_trusted_proxy_chain_and_preserved_host():
    client = ClientSide(address="10.0.0.1", host=b"www.example.com", scheme="http", port=80, trusted=True)
    out = forward([(b"X-Forwarded-For", b"203.0.113.5"), (b"X-Forwarded-For", b"198.51.100.2")], client, True)
    assert values(out, b"x-forwarded-for") == [b"203.0.113.5, 198.51.100.2, 10.0.0.1"]
    assert values(out, b"host") == [b"www.example.com"]


def test_a_trusted_proxys_x_forwarded_proto_is_the_clients_scheme_and_an_untrusted_peers_is_replaced():
    sent = [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-For", b"203.0.113.5")]
    haproxy = ClientSide(address="10.0.0.1", host=b"www.example.com", scheme="http", port=8080, trusted=True)
    out = forward(sent, haproxy)
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-for") == [b"203.0.113.5, 10.0.0.1"]
    assert values(forward([(b"X-Forwarded-Proto", b"gopher")], haproxy), b"x-forwarded-proto") == [b"http"]
    anyone = ClientSide(address="192.0.2.9", host=b"www.example.com", scheme="http", port=8080, trusted=False)
    assert values(forward(sent, anyone), b"x-forwarded-proto") == [b"http"]


def test_response_fields_to_client():
    out = response_to_client(
        [(b"Server", b"gunicorn"), (b"Connection", b"X-Debug"), (b"X-Debug", b"1"), (b"Via", b"1.0 backend"),
         (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")],
        via="accel",
    )
    assert out == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Via", b"1.0 backend, 1.1 accel")]


MAP = ReverseMap(parse_origin("http://10.0.0.5:8000/app/"), "/shop/", "https", "www.example.com")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("http://10.0.0.5:8000/app/cart", "https://www.example.com/shop/cart"),
        ("http://10.0.0.5:8000/app/", "https://www.example.com/shop/"),
        ("http://10.0.0.5:8000/app", "https://www.example.com/shop/"),
        ("/app/cart?x=1", "/shop/cart?x=1"),
        ("http://elsewhere.example/app/cart", "http://elsewhere.example/app/cart"),
        ("/other/path", "/other/path"),
    ],
)
def test_reverse_url(value, expected):
    assert MAP.url(value) == expected


def test_reverse_default_port_forms():
    mapping = ReverseMap(parse_origin("http://backend/"), "/", "http", "public.example:8080")
    assert mapping.url("http://backend/x") == "http://public.example:8080/x"
    assert mapping.url("http://backend:80/x") == "http://public.example:8080/x"


def test_reverse_cookie_path_and_domain():
    assert MAP.cookie("sid=1; Path=/app/; Domain=10.0.0.5; Secure") == "sid=1; Path=/shop/; Domain=www.example.com; Secure"
    assert MAP.cookie("sid=1; Path=/app/account") == "sid=1; Path=/shop/account"
    assert MAP.cookie("sid=1; path=/other") == "sid=1; path=/other"


def test_reverse_fields_only_touches_url_fields():
    fields = [(b"Location", b"http://10.0.0.5:8000/app/x"), (b"Link", b"<http://10.0.0.5:8000/app/x>")]
    assert reverse_fields(fields, MAP) == [
        (b"Location", b"https://www.example.com/shop/x"),
        (b"Link", b"<http://10.0.0.5:8000/app/x>"),
    ]


def test_connection_nominated_fields_are_dropped_whatever_their_case():
    fields = [(b"Connection", b"X-Secret , close"), (b"x-secret", b"1"), (b"X-Kept", b"2"), (b"TE", b"trailers")]
    assert end_to_end(fields) == [(b"X-Kept", b"2")]


@pytest.mark.parametrize(
    ("authority", "split"),
    [
        ("example.com", ("example.com", "")),
        ("example.com:8080", ("example.com", "8080")),
        ("[::1]", ("[::1]", "")),
        ("[::1]:443", ("[::1]", "443")),
        ("[::1", ("[::1", "")),
        ("10.0.0.1:80", ("10.0.0.1", "80")),
    ],
)
def test_split_authority(authority, split):
    assert split_authority(authority) == split


@pytest.mark.parametrize(
    ("peer", "name", "in_ten"),
    [
        (IPv4Address("TCP", "10.1.2.3", 1), "10.1.2.3", True),
        (IPv6Address("TCP", "::ffff:10.1.2.3", 1), "10.1.2.3", True),
        (IPv6Address("TCP", "::ffff:192.0.2.1", 1), "192.0.2.1", False),
        (IPv6Address("TCP", "fe80::1%eth0", 1), "fe80::1", False),
        (UNIXAddress("/run/accel.sock"), "unknown", False),
        (UNIXAddress(None), "unknown", False),
    ],
)
def test_peers_against_networks(peer, name, in_ten):
    ten = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert (peer_name(peer), peer_in(peer, ten)) == (name, in_ten)
    assert peer_in(peer, ten, unix=True) == (in_ten or isinstance(peer, UNIXAddress))


def host_route(prefix, url, *hosts):
    return Route(prefix=prefix, origin=parse_origin(url), hosts=tuple(hosts))


HOSTS = RouteTable(
    [
        host_route("/", "http://main/"),
        host_route("/static/", "http://files/"),
        host_route("/", "http://api/", "api.example.com"),
        host_route("/v2/", "http://api2/", "api.example.com"),
        host_route("/", "http://org/", "*.example.org"),
        host_route("/", "http://shop/", "*.shop.example.org"),
    ]
)


@pytest.mark.parametrize(
    "host, path, origin",
    [
        ("api.example.com", "/users", "http://api/"),
        ("API.Example.COM:8443", "/v2/x", "http://api2/"),  # case and port ignored
        ("api.example.com.", "/users", "http://api/"),  # a trailing dot too
        ("www.example.com", "/users", "http://main/"),  # no host route: the routes for every host
        (None, "/users", "http://main/"),  # HTTP/1.0 without Host
        ("www.example.org", "/a", "http://org/"),
        ("a.b.example.org", "/a", "http://org/"),  # one or more labels below
        ("example.org", "/a", "http://main/"),  # the wildcard does not cover the domain itself
        ("x.shop.example.org", "/a", "http://shop/"),  # the longest wildcard first
        ("api.example.com", "/static/x", "http://api/"),  # the host's "/" wins over a hostless longer prefix
    ],
)
def test_virtual_hosts_route_by_host_then_path(host, path, origin):
    assert HOSTS.match(path, host).origin.url == origin


def test_host_routes_fall_through_to_every_host_when_no_prefix_matches():
    table = RouteTable([host_route("/api/", "http://api/", "api.example.com"), host_route("/", "http://main/")])
    assert table.match("/other", "api.example.com").origin.url == "http://main/"


def test_only_fields_naming_urls_or_cookies_need_reversing():
    assert not any_reversed([(b"Content-Type", b"text/html"), (b"Cache-Control", b"no-store")])
    assert any_reversed([(b"Content-Type", b"text/html"), (b"LOCATION", b"http://origin/x")])
    assert any_reversed([(b"Set-Cookie", b"a=1; Path=/app")])
