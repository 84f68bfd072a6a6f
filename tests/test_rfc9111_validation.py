"""RFC 9111 §4.3 validation (§4.3.4 freshening with 304, §3.2 updating stored fields) and
RFC 9110 §13.2.2 evaluating clients' preconditions against a stored response (§15.4.5 304 fields)."""

from dataclasses import replace

from accel.cache.httpdate import format_http_date as http_date
from accel.cache.policy import (
    CachePolicy,
    Fresh,
    Revalidate,
    StoredResponse,
    corrected_initial_age,
    evaluate,
    fields_to_store,
    evaluate_conditionals,
    freshen,
    not_modified_fields,
    select_for_freshening,
)
from accel.cache.vary import secondary_key

T = 1_700_000_000.0


def stored(*extra, at=T):
    return StoredResponse(
        status=200,
        fields=(("date", http_date(at)),) + extra,
        request_time=at,
        response_time=at,
        initial_age=0.0,
        vary_names=(),
        secondary_key="[]",
    )


A = stored(("etag", '"a"'), at=T - 30)
A2 = stored(("etag", '"a"'), at=T - 10)
B = stored(("etag", 'W/"b"'), ("last-modified", http_date(T - 500)), at=T - 20)
C = stored(("last-modified", http_date(T - 900)), at=T - 5)
BARE = stored(at=T - 1)


def test_s4_3_4_strong_etag_selects_every_match():
    assert select_for_freshening([A, B, A2], (("etag", '"a"'),)) == [A2, A]
    assert select_for_freshening([A, B], (("etag", '"zzz"'),)) == []
    assert select_for_freshening([B], (("etag", '"b"'),)) == []  # stored tag is weak


def test_s4_3_4_weak_validators_select_the_most_recent_match():
    assert select_for_freshening([A, B], (("etag", 'W/"b"'),)) == [B]
    assert select_for_freshening([A, A2], (("etag", 'W/"a"'),)) == [A2]
    assert select_for_freshening([A, B, C], (("last-modified", http_date(T - 900)),)) == [C]
    assert select_for_freshening([A, B], (("last-modified", http_date(T - 1)),)) == []


def test_s4_3_4_no_validators_select_a_single_unvalidated_response():
    assert select_for_freshening([BARE], (("date", http_date(T)),)) == [BARE]
    assert select_for_freshening([BARE, C], ()) == []
    assert select_for_freshening([C], ()) == []


def test_s4_3_4_freshen_replaces_fields_but_keeps_framing():
    stored_fields = (
        ("date", "old"),
        ("cache-control", "max-age=10"),
        ("content-length", "3"),
        ("content-encoding", "gzip"),
        ("etag", '"a"'),
        ("x-keep", "1"),
        ("x-multi", "1"),
        ("x-multi", "2"),
    )
    response_304 = (
        ("date", "new"),
        ("cache-control", 'max-age=60, no-cache="x-keep"'),
        ("content-length", "0"),
        ("content-encoding", "br"),
        ("connection", "x-hop"),
        ("x-hop", "h"),
        ("keep-alive", "timeout=1"),
        ("age", "5"),
        ("set-cookie", "s=1"),
        ("x-multi", "3"),
        ("x-new", "n"),
    )
    assert freshen(stored_fields, response_304) == (
        ("date", "new"),
        ("cache-control", 'max-age=60, no-cache="x-keep"'),
        ("content-length", "3"),
        ("content-encoding", "gzip"),
        ("etag", '"a"'),
        ("x-multi", "3"),
        ("x-new", "n"),
    )


LM = http_date(T - 100)
STORED = (("date", http_date(T)), ("etag", '"v1"'), ("last-modified", LM), ("content-type", "text/plain"))


def conditional(*request, method="GET", fields=STORED):
    return evaluate_conditionals(method, tuple(request), fields)


def test_s13_1_2_if_none_match_uses_weak_comparison():
    assert conditional(("if-none-match", 'W/"v1"')) == 304
    assert conditional(("if-none-match", '"x", "v1"')) == 304
    assert conditional(("if-none-match", "*")) == 304
    assert conditional(("if-none-match", '"x"')) is None
    assert conditional(("if-none-match", '"v1"'), method="HEAD") == 304
    assert conditional(("if-none-match", '"v1"'), method="PUT") == 412


def test_s13_2_2_if_none_match_takes_precedence_over_if_modified_since():
    assert conditional(("if-none-match", '"x"'), ("if-modified-since", http_date(T))) is None


def test_s13_1_3_if_modified_since():
    assert conditional(("if-modified-since", LM)) == 304
    assert conditional(("if-modified-since", http_date(T - 101))) is None
    assert conditional(("if-modified-since", "garbage")) is None
    assert conditional(("if-modified-since", LM), ("if-modified-since", LM)) is None
    assert conditional(("if-modified-since", LM), method="POST") is None


def test_rfc9111_s4_3_2_if_modified_since_falls_back_to_date():
    no_lm = (("date", http_date(T)),)
    assert conditional(("if-modified-since", http_date(T)), fields=no_lm) == 304
    assert conditional(("if-modified-since", http_date(T - 1)), fields=no_lm) is None


def test_s13_1_1_if_match_uses_strong_comparison():
    assert conditional(("if-match", '"v1"')) is None
    assert conditional(("if-match", "*")) is None
    assert conditional(("if-match", 'W/"v1"')) == 412
    assert conditional(("if-match", '"v2"')) == 412


def test_s13_1_4_if_unmodified_since_only_without_if_match():
    assert conditional(("if-unmodified-since", http_date(T - 101))) == 412
    assert conditional(("if-unmodified-since", LM)) is None
    assert conditional(("if-match", '"v1"'), ("if-unmodified-since", http_date(T - 101))) is None
    assert conditional(("if-unmodified-since", http_date(T - 101)), fields=(("etag", '"v1"'),)) is None


def test_s13_2_2_precondition_failure_before_not_modified():
    assert conditional(("if-match", '"v2"'), ("if-none-match", '"v1"')) == 412


def test_s15_4_5_not_modified_fields():
    fields = STORED + (
        ("cache-control", "max-age=5"),
        ("content-length", "3"),
        ("vary", "accept"),
        ("expires", "x"),
        ("content-location", "/a"),
        ("x-other", "1"),
    )
    assert not_modified_fields(fields) == (
        ("date", http_date(T)),
        ("etag", '"v1"'),
        ("last-modified", LM),
        ("cache-control", "max-age=5"),
        ("vary", "accept"),
        ("expires", "x"),
        ("content-location", "/a"),
    )


def test_s4_3_store_revalidate_freshen_round_trip():
    """§3 store → §4.2 stale → §4.3.1 conditional request → §4.3.4 304 freshens → fresh again."""
    policy = CachePolicy()
    received = (("date", http_date(T - 5)), ("age", "3"), ("cache-control", "max-age=60"), ("etag", '"v1"'))
    first = StoredResponse(
        status=200,
        fields=fields_to_store(received, policy),
        request_time=T - 1,
        response_time=T,
        initial_age=corrected_initial_age(received, T - 1, T),
        vary_names=(),
        secondary_key="[]",
    )
    assert evaluate("GET", (), [first], policy, T + 10) == Fresh(first, 15.0, 45.0)
    decision = evaluate("GET", (), [first], policy, T + 55)
    assert decision == Revalidate((first,), (("if-none-match", '"v1"'),), 60.0, 60.0, "stale")
    response_304 = (("date", http_date(T + 56)), ("etag", '"v1"'), ("cache-control", "max-age=120"))
    assert select_for_freshening(decision.stored_candidates, response_304) == [first]
    refreshed = StoredResponse(
        status=200,
        fields=freshen(first.fields, response_304, policy),
        request_time=T + 55,
        response_time=T + 56,
        initial_age=corrected_initial_age(response_304, T + 55, T + 56),
        vary_names=(),
        secondary_key="[]",
    )
    assert refreshed.fields == (("date", http_date(T + 56)), ("cache-control", "max-age=120"), ("etag", '"v1"'))
    assert evaluate("GET", (), [refreshed], policy, T + 100) == Fresh(refreshed, 45.0, 75.0)


def test_s4_3_1_a_generated_conditional_request_carries_the_stored_requests_vary_values():
    names = ("accept-encoding", "x-absent")
    first_request = (("accept-encoding", "gzip, br"),)
    variant = replace(stored(("etag", '"v"'), ("vary", "Accept-Encoding, X-Absent"), ("cache-control", "max-age=0")),
                      vary_names=names, secondary_key=secondary_key(names, first_request))
    decision = evaluate("GET", (("accept-encoding", "BR, Gzip"),), [variant], CachePolicy(), T + 1)
    assert isinstance(decision, Revalidate)
    assert decision.conditional_fields == (("if-none-match", '"v"'),)
    assert decision.vary_fields == (("accept-encoding", "br, gzip"),)
