"""RFC 9111 §2 primary cache key (target URI normalised per RFC 9110 §4.2.3)."""

from accel.cache.key import cache_key, cache_key_for_uri, url_prefix_key


def test_s4_2_3_scheme_and_host_lower_cased_default_port_dropped():
    assert cache_key("HTTP", "Example.COM:80", "/A?B") == "http://example.com/A?B"
    assert cache_key("https", "example.com:443", "/") == "https://example.com/"
    assert cache_key("http", "example.com:443", "/") == "http://example.com:443/"
    assert cache_key("http", "example.com:", "/x") == "http://example.com/x"


def test_s4_2_3_custom_default_ports():
    assert cache_key("http", "h:8080", "/", default_port_for_scheme={"http": 8080}) == "http://h/"


def test_ipv6_literal_host():
    assert cache_key("http", "[::1]:80", "/") == "http://[::1]/"
    assert cache_key("http", "[::1]:8080", "/") == "http://[::1]:8080/"
    assert cache_key("http", "[::1]", "/") == "http://[::1]/"


def test_empty_path_becomes_slash_and_fragment_is_removed():
    assert cache_key("http", "h", "") == "http://h/"
    assert cache_key("http", "h", "?a=1") == "http://h/?a=1"
    assert cache_key("http", "h", "/p?a=1#frag") == "http://h/p?a=1"
    assert cache_key("http", "h", "/p#frag?x") == "http://h/p"


def test_query_kept_raw_by_default_including_empty_query():
    assert cache_key("http", "h", "/p?b=2&a=%41&&") == "http://h/p?b=2&a=%41&&"
    assert cache_key("http", "h", "/p?") == "http://h/p?"


def test_drop_params_by_exact_name_or_glob():
    key = cache_key("http", "h", "/p?utm_source=x&id=7&gclid=abc&UTM_X=1", drop_params=("utm_*", "gclid"))
    assert key == "http://h/p?id=7&UTM_X=1"
    assert cache_key("http", "h", "/p?utm_a=1&gclid", drop_params=("utm_*", "gclid")) == "http://h/p"


def test_sort_query_is_stable_by_name_and_keeps_encoding():
    key = cache_key("http", "h", "/p?b=2&a=%2F&b=1&a=0&c", sort_query=True)
    assert key == "http://h/p?a=%2F&a=0&b=2&b=1&c"


def test_cache_key_for_uri():
    assert cache_key_for_uri("HTTP://user@Example.com:80/a?b#c") == "http://example.com/a?b"
    assert cache_key_for_uri("https://example.com") == "https://example.com/"
    assert cache_key_for_uri("https://example.com/p?x=1&utm_a=2", drop_params=("utm_*",)) == "https://example.com/p?x=1"


def test_url_prefix_key_always_ends_the_authority():
    assert url_prefix_key("HTTP", "Example.com:80", "/img/") == "http://example.com/img/"
    assert url_prefix_key("http", "example.com", "") == "http://example.com/"
    assert url_prefix_key("http", "example.com", "img") == "http://example.com/img"
    assert cache_key("http", "example.com", "/img/a.png").startswith(url_prefix_key("http", "example.com", "/img/"))
    assert not cache_key("http", "example.com:8080", "/").startswith(url_prefix_key("http", "example.com", ""))
