"""ProxyPassReverse: rewrite URLs in origin responses from the origin's URL space to the public one (pure).

A route maps the public prefix ``/shop/`` onto ``http://10.0.0.5:8000/app/``. When that origin answers
``Location: http://10.0.0.5:8000/app/cart`` the client must see ``https://www.example.com/shop/cart``.
Applied to ``Location``, ``Content-Location`` and ``URI``, and to the ``Path`` and ``Domain`` attributes of
``Set-Cookie`` (ProxyPassReverseCookiePath / ProxyPassReverseCookieDomain).
"""

from __future__ import annotations

from dataclasses import dataclass

from accel.config import Origin
from accel.headers import RawFields

_URL_FIELDS = frozenset({b"location", b"content-location", b"uri"})


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
        base_path = self.origin.base_path
        if base_path != self.prefix and value.startswith("/") and not value.startswith("//"):
            if value.startswith(base_path) or value == base_path.rstrip("/"):
                return self._public_path(value[len(base_path) :])
        return value

    def _public_path(self, rest: str) -> str:
        prefix = self.prefix if self.prefix.endswith("/") else self.prefix + "/"
        return prefix + rest.lstrip("/")

    def cookie(self, value: str) -> str:
        """Rewrite the Path and Domain attributes of one Set-Cookie value."""
        parts = value.split(";")
        public_domain = self.public_host.rsplit(":", 1)[0] if not self.public_host.startswith("[") else None
        for i, part in enumerate(parts[1:], 1):
            name, sep, attr = part.strip().partition("=")
            lname = name.lower()
            if lname == "path" and sep:
                base = self.origin.base_path
                if attr.startswith(base) or attr == base.rstrip("/"):
                    parts[i] = f" {name}={self._public_path(attr[len(base):]) if attr != base.rstrip('/') else self.prefix}"
            elif lname == "domain" and sep and public_domain:
                if attr.lstrip(".").lower() == self.origin.host.lower():
                    parts[i] = f" {name}={public_domain}"
        return ";".join(parts)


def reverse_fields(fields: RawFields, mapping: ReverseMap) -> RawFields:
    """Apply the route's ProxyPassReverse rules to a response header section."""
    out: RawFields = []
    for name, value in fields:
        lower = name.lower()
        if lower in _URL_FIELDS:
            value = mapping.url(value.decode("latin-1")).encode("latin-1")
        elif lower == b"set-cookie":
            value = mapping.cookie(value.decode("latin-1")).encode("latin-1")
        out.append((name, value))
    return out
