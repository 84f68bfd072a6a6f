"""RFC 9110 §14 range requests and §13.1.5 If-Range, served from a stored representation."""

from hypothesis import given, strategies as st

from accel.cache.httpdate import format_http_date
from accel.cache.ranges import (
    MAX_RANGES,
    IgnoreRange,
    Satisfiable,
    Unsatisfiable,
    content_range,
    multipart_end,
    multipart_length,
    multipart_part_header,
    parse_range,
    if_range_allows,
)


def test_s14_1_2_examples_for_10000_bytes():
    assert parse_range("bytes=0-499", 10000) == Satisfiable(((0, 499),))
    assert parse_range("bytes=500-999", 10000) == Satisfiable(((500, 999),))
    assert parse_range("bytes=-500", 10000) == Satisfiable(((9500, 9999),))
    assert parse_range("bytes=9500-", 10000) == Satisfiable(((9500, 9999),))
    assert parse_range("bytes=0-0,-1", 10000) == Satisfiable(((0, 0), (9999, 9999)))


def test_s14_1_1_last_pos_beyond_length_and_long_suffix_are_truncated():
    assert parse_range("bytes=9000-20000", 10000) == Satisfiable(((9000, 9999),))
    assert parse_range("bytes=-20000", 10000) == Satisfiable(((0, 9999),))


def test_s14_1_1_unit_is_case_insensitive_and_ows_allowed_in_list():
    assert parse_range("Bytes=0-1 ,\t 5-6", 10) == Satisfiable(((0, 1), (5, 6)))


def test_s14_6_overlapping_and_adjacent_ranges_coalesce_in_ascending_order():
    assert parse_range("bytes=500-700,601-999", 10000) == Satisfiable(((500, 999),))
    assert parse_range("bytes=10-19,0-9", 100) == Satisfiable(((0, 19),))
    assert parse_range("bytes=50-60,0-1,-5", 100) == Satisfiable(((0, 1), (50, 60), (95, 99)))


def test_s14_1_1_unsatisfiable_only_when_no_range_is_satisfiable():
    assert parse_range("bytes=10000-", 10000) == Unsatisfiable(10000)
    assert parse_range("bytes=-0", 10000) == Unsatisfiable(10000)
    assert parse_range("bytes=10000-, 0-0", 10000) == Satisfiable(((0, 0),))
    assert Unsatisfiable(10000).content_range == "bytes */10000"


def test_s14_2_invalid_or_foreign_ranges_are_ignored():
    assert parse_range(None, 10) == IgnoreRange("absent")
    assert parse_range("items=0-1", 10) == IgnoreRange("unit")
    assert parse_range("bytes 0-1", 10) == IgnoreRange("unit")
    for bad in ["bytes=5-2", "bytes=", "bytes=,", "bytes=a-b", "bytes=1", "bytes=0-1,x", "bytes=- 1", "bytes=1-2-3"]:
        assert parse_range(bad, 10) == IgnoreRange("invalid"), bad


def test_s14_2_too_many_ranges_are_ignored():
    many = "bytes=" + ",".join(f"{i}-{i}" for i in range(MAX_RANGES + 1))
    assert parse_range(many, 1000) == IgnoreRange("too-many")
    exactly = "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(MAX_RANGES))
    assert len(parse_range(exactly, 1000).ranges) == MAX_RANGES


def test_s14_1_1_zero_length_representation_is_served_whole():
    assert parse_range("bytes=-5", 0) == IgnoreRange("empty")


def test_s14_1_1_huge_positions_do_not_break_parsing():
    assert parse_range("bytes=" + "9" * 5000 + "-", 10) == Unsatisfiable(10)
    assert parse_range("bytes=0-" + "9" * 5000, 10) == Satisfiable(((0, 9),))


LM = 1_700_000_000.0
DATE = LM + 10


def test_s13_1_5_if_range_entity_tag_uses_strong_comparison():
    assert if_range_allows(None, '"a"', None, None) is True
    assert if_range_allows('"a"', '"a"', None, None) is True
    assert if_range_allows('"a"', '"b"', None, None) is False
    assert if_range_allows('W/"a"', 'W/"a"', None, None) is False
    assert if_range_allows('"a"', 'W/"a"', None, None) is False
    assert if_range_allows('"a"', None, LM, DATE) is False


def test_s13_1_5_if_range_date_requires_strong_last_modified_and_exact_match():
    date = format_http_date(LM)
    assert if_range_allows(date, None, LM, DATE) is True
    assert if_range_allows(date, None, LM, LM + 0.5) is False  # weak: less than 1 s before Date
    assert if_range_allows(date, None, LM, None) is False
    assert if_range_allows(format_http_date(LM + 1), None, LM, DATE) is False
    assert if_range_allows("yesterday", '"a"', LM, DATE) is False


def test_s14_4_content_range():
    assert content_range(0, 499, 1234) == "bytes 0-499/1234"


def test_s14_6_multipart_part_headers_and_length():
    header = multipart_part_header("THIS_STRING_SEPARATES", "application/pdf", 500, 999, 8000)
    assert header == (
        b"\r\n--THIS_STRING_SEPARATES\r\nContent-Type: application/pdf\r\n"
        b"Content-Range: bytes 500-999/8000\r\n\r\n"
    )
    assert multipart_part_header("B", None, 0, 0, 1) == b"\r\n--B\r\nContent-Range: bytes 0-0/1\r\n\r\n"
    assert multipart_end("B") == b"\r\n--B--\r\n"
    ranges = ((0, 0), (5, 9))
    body = b"".join(multipart_part_header("B", "text/plain", a, b, 10) + b"x" * (b - a + 1) for a, b in ranges)
    assert multipart_length("B", "text/plain", ranges, 10) == len(body + multipart_end("B"))


@given(st.text(max_size=60), st.integers(min_value=0, max_value=10**6))
def test_s14_2_parser_never_raises_on_arbitrary_text(text, length):
    result = parse_range(text, length)
    assert isinstance(result, (IgnoreRange, Unsatisfiable, Satisfiable))


spec = st.one_of(
    st.tuples(st.integers(0, 2000), st.integers(0, 2000)).map(lambda p: f"{min(p)}-{max(p)}"),
    st.integers(0, 2000).map(lambda n: f"{n}-"),
    st.integers(0, 2000).map(lambda n: f"-{n}"),
)


@given(st.lists(spec, min_size=1, max_size=20), st.integers(min_value=1, max_value=1500))
def test_s14_1_satisfiable_ranges_stay_within_length_sorted_and_disjoint(specs, length):
    result = parse_range("bytes=" + ",".join(specs), length)
    assert isinstance(result, (Satisfiable, Unsatisfiable))
    if isinstance(result, Satisfiable):
        previous_last = -2
        for first, last in result.ranges:
            assert 0 <= first <= last < length
            assert first > previous_last + 1
            previous_last = last
