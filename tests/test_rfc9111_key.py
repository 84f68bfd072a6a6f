"""RFC 9111 §2 primary cache key (target URI normalised per RFC 9110 §4.2.3)."""

from accel.cache.key import cache_key, url_prefix_key


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


def test_url_prefix_key_always_ends_the_authority():
    assert url_prefix_key("HTTP", "Example.com:80", "/img/") == "http://example.com/img/"
    assert url_prefix_key("http", "example.com", "") == "http://example.com/"
    assert url_prefix_key("http", "example.com", "img") == "http://example.com/img"
    assert cache_key("http", "example.com", "/img/a.png").startswith(url_prefix_key("http", "example.com", "/img/"))
    assert not cache_key("http", "example.com:8080", "/").startswith(url_prefix_key("http", "example.com", ""))


# -- the key of a request through a route (issue 16: host aliases share entries) -------------------------------

from accel.cache.key import route_cache_key, route_prefix_key  # noqa: E402
from accel.config import Route, parse_balancer_url, parse_origin  # noqa: E402


def route(origin: str, prefix: str = "/", **options) -> Route:
    parse = parse_balancer_url if origin.startswith("balancer:") else parse_origin
    return Route(prefix=prefix, origin=parse(origin), **options)


def test_a_route_that_does_not_preserve_the_host_keys_by_its_origin():
    r = route("http://10.0.0.5:8080/")
    for host in ("www.example.com", "Example.com:80", ""):
        assert route_cache_key("http", host, "/a?b", r) == "http://10.0.0.5:8080/a?b"
    assert route_cache_key("https", "example.com", "/a", r) == "https://10.0.0.5:8080/a"  # (share_schemes: "http")
    assert route_cache_key("http", "example.com", "/a?utm_x=1&b=2", r, drop_params=("utm_*",)) == \
        "http://10.0.0.5:8080/a?b=2"


def test_default_ports_are_those_of_the_keys_scheme_so_http_and_https_origins_stay_apart():
    plain, tls = route("http://Origin.Example/"), route("https://origin.example/")
    assert route_cache_key("http", "h", "/", plain) == "http://origin.example/"
    assert route_cache_key("https", "h", "/", plain) == "https://origin.example:80/"
    assert route_cache_key("http", "h", "/", tls) == "http://origin.example:443/"
    assert route_cache_key("https", "h", "/", tls) == "https://origin.example/"
    assert route_cache_key("http", "h", "/", route("http://[::1]:8080/")) == "http://[::1]:8080/"


def test_the_path_is_the_one_the_origin_is_asked_for():
    # two sites on one origin under different base paths must not share /x
    a, b = route("http://o/a/", "/"), route("http://o/b/", "/")
    assert route_cache_key("http", "a.example", "/x", a) == "http://o/a/x"
    assert route_cache_key("http", "b.example", "/x", b) == "http://o/b/x"
    shop = route("http://o:8000/app/", "/shop/")
    assert route_cache_key("http", "h", "/shop/cart?i=1", shop) == "http://o:8000/app/cart?i=1"
    assert route_prefix_key("http", "h", "/shop/img/", shop) == "http://o:8000/app/img/"
    assert route_cache_key("http", "h", "/shop/cart", shop).startswith(route_prefix_key("http", "h", "/shop/", shop))


def test_a_balancer_route_keys_by_the_balancers_name():
    r = route("balancer://App/")
    assert route_cache_key("http", "www.example.com", "/x", r) == "http://app/x"
    assert route_prefix_key("https", "www.example.com", "/img/", r) == "https://app/img/"


def test_a_route_that_preserves_the_host_keys_by_the_clients_url():
    r = route("http://10.0.0.5:8080/app/", "/shop/", preserve_host=True)
    assert route_cache_key("http", "WWW.example.com:80", "/shop/x", r) == "http://www.example.com/shop/x"
    assert route_prefix_key("http", "www.example.com", "/shop/", r) == "http://www.example.com/shop/"
    assert route_cache_key("http", "h", "/x", None) == "http://h/x"


def test_route_of_key_inverts_route_cache_key():
    from accel.cache.key import route_of_key
    from accel.proxy.routing import RouteTable

    api = Route(prefix="/api/", origin=parse_origin("http://10.0.0.5:8080/v1/"))
    api_admin = Route(prefix="/api/admin/", origin=parse_origin("http://10.0.0.5:8080/v1/admin/"))
    pooled = Route(prefix="/shop/", origin=parse_balancer_url("balancer://app/"))
    public = Route(prefix="/", origin=parse_origin("http://10.0.0.9/"), preserve_host=True)
    table = RouteTable([api, api_admin, pooled, public])
    for route, target in ((api, "/api/x?q=1"), (api_admin, "/api/admin/users"), (pooled, "/shop/cart"),
                          (public, "/page")):
        for scheme in ("http", "https"):
            assert route_of_key(route_cache_key(scheme, "alias.example", target, route), table) is route
    assert route_of_key("http://10.0.0.5:8080/v2/x", table) is public  # outside the origin's mapped space
