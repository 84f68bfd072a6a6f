"""The header fields of a request and its response, as twisted.web's ``Headers`` with the common case inline.

A proxied request reads and writes some thirty header fields on its way (the client's, Server, Date,
Cache-Status, the origin's...). ``Headers`` handles each one in four or five calls: it canonicalises the
name (a cache lookup behind a method call), checks the types of the name and of every value, and removes
line breaks from every value. ``HeaderTable`` does the same in one call when the name and the value are
bytes and the value holds no CR or LF (one value at a time), which is nearly always; anything else goes to
``Headers`` unchanged, so the stored form, the canonical names and the protection against header
injection are Twisted's.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers

# Byte values, not one-byte strings: in CPython 3.11 ``b"\n" in value`` first tries the operand as an integer and
# formats a TypeError it then discards (about 0.4 µs); ``10 in value`` is a memchr.
_LF, _CR = ord("\n"), ord("\r")

_CANONICAL: dict[bytes, bytes] = {}  # a field name as given → the name Headers stores it under
_CANONICAL_REMEMBERED = 4096  # distinct spellings remembered (more come only from clients' odd fields)


def canonical(name: bytes) -> bytes:
    """The key ``Headers`` stores ``name`` under (it raises for a name that is not a token): asked of
    ``Headers`` itself, as Twisted versions differ (lower case, or Header-Case)."""
    found = _CANONICAL.get(name)
    if found is None:
        probe = Headers()
        probe.setRawHeaders(name, [b""])
        found = next(iter(probe._rawHeaders))
        if len(_CANONICAL) < _CANONICAL_REMEMBERED:
            _CANONICAL[name] = found
    return found


class HeaderTable(Headers):
    __slots__ = ()

    def hasHeader(self, name) -> bool:
        if type(name) is bytes:
            return (_CANONICAL.get(name) or canonical(name)) in self._rawHeaders
        return super().hasHeader(name)

    def getRawHeaders(self, name, default=None):
        if type(name) is bytes:
            return self._rawHeaders.get(_CANONICAL.get(name) or canonical(name)) or default
        return super().getRawHeaders(name, default)

    def setRawHeaders(self, name, values) -> None:
        if type(name) is bytes and type(values) is list and len(values) == 1:
            value = values[0]
            if type(value) is bytes and _LF not in value and _CR not in value:
                self._rawHeaders[_CANONICAL.get(name) or canonical(name)] = [value]
                return
        super().setRawHeaders(name, values)

    def addRawHeader(self, name, value) -> None:
        self.add_fields(((name, value),))

    def set_fields(self, fields) -> None:
        """``setRawHeaders(name, [value])`` for each ``(name, value)`` pair: a response's own fields (Server,
        Date...) in one call."""
        table = self._rawHeaders
        for name, value in fields:
            if type(name) is bytes and type(value) is bytes and _LF not in value and _CR not in value:
                table[_CANONICAL.get(name) or canonical(name)] = [value]
            else:
                super().setRawHeaders(name, [value])

    def add_fields(self, fields) -> None:
        """``addRawHeader`` for each ``(name, value)`` pair, in order: a request's fields as received, or an
        origin response's, in one call."""
        table = self._rawHeaders
        for name, value in fields:
            if type(name) is bytes and type(value) is bytes and _LF not in value and _CR not in value:
                key = _CANONICAL.get(name) or canonical(name)
                values = table.get(key)
                if values is None:
                    table[key] = [value]
                else:
                    values.append(value)
            else:
                super().addRawHeader(name, value)

    def last(self, name: bytes) -> bytes | None:
        """The last value of field ``name`` (a request's ``getHeader``), None when absent."""
        values = self._rawHeaders.get(_CANONICAL.get(name) or canonical(name))
        return values[-1] if values else None

    def removeHeader(self, name) -> None:
        if type(name) is bytes:
            self._rawHeaders.pop(_CANONICAL.get(name) or canonical(name), None)
        else:
            super().removeHeader(name)
