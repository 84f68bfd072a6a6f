"""RFC 9111 §4.2.3 calculating age."""

from accel.cache.httpdate import format_http_date as http_date
from accel.cache.policy import corrected_initial_age, current_age

T = 1_700_000_000.0


def test_s4_2_3_apparent_age_dominates():
    # Date is 30 s before the response arrived; request took 2 s; no Age.
    fields = (("date", http_date(T - 30)),)
    assert corrected_initial_age(fields, T - 2, T) == 30.0
    assert current_age(fields, T - 2, T, T + 100) == 130.0


def test_s4_2_3_corrected_age_value_dominates():
    # Age 50 plus 2 s response_delay beats the 10 s apparent age.
    fields = (("date", http_date(T - 10)), ("age", "50"))
    assert corrected_initial_age(fields, T - 2, T) == 52.0
    assert current_age(fields, T - 2, T, T + 8) == 60.0


def test_s4_2_3_date_in_the_future_gives_zero_apparent_age():
    fields = (("date", http_date(T + 300)),)
    assert corrected_initial_age(fields, T - 1, T) == 1.0


def test_s4_2_3_missing_date_uses_response_time():
    assert corrected_initial_age((), T - 0.5, T) == 0.5


def test_s5_1_invalid_age_is_ignored_and_first_of_many_is_used():
    assert corrected_initial_age((("age", "-5"),), T, T) == 0.0
    assert corrected_initial_age((("age", "ten"),), T, T) == 0.0
    assert corrected_initial_age((("age", "7, 100"),), T, T) == 7.0
    assert corrected_initial_age((("age", "7"), ("age", "100")), T, T) == 7.0


def test_s1_2_2_huge_age_is_clamped():
    assert corrected_initial_age((("age", "99999999999999"),), T, T) == 2147483648.0
