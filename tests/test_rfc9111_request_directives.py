"""RFC 9111 §4 constructing responses from caches, §4.1 variants, §5.2.1 request directives,
§5.2.2 response directives that restrict reuse, RFC 5861 §3 stale-while-revalidate."""

from accel.cache.httpdate import format_http_date as http_date
from accel.cache.policy import (
    CachePolicy,
    Fresh,
    Miss,
    OnlyIfCachedFail,
    Revalidate,
    StaleOk,
    StoredResponse,
    evaluate,
)
from accel.cache.vary import secondary_key

T = 1_700_000_000.0
P = CachePolicy()


def stored(cc="max-age=100", *, extra=(), vary=(), request=(), at=T, initial_age=0.0, stale_marked=False):
    fields = (("date", http_date(at)),) + ((("cache-control", cc),) if cc else ()) + tuple(extra)
    return StoredResponse(
        status=200,
        fields=fields,
        request_time=at,
        response_time=at,
        initial_age=initial_age,
        vary_names=vary,
        secondary_key=secondary_key(vary, tuple(request)),
        stale_marked=stale_marked,
        body_length=3,
    )


def decide(entries, request=(), now=T + 10, method="GET", policy=P):
    return evaluate(method, tuple(request), entries, policy, now)


def cc(value):
    return (("cache-control", value),)


def test_s4_2_fresh_response_is_served_with_age_and_remaining_ttl():
    s = stored()
    assert decide([s]) == Fresh(s, 10.0, 90.0)


def test_s4_2_3_initial_age_counts():
    s = stored(initial_age=95)
    assert decide([s], now=T + 4) == Fresh(s, 99.0, 1.0)


def test_s4_2_response_whose_age_equals_lifetime_is_stale():
    s = stored()
    assert decide([s], now=T + 100) == Revalidate((s,), (), 100.0, 100.0, "stale")


def test_s4_miss_reasons():
    assert decide([]) == Miss("uri-miss")
    s = stored(vary=("accept-encoding",), request=(("accept-encoding", "gzip"),))
    assert decide([s], request=(("accept-encoding", "br"),)) == Miss("vary-miss")
    assert decide([s], method="POST") == Miss("method")
    assert decide([stored()], method="get") == Miss("method")


def test_s4_head_is_answered_from_stored_get():
    s = stored()
    assert decide([s], method="HEAD") == Fresh(s, 10.0, 90.0)


def test_s5_2_1_4_request_no_cache_and_pragma_force_validation():
    s = stored(extra=(("etag", '"v1"'),))
    expected = Revalidate((s,), (("if-none-match", '"v1"'),), 10.0, 100.0, "request")
    assert decide([s], request=cc("no-cache")) == expected
    assert decide([s], request=(("pragma", "no-cache"),)) == expected
    assert decide([s], request=(("pragma", "no-cache"), ("cache-control", "max-stale"))) == Fresh(s, 10.0, 90.0)


def test_s5_2_1_5_request_no_store_is_not_served_from_cache():
    assert decide([stored()], request=cc("no-store")) == Miss("request")


def test_s5_2_1_1_request_max_age():
    s = stored()
    assert decide([s], request=cc("max-age=10")) == Fresh(s, 10.0, 90.0)
    assert decide([s], request=cc("max-age=9")) == Revalidate((s,), (), 10.0, 100.0, "request")
    assert decide([s], request=cc("max-age=9, max-stale")) == Revalidate((s,), (), 10.0, 100.0, "request")


def test_s5_2_1_3_request_min_fresh():
    s = stored()
    assert decide([s], request=cc("min-fresh=90")) == Fresh(s, 10.0, 90.0)
    assert decide([s], request=cc("min-fresh=91")) == Revalidate((s,), (), 10.0, 100.0, "request")


def test_s5_2_1_2_request_max_stale():
    s = stored()
    now = T + 150  # 50 s stale
    assert decide([s], request=cc("max-stale=50"), now=now) == StaleOk(s, 150.0, "max-stale")
    assert decide([s], request=cc("max-stale"), now=now) == StaleOk(s, 150.0, "max-stale")
    assert decide([s], request=cc("max-stale=49"), now=now) == Revalidate((s,), (), 150.0, 100.0, "stale")


def test_s4_2_4_directives_forbid_stale_even_with_max_stale():
    for value in ["max-age=100, must-revalidate", "max-age=100, proxy-revalidate", "s-maxage=100"]:
        s = stored(value)
        assert decide([s], request=cc("max-stale"), now=T + 150) == Revalidate((s,), (), 150.0, 100.0, "stale")


def test_s5_2_2_4_response_no_cache_always_revalidates_qualified_does_not():
    s = stored("max-age=100, no-cache")
    assert decide([s]) == Revalidate((s,), (), 10.0, 100.0, "stale")
    q = stored('max-age=100, no-cache="x-a"')
    assert decide([q]) == Fresh(q, 10.0, 90.0)


def test_s4_4_stale_marked_response_is_revalidated():
    s = stored(stale_marked=True)
    assert decide([s]) == Revalidate((s,), (), 10.0, 100.0, "stale")


def test_s5_2_1_7_only_if_cached():
    s = stored()
    assert decide([s], request=cc("only-if-cached")) == Fresh(s, 10.0, 90.0)
    assert decide([s], request=cc("only-if-cached"), now=T + 150) == OnlyIfCachedFail()
    assert decide([], request=cc("only-if-cached")) == OnlyIfCachedFail()
    assert decide([s], request=cc("only-if-cached, max-stale"), now=T + 150) == StaleOk(s, 150.0, "max-stale")


def test_s4_1_most_recent_matching_variant_wins():
    old = stored(at=T - 50, extra=(("etag", '"old"'),))
    new = stored(at=T - 20, extra=(("etag", '"new"'),))
    assert decide([old, new]) == Fresh(new, 30.0, 70.0)
    later_arrival = StoredResponse(
        status=200,
        fields=new.fields,
        request_time=T - 5,
        response_time=T - 5,
        initial_age=0.0,
        vary_names=(),
        secondary_key="[]",
    )
    assert decide([new, later_arrival]).stored is later_arrival  # same Date: later response_time


def test_s4_3_1_revalidation_sends_all_matching_etags_and_selected_last_modified():
    req = (("accept-encoding", "gzip"),)
    vary = ("accept-encoding",)
    a = stored("max-age=1", at=T - 50, vary=vary, request=req, extra=(("etag", '"a"'),))
    b = stored(
        "max-age=1",
        at=T - 20,
        vary=vary,
        request=req,
        extra=(("etag", 'W/"b"'), ("last-modified", http_date(T - 1000))),
    )
    other = stored("max-age=1", vary=vary, request=(("accept-encoding", "br"),), extra=(("etag", '"c"'),))
    decision = decide([a, other, b], request=req)
    assert decision == Revalidate(
        (b, a),
        (("if-none-match", 'W/"b", "a"'), ("if-modified-since", http_date(T - 1000))),
        30.0,
        1.0,
        "stale",
        (("accept-encoding", "gzip"),),  # the stored request's Vary-named field
    )


def test_rfc5861_s3_stale_while_revalidate_serves_stale_and_revalidates():
    s = stored("max-age=100, stale-while-revalidate=30")
    background = Revalidate((s,), (), 130.0, 100.0, "stale")
    assert decide([s], now=T + 130) == StaleOk(s, 130.0, "stale-while-revalidate", background)
    assert decide([s], now=T + 131) == Revalidate((s,), (), 131.0, 100.0, "stale")
    assert decide([s], now=T + 110, request=cc("min-fresh=1")) == Revalidate((s,), (), 110.0, 100.0, "stale")


def test_rfc5861_s3_stale_while_revalidate_yields_to_must_revalidate():
    s = stored("max-age=100, stale-while-revalidate=30, must-revalidate")
    assert decide([s], now=T + 110) == Revalidate((s,), (), 110.0, 100.0, "stale")


def test_s4_4_soft_purged_response_is_served_stale_while_revalidating():
    s = stored("max-age=100, stale-while-revalidate=60", stale_marked=True)
    decision = decide([s])
    assert decision == StaleOk(s, 10.0, "stale-while-revalidate", Revalidate((s,), (), 10.0, 100.0, "stale"))
