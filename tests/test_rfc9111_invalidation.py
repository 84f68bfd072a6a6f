"""RFC 9111 §4.4: invalidating stored responses after unsafe requests."""

from accel.cache.policy import invalidation_targets

URI = "https://example.com/items/7?x=1"


def test_s4_4_unsafe_method_with_non_error_status_invalidates_target():
    assert invalidation_targets("POST", 200, URI, ()) == [URI]
    assert invalidation_targets("DELETE", 204, URI, ()) == [URI]
    assert invalidation_targets("PURGEISH", 302, URI, ()) == [URI]  # unknown methods count as unsafe
    assert invalidation_targets("get", 200, URI, ()) == [URI]  # methods are case-sensitive


def test_s4_4_safe_methods_and_error_statuses_do_not_invalidate():
    assert invalidation_targets("GET", 200, URI, ()) == []
    assert invalidation_targets("HEAD", 200, URI, ()) == []
    assert invalidation_targets("OPTIONS", 200, URI, ()) == []
    assert invalidation_targets("POST", 404, URI, ()) == []
    assert invalidation_targets("PUT", 500, URI, ()) == []
    assert invalidation_targets("PUT", 101, URI, ()) == []


def test_s4_4_location_and_content_location_same_origin_resolved():
    fields = (("location", "/items/8"), ("content-location", "https://EXAMPLE.com:443/items/7/v2#frag"))
    assert invalidation_targets("POST", 201, URI, fields) == [
        URI,
        "https://example.com/items/8",
        "https://EXAMPLE.com:443/items/7/v2",
    ]


def test_s4_4_relative_reference_resolution():
    assert invalidation_targets("PUT", 200, URI, (("content-location", "8"),)) == [URI, "https://example.com/items/8"]


def test_s4_4_other_origins_are_not_invalidated():
    for other in ["https://evil.example/items/7", "http://example.com/items/7", "https://example.com:8443/x"]:
        assert invalidation_targets("POST", 200, URI, (("location", other),)) == [URI], other


def test_s4_4_duplicates_and_fragments_are_dropped():
    assert invalidation_targets("POST", 200, URI + "#f", (("location", URI),)) == [URI]
