"""RFC 9211 Cache-Status field values."""

import pytest

from accel.cache.policy import cache_status_value


def test_rfc9211_s2_1_hit_with_ttl():
    assert cache_status_value("accel", hit=True, ttl=57.9) == "accel; hit; ttl=57"


def test_rfc9211_s2_2_forwarded_and_stored():
    assert (
        cache_status_value("accel", hit=False, fwd="uri-miss", fwd_status=200, stored=True)
        == "accel; fwd=uri-miss; fwd-status=200; stored"
    )


def test_rfc9211_s2_4_negative_ttl_when_stale_and_collapsed_and_detail():
    assert (
        cache_status_value("accel", hit=True, ttl=-0.5, collapsed=True, detail="grace")
        == "accel; hit; ttl=-1; collapsed; detail=grace"
    )


def test_rfc9211_s2_names_and_details_that_are_not_tokens_become_strings():
    assert cache_status_value("edge 1", hit=False, fwd="stale", detail='a "b"') == (
        '"edge 1"; fwd=stale; detail="a \\"b\\""'
    )


def test_rfc9211_invalid_combinations_raise():
    with pytest.raises(ValueError):
        cache_status_value("accel", hit=True, fwd="miss")
    with pytest.raises(ValueError):
        cache_status_value("accel", hit=False, fwd="nope")
    with pytest.raises(ValueError):
        cache_status_value("caché", hit=True)
