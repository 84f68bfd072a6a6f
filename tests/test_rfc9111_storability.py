"""RFC 9111 §3 storing responses, §3.1 stored fields, §3.5 Authorization, §5.2.2 response directives."""

from accel.cache.policy import CachePolicy, Verdict, fields_to_store, storable, storable_post

P = CachePolicy()
MAX_AGE = (("cache-control", "max-age=60"),)


def verdict(status=200, response=MAX_AGE, request=(), method="GET", policy=P, complete=True):
    return storable(method, status, tuple(request), tuple(response), policy, complete=complete)


def test_s3_ordinary_response_is_storable():
    assert verdict() == Verdict(True, "ok")


def test_s3_only_get_is_stored():
    assert verdict(method="HEAD") == Verdict(False, "method")
    assert verdict(method="POST") == Verdict(False, "method")


def test_s3_status_must_be_final_and_whole():
    assert verdict(status=103) == Verdict(False, "status-not-final")
    assert verdict(status=206) == Verdict(False, "partial")
    assert verdict(status=304) == Verdict(False, "not-modified")


def test_s3_3_incomplete_response_is_not_stored():
    assert verdict(complete=False) == Verdict(False, "incomplete")


def test_s5_2_2_5_no_store():
    assert verdict(response=(("cache-control", "max-age=60, no-store"),)) == Verdict(False, "no-store")


def test_s5_2_1_5_request_no_store():
    assert verdict(request=(("cache-control", "no-store"),)) == Verdict(False, "request-no-store")


def test_s5_2_2_3_must_understand_overrides_no_store_for_understood_status():
    cc = (("cache-control", "max-age=60, no-store, must-understand"),)
    assert verdict(response=cc) == Verdict(True, "ok")
    assert verdict(status=299, response=cc) == Verdict(False, "must-understand")


def test_s5_2_2_7_private_unqualified_refused_qualified_allowed():
    assert verdict(response=(("cache-control", "private, max-age=60"),)) == Verdict(False, "private")
    assert verdict(response=(("cache-control", 'private="x-user", max-age=60'),)) == Verdict(True, "ok")


def test_s3_5_authorization_requires_explicit_permission():
    auth = (("authorization", "Bearer x"),)
    assert verdict(request=auth) == Verdict(False, "authorization")
    for cc in ["public", "must-revalidate, max-age=60", "s-maxage=60"]:
        response = (("cache-control", cc), ("etag", '"e"'))
        assert verdict(request=auth, response=response) == Verdict(True, "ok"), cc


def test_s3_explicit_freshness_or_heuristic_status_required():
    assert verdict(status=302, response=()) == Verdict(False, "no-explicit-freshness")
    assert verdict(status=302, response=MAX_AGE) == Verdict(True, "ok")
    assert verdict(status=302, response=(("expires", "0"),)) == Verdict(True, "ok")
    assert verdict(status=302, response=(("cache-control", "public"), ("etag", '"e"'))) == Verdict(True, "ok")
    assert verdict(status=200, response=(("last-modified", "Mon, 02 Jan 2006 15:04:05 GMT"),)) == Verdict(True, "ok")
    assert verdict(status=500, response=(("cache-control", "s-maxage=5"),)) == Verdict(True, "ok")


def test_rfc9213_targeted_field_replaces_cache_control_for_storability():
    response = (("cache-control", "private, no-store"), ("cdn-cache-control", "max-age=60"))
    assert verdict(response=response) == Verdict(True, "ok")
    assert verdict(response=response, policy=CachePolicy(targeted_fields=())) == Verdict(False, "no-store")
    # Expires is ignored when a targeted field applies.
    assert verdict(status=302, response=(("expires", "0"), ("cdn-cache-control", "no-transform"))) == Verdict(
        False, "no-explicit-freshness"
    )


def test_s4_1_vary_star_is_not_stored():
    assert verdict(response=MAX_AGE + (("vary", "accept, *"),)) == Verdict(False, "vary-star")


def test_set_cookie_needs_policy_or_qualified_directive():
    cookie = MAX_AGE + (("set-cookie", "a=1"),)
    assert verdict(response=cookie) == Verdict(False, "set-cookie")
    assert verdict(response=cookie, policy=CachePolicy(store_set_cookie=True)) == Verdict(True, "ok")
    assert verdict(response=cookie, policy=CachePolicy(store_set_cookie="keep")) == Verdict(True, "ok")
    qualified = (("cache-control", 'max-age=60, no-cache="Set-Cookie"'), ("set-cookie", "a=1"))
    assert verdict(response=qualified) == Verdict(True, "ok")


def test_s3_set_cookie_is_kept_only_when_the_policy_says_keep():
    cookie = MAX_AGE + (("set-cookie", "a=1"),)
    assert fields_to_store(cookie, CachePolicy(store_set_cookie=True)) == MAX_AGE
    assert fields_to_store(cookie, CachePolicy(store_set_cookie="keep")) == cookie
    qualified = (("cache-control", 'max-age=60, no-cache="Set-Cookie"'), ("set-cookie", "a=1"))
    assert fields_to_store(qualified, CachePolicy(store_set_cookie="keep")) == qualified[:1]


def test_s3_1_fields_to_store_drops_connection_specific_and_named_fields():
    response = (
        ("date", "d"),
        ("connection", "close, X-Trace"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("x-trace", "abc"),
        ("cache-control", 'max-age=60, no-cache="X-Debug", private="x-user"'),
        ("x-debug", "1"),
        ("x-user", "bob"),
        ("set-cookie", "a=1"),
        ("age", "12"),
        ("content-type", "text/plain"),
        ("proxy-authenticate", "Basic"),
        ("trailer", "x"),
        ("upgrade", "h2c"),
    )
    assert fields_to_store(response, P) == (
        ("date", "d"),
        ("cache-control", 'max-age=60, no-cache="X-Debug", private="x-user"'),
        ("content-type", "text/plain"),
    )


def test_rfc9110_s9_3_3_post_responses_are_stored_only_with_explicit_freshness_and_own_content_location():
    uri = "http://example.test/orders/7?x=1"

    def post(*fields, status=200):
        return storable_post(status, uri, (), tuple(fields), CachePolicy(), complete=True)

    here = ("content-location", "/orders/7?x=1")
    assert post(("cache-control", "max-age=60"), here) == Verdict(True, "ok")
    assert post(("expires", "Thu, 01 Jan 2099 00:00:00 GMT"), ("content-location", "http://EXAMPLE.test:80/orders/7?x=1#f")).ok
    assert post(("cache-control", "max-age=60")) == Verdict(False, "method")
    assert post(("cache-control", "max-age=60"), ("content-location", "/orders/8")) == Verdict(False, "method")
    assert post(("cache-control", "max-age=60"), ("content-location", "https://example.test/orders/7?x=1")).ok is False
    assert post(("cache-control", "public"), here) == Verdict(False, "no-explicit-freshness")
    assert post(("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT"), here) == Verdict(False, "no-explicit-freshness")
    assert post(("cache-control", "max-age=60, no-store"), here) == Verdict(False, "no-store")


def test_a_response_that_can_never_be_reused_is_not_stored():
    """No explicit or heuristic freshness, no validator, no RFC 5861 window: nothing could ever reuse it."""
    never = Verdict(False, "never-reusable")
    assert verdict(status=200, response=()) == never
    assert verdict(status=302, response=(("cache-control", "public"),)) == never
    assert verdict(status=200, response=(("etag", '"e"'),)) == Verdict(True, "ok")  # revalidated on reuse
    assert verdict(status=200, response=(("cache-control", "max-age=0"),)) == Verdict(True, "ok")  # explicit
    assert verdict(status=200, response=(("cache-control", "stale-if-error=60"),)) == Verdict(True, "ok")
    assert verdict(status=200, response=(), policy=CachePolicy(default_ttl=60)) == Verdict(True, "ok")
