"""ProxyPassReverse: rewrite URLs in origin responses from the origin's URL space to the public one (pure).

A route maps the public prefix ``/shop/`` onto ``http://10.0.0.5:8000/app/``. When that origin answers
``Location: http://10.0.0.5:8000/app/cart`` the client must see ``https://www.example.com/shop/cart``.
Applied to ``Location``, ``Content-Location`` and ``URI``, and to the ``Path`` and ``Domain`` attributes of
``Set-Cookie`` (ProxyPassReverseCookiePath / ProxyPassReverseCookieDomain).

The cache stores these fields as the origin sent them and rewrites them for each client it serves
(``reverse_text_fields``): host aliases share entries, and each must see its own host.
"""

from __future__ import annotations

from dataclasses import dataclass

from accel.config import Origin
from accel.http.addresses import split_authority
from accel.http.headers import RawFields

_URL_FIELDS = frozenset({b"location", b"content-location", b"uri"})
# Lower-case names of the fields ProxyPassReverse rewrites.
REVERSED_NAMES = frozenset(name.decode("latin-1") for name in _URL_FIELDS) | {"set-cookie"}
_REVERSED_RAW = frozenset(name.encode("latin-1") for name in REVERSED_NAMES)


@dataclass(frozen=True, slots=True)
class ReverseMap:
    """The two URL spaces of one route."""

    origin: Origin
    prefix: str  # public path prefix of the route
    public_scheme: str
    public_host: str  # as the client named us (Host field), port included when not default

    def _origin_bases(self) -> list[str]:
        bases = [f"{self.origin.scheme}://{self.origin.authority}{self.origin.base_path}"]
        if self.origin.authority != f"{self.origin.host}:{self.origin.port}":
            bases.append(f"{self.origin.scheme}://{self.origin.host}:{self.origin.port}{self.origin.base_path}")
        return bases

    def url(self, value: str) -> str:
        """Rewrite one URL or absolute path; anything outside the origin's space is returned unchanged."""
        for base in self._origin_bases():
            if value.startswith(base) or value == base.rstrip("/"):
                return f"{self.public_scheme}://{self.public_host}{self._public_path(value[len(base):])}"
        if self.origin.base_path != self.prefix and value.startswith("/") and not value.startswith("//"):
            return self.path(value) or value
        return value

    def path(self, value: str) -> str | None:
        """The public form of an origin path, or None when the path is outside the route's base path."""
        base = self.origin.base_path
        if value.startswith(base) or value == base.rstrip("/"):
            return self._public_path(value[len(base) :])
        return None

    def _public_path(self, rest: str) -> str:
        prefix = self.prefix if self.prefix.endswith("/") else self.prefix + "/"
        return prefix + rest.lstrip("/")

    def cookie(self, value: str) -> str:
        """Rewrite the Path and Domain attributes of one Set-Cookie value."""
        parts = value.split(";")
        public_domain = None if self.public_host.startswith("[") else split_authority(self.public_host)[0]
        for i, part in enumerate(parts[1:], 1):
            name, sep, attr = part.strip().partition("=")
            if not sep:
                continue
            if name.lower() == "path" and (public := self.path(attr)) is not None:
                parts[i] = f" {name}={public}"
            elif name.lower() == "domain" and public_domain and attr.lstrip(".").lower() == self.origin.host.lower():
                parts[i] = f" {name}={public_domain}"
        return ";".join(parts)


    def value(self, name: str, value: str) -> str:
        """A field's value (``name`` in lower case) as the client must see it."""
        if name == "set-cookie":
            return self.cookie(value)
        return self.url(value) if name in REVERSED_NAMES else value


def reverse_fields(fields: RawFields, mapping: ReverseMap) -> RawFields:
    """Apply the route's ProxyPassReverse rules to a response header section."""
    out: RawFields = []
    for name, value in fields:
        lower = name.lower()
        if lower in _REVERSED_RAW:
            value = mapping.value(lower.decode("latin-1"), value.decode("latin-1")).encode("latin-1")
        out.append((name, value))
    return out


def any_reversed(fields: RawFields) -> bool:
    """Whether ``reverse_fields`` may change one of ``fields``."""
    for name, _ in fields:
        if name.lower() in _REVERSED_RAW:
            return True
    return False


def reverse_text_fields(fields: tuple[tuple[str, str], ...], mapping: ReverseMap) -> tuple[tuple[str, str], ...]:
    """``reverse_fields`` of fields as the cache stores them (lower-case str names, str values)."""
    return tuple((name, mapping.value(name, value) if name in REVERSED_NAMES else value) for name, value in fields)


def needs_reverse(fields: tuple[tuple[str, str], ...]) -> bool:
    """Whether stored fields (lower-case names) hold one ProxyPassReverse may rewrite."""
    return any(name in REVERSED_NAMES for name, _ in fields)
