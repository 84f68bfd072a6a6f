"""RFC 9111 §5.2 Cache-Control, §4.2.1 conflicts, §1.2.2 delta-seconds, §5.4 Pragma; RFC 9213 targeted fields."""

from hypothesis import given, strategies as st

from accel.cache.directives import (
    DELTA_SECONDS_MAX,
    CacheControl,
    RequestCacheControl,
    effective_response_directives,
    parse_cache_control,
    parse_delta_seconds,
    parse_directives,
    parse_targeted_field,
    request_cache_control,
)


def test_s1_2_2_delta_seconds():
    assert parse_delta_seconds("0") == 0
    assert parse_delta_seconds("0060") == 60
    assert parse_delta_seconds("2147483648") == DELTA_SECONDS_MAX
    assert parse_delta_seconds("2147483649") == DELTA_SECONDS_MAX
    assert parse_delta_seconds("99999999999999999999999") == DELTA_SECONDS_MAX
    for bad in [None, "", "-1", "1.5", " 1", "1e3", "٣"]:
        assert parse_delta_seconds(bad) is None, bad


def test_s5_2_directive_syntax_names_case_insensitive_and_quoted_arguments():
    assert parse_directives(['Max-Age=60, NO-CACHE="Set-Cookie, X-Foo"', 'private, =x, ext="a\\"b"']) == [
        ("max-age", "60"),
        ("no-cache", "Set-Cookie, X-Foo"),
        ("private", None),
        ("ext", 'a"b'),
    ]


def test_s5_2_2_response_directives():
    cc = parse_cache_control(
        [
            "public, max-age=60, s-maxage=30, must-revalidate, proxy-revalidate, no-store",
            "must-understand, no-transform, immutable, stale-while-revalidate=5, stale-if-error=7",
        ]
    )
    assert cc == CacheControl(
        max_age=60,
        s_maxage=30,
        public=True,
        must_revalidate=True,
        proxy_revalidate=True,
        no_store=True,
        must_understand=True,
        no_transform=True,
        immutable=True,
        stale_while_revalidate=5,
        stale_if_error=7,
    )
    assert parse_cache_control([]) == CacheControl()


def test_s5_2_1_1_quoted_delta_seconds_are_accepted():
    assert parse_cache_control(['max-age="60"']).max_age == 60


def test_s4_2_1_invalid_max_age_means_stale():
    assert parse_cache_control(["max-age=-1"]).max_age == 0
    assert parse_cache_control(["max-age=abc"]).max_age == 0
    assert parse_cache_control(["max-age"]).max_age == 0
    assert parse_cache_control(["s-maxage=1.5"]).s_maxage == 0


def test_s4_2_1_conflicting_duplicates_mean_stale_identical_ones_do_not():
    assert parse_cache_control(["max-age=60", "max-age=120"]).max_age == 0
    assert parse_cache_control(["max-age=60, max-age=60"]).max_age == 60
    assert parse_cache_control(["s-maxage=1, s-maxage=2"]).s_maxage == 0


def test_s1_2_2_large_values_clamp():
    assert parse_cache_control(["max-age=99999999999"]).max_age == 2147483648


def test_rfc5861_extensions_invalid_ignored_repeats_take_smallest():
    cc = parse_cache_control(["stale-while-revalidate=x, stale-if-error=60, stale-if-error=30"])
    assert cc.stale_while_revalidate is None
    assert cc.stale_if_error == 30


def test_s5_2_2_4_and_s5_2_2_7_qualified_forms():
    cc = parse_cache_control(['no-cache="Set-Cookie,x-a", private=x-b', 'no-cache="x-a"'])
    assert (cc.no_cache, cc.no_cache_fields) == (False, ("set-cookie", "x-a"))
    assert (cc.private, cc.private_fields) == (False, ("x-b",))


def test_s5_2_2_4_unqualified_form_wins_and_empty_list_counts_as_unqualified():
    cc = parse_cache_control(['no-cache="x-a", no-cache', 'private=""'])
    assert (cc.no_cache, cc.no_cache_fields) == (True, ("x-a",))
    assert (cc.private, cc.private_fields) == (True, ())


def test_s5_2_1_request_directives():
    rcc = request_cache_control(
        (("cache-control", "max-age=5, max-stale=10, min-fresh=3, no-cache, no-store, only-if-cached"),)
    )
    assert rcc == RequestCacheControl(
        max_age=5, max_stale=10, min_fresh=3, no_cache=True, no_store=True, only_if_cached=True
    )


def test_s5_2_1_2_max_stale_without_value_is_any():
    assert request_cache_control((("cache-control", "max-stale"),)).max_stale == "any"
    assert request_cache_control((("cache-control", "max-stale=x"),)).max_stale is None
    assert request_cache_control((("cache-control", "max-stale, max-stale=5"),)).max_stale == 5


def test_s5_2_1_conflicts_resolve_to_most_restrictive():
    rcc = request_cache_control((("cache-control", "max-age=10, max-age=5, min-fresh=1, min-fresh=9"),))
    assert (rcc.max_age, rcc.min_fresh) == (5, 9)
    assert request_cache_control((("cache-control", "max-age=oops"),)).max_age == 0
    assert request_cache_control((("cache-control", "min-fresh=oops"),)).min_fresh is None


def test_rfc5861_s4_request_stale_if_error():
    assert request_cache_control((("cache-control", "stale-if-error=30"),)).stale_if_error == 30


def test_s5_4_pragma_no_cache_only_without_cache_control():
    assert request_cache_control((("pragma", "No-Cache"),)).no_cache is True
    assert request_cache_control((("pragma", "x, no-cache"),)).no_cache is True
    assert request_cache_control((("pragma", "no-cache"), ("cache-control", "max-age=5"))).no_cache is False
    assert request_cache_control((("pragma", "other"),)).no_cache is False


def test_rfc9213_s2_1_targeted_field_takes_precedence():
    fields = (("cache-control", "no-store"), ("cdn-cache-control", "max-age=600, stale-if-error=60"))
    cc, source = effective_response_directives(fields)
    assert source == "cdn-cache-control"
    assert cc == CacheControl(max_age=600, stale_if_error=60)


def test_rfc9213_s2_1_first_configured_target_wins():
    fields = (("cdn-cache-control", "max-age=600"), ("accel-cdn-cache-control", "max-age=5"))
    cc, source = effective_response_directives(fields, ("accel-cdn-cache-control", "cdn-cache-control"))
    assert (cc.max_age, source) == (5, "accel-cdn-cache-control")


def test_rfc9213_s2_1_invalid_or_empty_targeted_field_falls_back():
    base = (("cache-control", "max-age=30"),)
    for bad in ["", "MAX-AGE=60", "max-age=60,,", "max-age=(1 2)", 'max-age="60', "max-age=60 junk"]:
        cc, source = effective_response_directives(base + (("cdn-cache-control", bad),))
        assert (cc.max_age, source) == (30, "cache-control"), bad


def test_rfc9213_s2_1_a_directive_value_of_the_wrong_type_invalidates_the_whole_field():
    base = (("cache-control", "max-age=30"),)
    for bad in ['max-age="0"', "max-age=1.5", "max-age=?1", "max-age", "s-maxage=:AA==:", "no-cache=x",
                "private, stale-if-error=1.0"]:
        assert parse_targeted_field([bad]) is None, bad
        cc, source = effective_response_directives(base + (("cdn-cache-control", bad),))
        assert (cc.max_age, source) == (30, "cache-control"), bad


def test_rfc9213_s2_2_structured_dictionary_forms():
    assert parse_targeted_field(['max-age=60;x=1, private, no-cache="set-cookie", public=?0, no-store=?1']) == [
        ("max-age", "60"),
        ("private", None),
        ("no-cache", "set-cookie"),
        ("no-store", None),
    ]
    assert parse_targeted_field(["max-age=-5"]) == [("max-age", "-5")]
    assert effective_response_directives((("cdn-cache-control", "max-age=-5"),))[0].max_age == 0


@given(st.lists(st.text(max_size=40), max_size=4))
def test_s5_2_parser_never_raises_and_durations_are_bounded(values):
    cc = parse_cache_control(values)
    for value in (cc.max_age, cc.s_maxage, cc.stale_if_error, cc.stale_while_revalidate):
        assert value is None or 0 <= value <= DELTA_SECONDS_MAX
    rcc = request_cache_control(tuple(("cache-control", v) for v in values))
    assert rcc.max_stale is None or rcc.max_stale == "any" or 0 <= rcc.max_stale <= DELTA_SECONDS_MAX
    effective_response_directives(tuple(("cdn-cache-control", v) for v in values))


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["max-age", "MAX-AGE", "Max-Age"]))
def test_s5_2_2_1_max_age_round_trip(seconds, name):
    assert parse_cache_control([f" {name} = {seconds} "]).max_age == min(seconds, DELTA_SECONDS_MAX)
