"""RFC 9111 §4.2.1 freshness lifetime and §4.2.2 heuristic freshness."""

from accel.cache.httpdate import format_http_date as http_date
from accel.cache.policy import CachePolicy, freshness_lifetime

T = 1_700_000_000.0
P = CachePolicy()


def lifetime(fields, status=200, policy=P, response_time=T):
    return freshness_lifetime(status, tuple(fields), policy, response_time=response_time)


def test_s4_2_1_s_maxage_over_max_age_over_expires():
    expires = ("expires", http_date(T + 500))
    date = ("date", http_date(T))
    assert lifetime([("cache-control", "max-age=60, s-maxage=30"), expires, date]) == 30.0
    assert lifetime([("cache-control", "max-age=60"), expires, date]) == 60.0
    assert lifetime([expires, date]) == 500.0


def test_s4_2_1_expires_minus_date_uses_response_time_without_date():
    assert lifetime([("expires", http_date(T + 120))], response_time=T + 20) == 100.0
    assert lifetime([("expires", http_date(T + 120)), ("date", "garbage")], response_time=T) == 120.0


def test_s5_3_invalid_or_past_expires_is_already_expired():
    for value in ["0", "-1", "tomorrow", http_date(T - 100)]:
        assert lifetime([("expires", value), ("date", http_date(T))]) == 0.0, value


def test_s4_2_1_conflicting_expires_lines_mean_stale():
    assert lifetime([("expires", http_date(T + 60)), ("expires", http_date(T + 90))]) == 0.0
    assert lifetime([("expires", http_date(T + 60)), ("expires", http_date(T + 60))]) == 60.0


def test_s4_2_1_invalid_max_age_is_zero_even_with_expires():
    assert lifetime([("cache-control", "max-age=soon"), ("expires", http_date(T + 60))]) == 0.0


def test_s4_2_2_heuristic_fraction_of_last_modified_interval():
    fields = [("date", http_date(T)), ("last-modified", http_date(T - 1000))]
    assert lifetime(fields) == 100.0
    assert lifetime(fields, policy=CachePolicy(heuristic_fraction=0.5)) == 500.0
    assert lifetime(fields, policy=CachePolicy(heuristic_max=30)) == 30.0


def test_s4_2_2_heuristic_without_last_modified_or_from_the_future_is_zero():
    assert lifetime([("date", http_date(T))]) == 0.0
    assert lifetime([("date", http_date(T)), ("last-modified", http_date(T + 50))]) == 0.0


def test_s4_2_2_heuristic_only_for_heuristically_cacheable_status_or_public():
    fields = [("date", http_date(T)), ("last-modified", http_date(T - 1000))]
    assert lifetime(fields, status=302) == 0.0
    assert lifetime(fields, status=404) == 100.0
    assert lifetime(fields + [("cache-control", "public")], status=302) == 100.0


def test_s4_2_2_default_ttl_replaces_heuristic_only():
    policy = CachePolicy(default_ttl=300)
    assert lifetime([("date", http_date(T))], policy=policy) == 300.0
    assert lifetime([("date", http_date(T)), ("last-modified", http_date(T - 10**6))], policy=policy) == 300.0
    assert lifetime([("cache-control", "max-age=5")], policy=policy) == 5.0
    assert lifetime([], status=500, policy=policy) == 0.0


def test_s4_2_1_max_ttl_caps_explicit_and_heuristic():
    policy = CachePolicy(max_ttl=60, default_ttl=600)
    assert lifetime([("cache-control", "max-age=3600")], policy=policy) == 60.0
    assert lifetime([], policy=policy) == 60.0
    assert lifetime([("cache-control", "max-age=10")], policy=policy) == 10.0


def test_rfc9213_s2_1_targeted_field_overrides_cache_control_and_expires():
    fields = [
        ("cache-control", "max-age=10"),
        ("expires", http_date(T + 9999)),
        ("date", http_date(T)),
        ("last-modified", http_date(T - 1000)),
    ]
    assert lifetime(fields + [("cdn-cache-control", "s-maxage=600")]) == 600.0
    # The targeted field has no freshness directive: Expires is ignored too, so heuristics apply.
    assert lifetime(fields + [("cdn-cache-control", "public")]) == 100.0
    assert lifetime(fields, policy=CachePolicy(targeted_fields=())) == 10.0
