"""The HTTP side of SSL offload: the plain-HTTP listener that redirects to HTTPS, and HSTS.

The redirect answers every request with ``301 Moved Permanently`` (``308 Permanent Redirect`` for methods
other than GET and HEAD, so that a POST is not turned into a GET) to the same host, path and query on
``https://``. ``Strict-Transport-Security`` goes on every response sent over TLS, never over plain HTTP
(RFC 6797 §7.2), and replaces one the origin may have sent.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from twisted.web.resource import Resource

from accel.config import Config, TLSSettings
from accel.http.addresses import split_authority

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+$|^\[[0-9A-Fa-f:.]+\]$")
_PORT = re.compile(r"^(?:tcp6?):(?:port=)?(\d+)(?::|$)|^(?:tcp6?):.*?:port=(\d+)(?::|$)")


class RedirectToHTTPS(Resource):
    """Sends every request to the same URL on https://."""

    isLeaf = True

    def __init__(self, https_port: int = 443, fallback_host: str = "localhost"):
        super().__init__()
        self.port_suffix = "" if https_port == 443 else f":{https_port}"
        self.fallback_host = fallback_host

    def render(self, request) -> bytes:
        target = request.uri.decode("latin-1")
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if not target.startswith("/"):  # absolute-form (or "*"): take its authority and path
            parts = urlsplit(target)
            host = parts.netloc or host
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        hostname = _hostname(host) if host else self.fallback_host
        if hostname is None:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain")
            return b"400 Bad Request: invalid Host\n"
        location = f"https://{hostname}{self.port_suffix}{target}"
        request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
        request.setHeader(b"location", location.encode("latin-1"))
        request.setHeader(b"content-type", b"text/plain")
        return f"Moved to {location}\n".encode("latin-1")


def _hostname(host: str) -> str | None:
    """The host of a Host field without its port; None when it is not a plausible host name."""
    name = split_authority(host.strip())[0]
    return name.lower() if name and _HOST.match(name) else None


def endpoint_port(description: str) -> int | None:
    """The port number of a tcp:/tcp6: endpoint description, when it has one."""
    found = _PORT.match(description)
    if not found:
        return None
    return int(found.group(1) or found.group(2)) or None


def redirect_port(settings: TLSSettings) -> int:
    if settings.redirect_port is not None:
        return settings.redirect_port
    for listener in settings.listeners:
        port = endpoint_port(listener.endpoint)
        if port:
            return port
    return 443


def redirect_site(config: Config, reactor):
    """The Site of the redirect listeners (accel's strict HTTP parsing and limits, no access log)."""
    from accel.http.server import AccelSite

    fallback = (config.server_names or ("localhost",))[0]
    return AccelSite(
        RedirectToHTTPS(redirect_port(config.tls), fallback),
        limits=config.limits,
        server_header=config.server_header,
        reactor=reactor,
    )


def hsts_value(settings: TLSSettings) -> bytes:
    value = f"max-age={settings.hsts_max_age}"
    if settings.hsts_include_subdomains:
        value += "; includeSubDomains"
    if settings.hsts_preload:
        value += "; preload"
    return value.encode("ascii")


def with_hsts(request_factory, value: bytes):
    """A request class that adds ``Strict-Transport-Security: value`` to its response when sent over TLS."""

    field = b"Strict-Transport-Security: %s\r\n" % value

    class HSTSRequest(request_factory):
        def write(self, data: bytes) -> None:
            if not self.startedWriting and self.isSecure():
                self.responseHeaders.setRawHeaders(b"strict-transport-security", [value])
            super().write(data)

        def write_prepared(self, code, reason, section, taken, replaced, body) -> bool:
            """As ``write`` does: the field goes last, or replaces the stored one (the general path's job)."""
            if not self.isSecure():
                return super().write_prepared(code, reason, section, taken, replaced, body)
            if b"Strict-Transport-Security" in taken:
                return False
            return super().write_prepared(code, reason, section[:-2] + field + b"\r\n", taken, replaced, body)

    HSTSRequest.__name__ = HSTSRequest.__qualname__ = f"HSTS{request_factory.__name__}"
    return HSTSRequest
