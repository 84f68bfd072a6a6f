"""RFC 9111 §4.1: calculating cache keys with Vary."""

import json

from hypothesis import given, strategies as st

from accel.cache.vary import matches, normalise_field, secondary_key, vary_names


def test_s4_1_vary_names_lower_cased_and_deduplicated():
    fields = (("vary", "Accept-Encoding, Origin"), ("vary", "accept-encoding"))
    assert vary_names(fields) == ("accept-encoding", "origin")
    assert vary_names(()) == ()
    assert vary_names((("vary", ""),)) == ()


def test_s4_1_vary_star_is_none():
    assert vary_names((("vary", "Accept, *"),)) is None


def test_s4_1_accept_encoding_is_case_whitespace_and_order_normalised():
    a = normalise_field("accept-encoding", ["GZIP ; q=1.0,  br"])
    b = normalise_field("Accept-Encoding", ["br", "gzip;q=1.0"])
    assert a == b == "br, gzip"


def test_accept_encoding_is_reduced_to_the_codings_accel_can_serve():
    reduced = lambda *values: normalise_field("accept-encoding", list(values))  # noqa: E731
    assert reduced("gzip, deflate") == reduced("x-gzip") == reduced("gzip;q=0.5, zstd") == "gzip"
    assert reduced("gzip, deflate, br") == reduced("br, gzip") == reduced("*") == "br, gzip"
    assert reduced("br") == reduced("*, gzip;q=0") == "br"
    assert reduced("deflate") == reduced("") == reduced("gzip;q=0, br;q=0") == reduced("identity") == "identity"
    assert reduced("gzip;q=0, gzip") == reduced("gzip, gzip;q=0") == "gzip"  # the better weight, in any order


def test_accept_encoding_members_naming_no_coding_are_skipped():
    # (hypothesis found ";" raising ValueError)
    assert normalise_field("accept-encoding", [";"]) == "identity"
    assert normalise_field("accept-encoding", [";, gzip", " ; q=1"]) == "gzip"


def test_s4_1_accept_language_normalises_case_order_weights_and_whitespace():
    assert normalise_field("accept-language", ["EN-us, fr;Q=0.5"]) == "en-us,fr;q=0.5"
    assert normalise_field("accept-language", ["fr;q=0.50 ,en"]) == normalise_field("accept-language", ["EN; q=1.000", "FR;q=0.5"])
    assert normalise_field("accept-language", ["fr;q=0.5"]) != normalise_field("accept-language", ["fr;q=0.6"])


def test_rfc9110_s12_4_2_weights_are_written_canonically():
    assert normalise_field("accept-language", ["fr;q=0.500, en;q=1.0, de;q=0"]) == "de;q=0,en,fr;q=0.5"
    assert normalise_field("accept-language", ["fr;q=2"]) == "fr;q=2"  # invalid: kept as written
    assert normalise_field("accept", ["text/html;q=1;ext=x"]) == "text/html;q=1;ext=x"  # not the last parameter


def test_s4_1_accept_lowercases_media_range_and_parameter_names_only():
    assert normalise_field("accept", ['Text/HTML ; Level=1 ; Profile="X"', "*/*;q=0.1"]) == (
        'text/html;level=1;profile="X",*/*;q=0.1'
    )


def test_s4_1_other_fields_are_only_trimmed_and_combined():
    assert normalise_field("user-agent", [" Mozilla/5.0 (X11)  "]) == "Mozilla/5.0 (X11)"
    assert normalise_field("origin", ["https://A.example"]) == "https://A.example"
    assert normalise_field("x-list", ["a", "b"]) == "a, b"


def test_s4_1_whitespace_around_commas_is_normalised_in_any_field():
    assert normalise_field("x-list", ["a  ,b", " c"]) == normalise_field("x-list", ["a, b, c"]) == "a, b, c"
    assert normalise_field("x-list", ["b, a"]) != normalise_field("x-list", ["a, b"])  # order may matter
    assert normalise_field("x-list", ['"a ,b"']) == '"a ,b"'  # not inside a quoted string


def test_s4_1_secondary_key_distinguishes_absent_from_empty():
    absent = secondary_key(("accept-language",), ())
    empty = secondary_key(("accept-language",), (("accept-language", ""),))
    assert json.loads(absent) == [["accept-language", None]]
    assert json.loads(empty) == [["accept-language", ""]]
    assert absent != empty
    assert secondary_key((), (("accept", "x"),)) == "[]"


def test_s4_1_matches():
    names = ("accept-encoding", "origin")
    stored = secondary_key(names, (("accept-encoding", "gzip, br"), ("origin", "https://a.example")))
    assert matches(names, stored, (("origin", "https://a.example"), ("accept-encoding", "br"), ("accept-encoding", "GZIP")))
    assert not matches(names, stored, (("origin", "https://b.example"), ("accept-encoding", "gzip, br")))
    assert not matches(names, stored, (("accept-encoding", "gzip, br"),))
    assert not matches(None, stored, ())


member = st.sampled_from(["gzip", "br", "deflate", "identity", "*", "zstd"])
qvalue = st.sampled_from(["", ";q=0.5", " ; q=1", ";Q=0"])


@given(st.lists(st.tuples(member, qvalue), max_size=6), st.randoms())
def test_s4_1_accept_encoding_normalisation_ignores_order_case_and_line_split(members, rnd):
    texts = [m + q for m, q in members]
    shuffled = texts[:]
    rnd.shuffle(shuffled)
    one_line = normalise_field("accept-encoding", [", ".join(texts)])
    per_line = normalise_field("accept-encoding", [t.upper() for t in shuffled] or [""])
    assert one_line == per_line


@given(st.text(max_size=30), st.sampled_from(["accept", "accept-encoding", "accept-language", "cookie"]))
def test_s4_1_normalisation_never_raises_and_is_idempotent(text, name):
    once = normalise_field(name, [text])
    assert normalise_field(name, [once]) == once
