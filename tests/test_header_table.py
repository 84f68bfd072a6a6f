"""HeaderTable behaves as twisted.web's Headers, whatever it is given (accel.http.header_table)."""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers, InvalidHeaderName

from accel.http.header_table import HeaderTable


def both():
    return Headers(), HeaderTable()


def same(reference: Headers, table: HeaderTable) -> None:
    assert list(table.getAllRawHeaders()) == list(reference.getAllRawHeaders())


@pytest.mark.parametrize("name", [b"content-type", b"Content-Type", b"CONTENT-TYPE", b"etag", b"x-xss-protection",
                                  "Content-Type", "www-authenticate"])
def test_names_are_stored_and_found_as_headers_does(name):
    reference, table = both()
    for headers in (reference, table):
        headers.setRawHeaders(name, [b"a"] if isinstance(name, bytes) else ["a"])
        headers.addRawHeader(name, b"b" if isinstance(name, bytes) else "b")
    same(reference, table)
    for probe in (name, b"content-type", b"Etag"):
        assert table.getRawHeaders(probe) == reference.getRawHeaders(probe)
        assert table.hasHeader(probe) == reference.hasHeader(probe)
    table.removeHeader(name)
    reference.removeHeader(name)
    same(reference, table)


@pytest.mark.parametrize("value", [b"a\r\nSet-Cookie: injected=1", b"a\nb", b"a\rb", "caf\u00e9"])
def test_values_with_line_breaks_or_text_are_handled_as_headers_does(value):
    reference, table = both()
    for headers in (reference, table):
        headers.addRawHeader(b"x-test", value)
        headers.setRawHeaders(b"x-set", [b"plain", value])
    same(reference, table)
    assert all(b"\n" not in v and b"\r" not in v for _, values in table.getAllRawHeaders() for v in values)


def test_values_given_as_a_generator_are_all_kept():
    reference, table = both()
    for headers in (reference, table):
        headers.setRawHeaders(b"x-many", (v for v in [b"1", b"2"]))
    same(reference, table)
    assert table.getRawHeaders(b"x-many") == [b"1", b"2"]


def test_a_name_that_is_not_a_token_is_refused_as_headers_does():
    for headers in both():
        with pytest.raises(InvalidHeaderName):
            headers.addRawHeader(b"bad name", b"v")
        with pytest.raises(InvalidHeaderName):
            headers.setRawHeaders(b"bad\x00name", [b"v"])


def test_missing_and_empty_fields_give_the_default():
    table = HeaderTable()
    assert table.getRawHeaders(b"absent") is None
    assert table.getRawHeaders(b"absent", []) == []
    table.setRawHeaders(b"empty", [])
    assert table.getRawHeaders(b"empty", b"default") == b"default"
    assert table.hasHeader(b"empty") == Headers({b"empty": []}).hasHeader(b"empty")
