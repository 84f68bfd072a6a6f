"""RFC 9110 §5.2-§5.3, §5.6.1, §5.6.4, §8.8.3: field access, lists, quoted strings, entity-tags."""

from accel.http.headers import connection_options
from accel.cache.fields import (
    EntityTag,
    get_all,
    get_list,
    get_one,
    parse_entity_tag,
    parse_entity_tags,
    replace,
    split_list,
    strong_match,
    unquote,
    weak_match,
    without,
)

FIELDS = (("vary", "Accept"), ("x-a", "1"), ("vary", "Accept-Encoding, , Origin"), ("x-b", "2"))


def test_s5_3_get_all_and_get_one():
    assert get_all(FIELDS, "vary") == ["Accept", "Accept-Encoding, , Origin"]
    assert get_all(FIELDS, "VARY") == ["Accept", "Accept-Encoding, , Origin"]
    assert get_one(FIELDS, "vary") == "Accept, Accept-Encoding, , Origin"
    assert get_one(FIELDS, "x-a") == "1"
    assert get_one(FIELDS, "missing") is None
    assert get_one((("x", ""),), "x") == ""


def test_s5_6_1_get_list_splits_trims_and_drops_empty_members():
    assert get_list(FIELDS, "vary") == ["Accept", "Accept-Encoding", "Origin"]
    assert get_list(FIELDS, "missing") == []


def test_s5_6_4_commas_inside_quoted_strings_do_not_split():
    assert split_list('a, b="x, \\"y\\", z", c') == ["a", 'b="x, \\"y\\", z"', "c"]
    assert split_list("text/html ; q=0.5; a=\"1;2\"", ";") == ["text/html", "q=0.5", 'a="1;2"']


def test_s5_6_4_unquote_resolves_quoted_pairs():
    assert unquote('"a\\"b\\\\c"') == 'a"b\\c'
    assert unquote("token") == "token"
    assert unquote('"') == '"'


def test_without_and_replace():
    assert without(FIELDS, {"VARY", "x-b"}) == (("x-a", "1"),)
    assert replace(FIELDS, "vary", ["Cookie"]) == (("vary", "Cookie"), ("x-a", "1"), ("x-b", "2"))
    assert replace(FIELDS, "x-c", ["3", "4"]) == FIELDS + (("x-c", "3"), ("x-c", "4"))
    assert replace(FIELDS, "x-a", []) == (("vary", "Accept"), ("vary", "Accept-Encoding, , Origin"), ("x-b", "2"))


def test_s7_6_1_connection_options():
    assert connection_options(["Keep-Alive, X-Foo", "close", " , "]) == {
        "keep-alive",
        "x-foo",
        "close",
    }


def test_s8_8_3_entity_tag_parsing():
    assert parse_entity_tag('"xyzzy"') == EntityTag('"xyzzy"', False)
    assert parse_entity_tag('W/"xyzzy"') == EntityTag('"xyzzy"', True)
    assert parse_entity_tag('""') == EntityTag('""', False)
    assert str(EntityTag('"a"', True)) == 'W/"a"'
    for bad in ["xyzzy", '"a', 'w/"a"', '"a"b"', '"a b"', "W/", ""]:
        assert parse_entity_tag(bad) is None, bad
    assert parse_entity_tags('"a", bogus, W/"b,c"') == [EntityTag('"a"', False), EntityTag('"b,c"', True)]


def test_s8_8_3_2_comparison_table():
    # RFC 9110 §8.8.3.2 example table.
    w1, w1b, w2, s1 = (parse_entity_tag(t) for t in ('W/"1"', 'W/"1"', 'W/"2"', '"1"'))
    assert (strong_match(w1, w1b), weak_match(w1, w1b)) == (False, True)
    assert (strong_match(w1, w2), weak_match(w1, w2)) == (False, False)
    assert (strong_match(w1, s1), weak_match(w1, s1)) == (False, True)
    assert (strong_match(s1, s1), weak_match(s1, s1)) == (True, True)
    assert strong_match(s1, None) is False
