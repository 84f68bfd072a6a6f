"""The request-target normalised once: pure rules, properties, and a real origin that sees only the normal form."""

from __future__ import annotations


import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from accel.config import CacheSettings, Config, ConfigError, Route, RouteCache, parse_config, parse_origin
from accel.http.target import UnsafeTarget, normalise_path, normalise_target
from tests.support import raw_request, start_stack, temporary_directory

# --- pure rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "normal"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("//admin/secret", "/admin/secret"),
        ("/a///b//", "/a/b/"),
        ("/x/../admin/secret", "/admin/secret"),
        ("/./admin/secret", "/admin/secret"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a/./", "/a/"),
        ("/%61dmin/secret", "/admin/secret"),
        ("/%7euser/%2D%5f%2e", "/~user/-_."),
        ("/a/%2e%2E/b", "/b"),
        ("/%3a%3A%c3%a9", "/%3A%3A%C3%A9"),
        ("/a;b/c", "/a;b/c"),
        ("/a/.b/..c/...", "/a/.b/..c/..."),
        ("/a?q=/../%2e%2e//x", "/a?q=/../%2e%2e//x"),  # the query is kept as received
        ("/a/../b?", "/b?"),
    ],
)
def test_normal_form(target, normal):
    assert normalise_target(target) == normal


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/..", "above the root"),
        ("/%2e%2e/admin", "above the root"),
        ("/a/../..", "above the root"),
        ("/a/%2E%2E/%2e%2e/x", "above the root"),
        ("/a%2Fb", "encoded slash"),
        ("/a%2fb", "encoded slash"),
        ("/a%5Cb", "encoded slash or backslash"),
        ("/a%5cb", "encoded slash or backslash"),
        ("/a\\b", "raw backslash"),
        ("/a%00b", "encoded control"),
        ("/a%0d%0aX: y", "encoded control"),
        ("/a%7F", "encoded control"),
        ("/a\x00b", "control character in the path"),
        ("/a\tb", "control character in the path"),
        ("/a?b\x00", "control character in the query"),
        ("/a%zz", "malformed"),
        ("/a%4", "malformed"),
        ("/a#/../admin", "raw '#'"),
        ("/a/..;/admin", "dot segment with parameters"),
        ("/a/%2e;x/b", "dot segment with parameters"),
        ("a/b", "does not start with '/'"),
    ],
)
def test_refused(target, why):
    with pytest.raises(UnsafeTarget, match=why):
        normalise_target(target)


_PATH_PIECES = st.sampled_from(
    ["/", "//", ".", "..", "a", "B", "%2e", "%2E", "%61", "%7e", "%3a", "%C3%A9", ";x", "-", "~", "_", "x.y"]
)
paths = st.lists(_PATH_PIECES, max_size=12).map(lambda pieces: "/" + "".join(pieces))


@given(paths)
def test_normalising_twice_changes_nothing(path):
    try:
        normal = normalise_path(path)
    except UnsafeTarget:
        return
    assert normalise_path(normal) == normal


@given(paths)
def test_the_normal_form_has_no_dot_segments_repeated_slashes_or_encoded_unreserved(path):
    try:
        normal = normalise_path(path)
    except UnsafeTarget:
        return
    segments = normal.split("/")[1:]
    assert "." not in segments and ".." not in segments
    assert "//" not in normal
    for encoded in ("%2e", "%2E", "%61", "%7e", "%3a"):
        assert encoded not in normal


_WITHOUT_DOTS = st.sampled_from(["/", "//", "a", "B", "%61", "%7e", "%3a", "%C3%A9", ";x", "-", "~", "_", "x.y"])


@given(st.lists(_WITHOUT_DOTS, max_size=12).map("".join))
def test_what_follows_a_prefix_stays_under_it_without_dot_segments(rest):
    assert normalise_path("/admin/" + rest).startswith("/admin/")


def test_configured_prefixes_and_cache_rules_must_be_in_normal_form():
    for prefix in ("//admin/", "/a/../b/", "/%61/", "/a\\b", "/./x"):
        text = f'[[route]]\nprefix = "{prefix}"\nexclude = true\n'.replace("\\", "\\\\")
        with pytest.raises(ConfigError, match="route\\[0\\].prefix"):
            parse_config(text, "accel.toml")
    text = '[[route]]\nprefix = "/"\norigin = "http://127.0.0.1:9/"\n[route.cache]\ndisable = ["/a//b/"]\n'
    with pytest.raises(ConfigError, match="route\\[0\\].cache.disable"):
        parse_config(text, "accel.toml")


# --- a real origin behind accel -----------------------------------------------------------------------

BYPASSES = [
    b"//admin/secret",
    b"///admin/secret",
    b"/x/../admin/secret",
    b"/%61dmin/secret",
    b"/%61%64%6D%69%6E/secret",
    b"/./admin/secret",
    b"/x/%2e%2e/admin/secret",
    b"/x/%2E%2E/admin/secret",
    b"/%2e%2e/admin",
    b"/admin%2Fsecret",
    b"/x/..%2Fadmin/secret",
    b"/x%5C..%5Cadmin/secret",
    b"/x\\..\\admin/secret",
    b"/x/..;/admin/secret",
    b"/admin%00/secret",
    b"/x#/../admin/secret",
    b"http://localhost//admin/secret",
    b"http://localhost/x/../admin/secret",
]


def request_bytes(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def front_of(testcase, config: Config | None = None, **route_options):
    """An origin (its recorder is returned) and accel in front: "/" goes to it, "/admin/" is excluded."""
    behind = start_stack(testcase)  # its origin is the one routes point at
    routes = (
        Route(prefix="/", origin=parse_origin(behind.origin_url + "/"), **route_options),
        Route(prefix="/admin/"),
    )
    return start_stack(testcase, config=config, routes=routes), behind.origin


class ExclusionBypassTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_no_spelling_of_an_excluded_path_reaches_the_origin(self):
        front, origin = front_of(self)
        port = front.accel_port.getHost().port
        answers = {}
        for target in BYPASSES:
            answers[target] = status_of((yield raw_request(port, request_bytes(target))))
        self.assertEqual({t: s for t, s in answers.items() if s not in (400, 404)}, {})
        self.assertEqual(origin.seen, [])
        self.assertEqual(status_of((yield raw_request(port, request_bytes(b"/admin/secret")))), 404)
        self.assertEqual(status_of((yield raw_request(port, request_bytes(b"/%2e%2e/admin")))), 400)

    @defer.inlineCallbacks
    def test_the_origin_receives_the_normal_form(self):
        front, origin = front_of(self)
        port = front.accel_port.getHost().port
        targets = [b"/a//b/./c/../%7euser/%3a%c3%a9?q=/../%2e%2e//x", b"//pub/x", b"http://localhost/p/../q"]
        for target in targets:
            self.assertEqual(status_of((yield raw_request(port, request_bytes(target)))), 200)
        self.assertEqual(
            [s.uri for s in origin.seen], [b"/a/b/~user/%3A%C3%A9?q=/../%2e%2e//x", b"/pub/x", b"/q"]
        )


class CacheDisableBypassTests(unittest.TestCase):
    def setUp(self):
        self.directory = temporary_directory(self, "accel-test-")

    @defer.inlineCallbacks
    def test_no_spelling_of_a_disabled_path_is_cached(self):
        config = Config(cache=CacheSettings(dir=self.directory))
        front, origin = front_of(self, config, cache=RouteCache(disable=("/account/", "*.php")))
        origin.handlers[b"/account/me"] = origin.handlers[b"/x.php"] = cacheable
        port = front.accel_port.getHost().port
        spellings = [b"/account/me", b"//account/me", b"/x/../account/me", b"/%61ccount/me", b"/./account/me",
                     b"/x.php", b"/a/../x.ph%70", b"//x.php"]
        statuses = []
        for target in spellings + spellings:
            response = yield raw_request(port, request_bytes(target))
            statuses.append(cache_status(response))
        self.assertEqual(set(statuses), {b"accel; fwd=bypass"})
        self.assertEqual([s.uri for s in origin.seen], [b"/account/me"] * 5 + [b"/x.php"] * 3 + [b"/account/me"] * 5 + [b"/x.php"] * 3)

    @defer.inlineCallbacks
    def test_spellings_of_one_path_share_one_cache_entry(self):
        config = Config(cache=CacheSettings(dir=self.directory))
        front, origin = front_of(self, config)
        origin.handlers[b"/page"] = cacheable
        port = front.accel_port.getHost().port
        statuses = []
        for target in (b"/page", b"//page", b"/%70age", b"/x/../page", b"/./page"):
            statuses.append(cache_status((yield raw_request(port, request_bytes(target)))))
        self.assertEqual(len(origin.seen), 1)
        self.assertTrue(all(b"; hit" in s for s in statuses[1:]), statuses)


def cacheable(request):
    request.setHeader(b"cache-control", b"max-age=60")
    return b"cacheable"


def cache_status(response: bytes) -> bytes:
    head = response.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"cache-status":
            return value.strip()
    return b""
