"""RFC 9111 §4.2.4 serving stale responses; RFC 5861 stale-while-revalidate and stale-if-error."""

from accel.cache.policy import CachePolicy, StoredResponse, stale_if_error_allows, stale_while_revalidate_allows

P = CachePolicy()


def stored(cc, stale_marked=False):
    return StoredResponse(
        status=200,
        fields=(("cache-control", cc),),
        request_time=0.0,
        response_time=0.0,
        initial_age=0.0,
        vary_names=(),
        secondary_key="[]",
        stale_marked=stale_marked,
    )


def test_rfc5861_s3_stale_while_revalidate_window():
    s = stored("max-age=10, stale-while-revalidate=5")
    assert stale_while_revalidate_allows(s, 15.0, 10.0) is True
    assert stale_while_revalidate_allows(s, 15.5, 10.0) is False
    assert stale_while_revalidate_allows(stored("max-age=10"), 11.0, 10.0) is False


def test_s4_2_4_stale_while_revalidate_forbidden_by_directives_but_not_by_soft_purge():
    for cc in ["must-revalidate", "proxy-revalidate", "s-maxage=10", "no-cache"]:
        assert stale_while_revalidate_allows(stored(f"max-age=10, stale-while-revalidate=60, {cc}"), 11.0, 10.0) is False
    assert stale_while_revalidate_allows(stored("stale-while-revalidate=60", stale_marked=True), 11.0, 10.0) is True


def test_rfc5861_s4_stale_if_error_from_response_request_or_grace():
    s = stored("max-age=10, stale-if-error=20")
    assert stale_if_error_allows(s, 30.0, 10.0, ()) is True
    assert stale_if_error_allows(s, 30.5, 10.0, ()) is False
    plain = stored("max-age=10")
    assert stale_if_error_allows(plain, 30.0, 10.0, ()) is False
    assert stale_if_error_allows(plain, 30.0, 10.0, (("cache-control", "stale-if-error=20"),)) is True
    assert stale_if_error_allows(plain, 30.0, 10.0, (), CachePolicy(grace=20)) is True
    assert stale_if_error_allows(plain, 30.5, 10.0, (), CachePolicy(grace=20)) is False


def test_s4_2_4_stale_if_error_forbidden_by_directives_and_request_no_cache():
    for cc in ["must-revalidate", "proxy-revalidate", "s-maxage=10", "no-cache"]:
        assert stale_if_error_allows(stored(f"max-age=10, stale-if-error=60, {cc}"), 11.0, 10.0, ()) is False
    s = stored("max-age=10, stale-if-error=60")
    assert stale_if_error_allows(s, 11.0, 10.0, (("cache-control", "no-cache"),)) is False
    assert stale_if_error_allows(s, 11.0, 10.0, (("pragma", "no-cache"),)) is False


def test_stale_if_error_serves_soft_purged_responses():
    assert stale_if_error_allows(stored("max-age=10, stale-if-error=60", stale_marked=True), 11.0, 10.0, ()) is True


def test_rfc9213_targeted_field_governs_stale_extensions():
    s = StoredResponse(
        status=200,
        fields=(("cache-control", "must-revalidate"), ("cdn-cache-control", "max-age=10, stale-if-error=60")),
        request_time=0.0,
        response_time=0.0,
        initial_age=0.0,
        vary_names=(),
        secondary_key="[]",
    )
    assert stale_if_error_allows(s, 30.0, 10.0, ()) is True
