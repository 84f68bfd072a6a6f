"""RFC 9110 §5.6.7 HTTP-date parsing and formatting."""

from hypothesis import given, strategies as st

from accel.cache.httpdate import format_http_date, parse_http_date

EXAMPLE = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
Y2024 = 1718000000.0  # 2024-06-10


def test_s5_6_7_three_forms_parse_to_the_same_instant():
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == EXAMPLE
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == EXAMPLE
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == EXAMPLE


def test_s5_6_7_surrounding_whitespace_is_ignored():
    assert parse_http_date("  Sun, 06 Nov 1994 08:49:37 GMT\t") == EXAMPLE


def test_s5_6_7_invalid_values_are_none():
    for text in [
        None,
        "",
        "0",
        "-1",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT extra",
        "Sun, ０6 Nov 1994 08:49:37 GMT",
    ]:
        assert parse_http_date(text) is None, text


def test_s5_6_7_names_and_gmt_are_accepted_in_any_letter_case():
    for text in ["sun, 06 nov 1994 08:49:37 gmt", "SUN, 06 NOV 1994 08:49:37 GMT", "sUNDAY, 06-nOV-94 08:49:37 Gmt",
                 "SUN NOV  6 08:49:37 1994"]:
        assert parse_http_date(text) == EXAMPLE, text


def test_s5_6_7_leap_second_is_accepted():
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == 1483228800.0


def test_s5_6_7_day_name_is_not_checked_against_the_date():
    assert parse_http_date("Mon, 06 Nov 1994 08:49:37 GMT") == EXAMPLE


def test_s5_6_7_two_digit_year_more_than_50_years_ahead_is_in_the_past():
    assert parse_http_date("Saturday, 01-Jan-75 00:00:00 GMT", now=Y2024) == 157766400.0  # 1975
    assert parse_http_date("Monday, 01-Jan-74 00:00:00 GMT", now=Y2024) == 3281990400.0  # 2074
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now=Y2024) == EXAMPLE


def test_s5_6_7_two_digit_year_without_now_pivots_at_70():
    assert parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT") == 0.0
    assert parse_http_date("Tuesday, 01-Jan-69 00:00:00 GMT") == 3124224000.0  # 2069


def test_s5_6_7_format_is_imf_fixdate():
    assert format_http_date(EXAMPLE) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(EXAMPLE + 0.999) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(-0.5) == "Wed, 31 Dec 1969 23:59:59 GMT"
    assert format_http_date(-62135596800) == "Mon, 01 Jan 0001 00:00:00 GMT"


@given(st.integers(min_value=-62135596800, max_value=253402300799))
def test_s5_6_7_round_trip(ts):
    assert parse_http_date(format_http_date(ts)) == float(ts)


@given(st.text(max_size=60))
def test_s5_6_7_parse_never_raises(text):
    result = parse_http_date(text)
    assert result is None or isinstance(result, float)
