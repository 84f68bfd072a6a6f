"""accel's configuration: the TOML file, its validation, and the command-line overrides.

Everything the server needs is described by the frozen dataclasses below. ``load_config`` reads a TOML
file and checks every key; a mistake raises ``ConfigError`` whose message names the file, the key (and the
line when tomllib knows it) and what was expected, so ``twistd`` and ``accel check-config`` can print one
line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A configuration mistake, worded for the operator."""

    def __init__(self, source: str, key: str, expected: str, got: object = None, line: int | None = None):
        self.source, self.key, self.expected, self.got, self.line = source, key, expected, got, line
        where = f"{source}, line {line}" if line else source
        detail = f"{where}: {key}: expected {expected}"
        if got is not None:
            detail += f", got {got!r}"
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a route's requests go: scheme, host, port and a base path that the route prefix maps onto."""

    url: str
    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def key(self) -> str:
        """Identity of the origin server (for connection pools and logs), without the path."""
        return f"{self.scheme}://{self.authority}"


@dataclass(frozen=True, slots=True)
class RouteCache:
    """A route's caching rules (CacheEnable / CacheDisable, default and maximum TTL)."""

    enabled: bool = True
    disable: tuple[str, ...] = ()  # path prefixes, or glob patterns when they contain * ? [, never cached
    default_ttl: float | None = None  # freshness for responses that state none (instead of heuristics)
    max_ttl: float | None = None  # cap on any freshness lifetime


@dataclass(frozen=True, slots=True)
class Route:
    """One ProxyPass line: requests under ``prefix`` go to ``origin`` (or nowhere, when ``exclude``)."""

    prefix: str
    origin: Origin | None = None  # None for an exclusion route (ProxyPass "!")
    preserve_host: bool = False
    connect_timeout: float = 5.0
    response_timeout: float = 60.0  # until the response header section has arrived
    idle_timeout: float = 60.0  # longest silence while a body streams in either direction
    max_connections: int = 64  # concurrent connections to this route's origin
    cache: RouteCache = RouteCache()

    @property
    def exclude(self) -> bool:
        return self.origin is None


@dataclass(frozen=True, slots=True)
class Limits:
    """Protection against oversized or abusive requests."""

    max_header_bytes: int = 16384  # request line + header section; over it: 431
    max_headers: int = 100  # header lines; over it: 431
    max_target_length: int = 8192  # request-target; over it: 414


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The ``[cache]`` table. The cache is on when it has a directory."""

    dir: str | None = None
    map_size: int = 1 << 30  # LMDB map size: the disk tier's upper bound
    memory_max_bytes: int = 64 << 20  # MCacheSize
    memory_max_objects: int = 10_000  # MCacheMaxObjectCount
    memory_min_object_size: int = 0  # MCacheMinObjectSize
    memory_max_object_size: int = 1 << 20  # MCacheMaxObjectSize
    max_object_size: int = 256 << 20  # larger responses pass through uncached
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    store_set_cookie: bool = False  # store such responses, with Set-Cookie removed
    targeted_fields: tuple[str, ...] = ("cdn-cache-control",)  # RFC 9213, in precedence order
    forward_targeted_fields: bool = False  # pass CDN-Cache-Control on to clients
    forward_tag_fields: bool = False  # pass Surrogate-Key / Cache-Tag on to clients
    grace: float = 0.0  # serve stale this long while the origin is down or erroring
    sort_query: bool = False
    drop_params: tuple[str, ...] = ()  # query parameters left out of the key (globs: utm_*)
    share_schemes: bool = False  # one entry for http:// and https:// of the same URL
    collapse_timeout: float = 30.0  # longest a request waits for a collapsed fetch
    collapse_max_waiters: int = 1000
    hit_for_miss_ttl: float = 30.0  # how long "not storable" is remembered for a URL


@dataclass(frozen=True, slots=True)
class PurgeSettings:
    """The ``[purge]`` table: who may send PURGE requests."""

    allow: tuple = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    secret_header: str = "x-purge-secret"  # checked only when a secret is set
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    source: str = "<command line>"
    listen: tuple[str, ...] = ("tcp:8080",)
    routes: tuple[Route, ...] = ()
    server_header: str | None = "accel"  # None: send no Server field
    server_names: tuple[str, ...] = ()  # hosts accepted in absolute-form targets (besides local names)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    via_pseudonym: str = "accel"
    access_log: str | None = None  # path, "-" for stdout, None for no access log
    cache: CacheSettings = CacheSettings()
    purge: PurgeSettings = PurgeSettings()
    error_documents: dict[int, str] = field(default_factory=dict)
    limits: Limits = Limits()


# ---------------------------------------------------------------------------------------------------------
# Reading values

_LIMITS = Limits()
_ROUTE = Route(prefix="/")


class _Reader:
    """Takes typed values out of one TOML table, reporting mistakes with the dotted key."""

    def __init__(self, source: str, table: dict[str, Any], path: str, text: str):
        self.source, self.table, self.path, self.text = source, table, path, text
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, expected: str, got: object = None) -> ConfigError:
        return ConfigError(self.source, self.key(name), expected, got, _line_of(self.text, name))

    def get(self, name: str, kind: type | tuple[type, ...], expected: str, default: Any = None) -> Any:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if not isinstance(value, kind) or (kind in (int, float, (int, float)) and isinstance(value, bool)):
            raise self.fail(name, expected, value)
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self.get(name, (int, float), "a number of seconds greater than 0", default)
        if value <= 0:
            raise self.fail(name, "a number of seconds greater than 0", value)
        return float(value)

    def positive_int(self, name: str, default: int) -> int:
        value = self.get(name, int, "a whole number greater than 0", default)
        if value <= 0:
            raise self.fail(name, "a whole number greater than 0", value)
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(name, (list, str), "a string or a list of strings", None)
        if value is None:
            return default
        if isinstance(value, str):
            return (value,)
        if not all(isinstance(v, str) for v in value):
            raise self.fail(name, "a list of strings", value)
        return tuple(value)

    def table_of(self, name: str) -> dict[str, Any]:
        return self.get(name, dict, "a table", {})

    def reject_unknown(self, allowed_extra: set[str] = frozenset()) -> None:
        for name in self.table:
            if name not in self.seen and name not in allowed_extra:
                raise self.fail(name, "a known key (see the configuration reference in README.md)", None)


def _line_of(text: str, name: str) -> int | None:
    """Best-effort line number of a key, for messages about values that parsed but are wrong."""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(name) and stripped[len(name) :].lstrip().startswith("="):
            return number
    return None


def parse_origin(url: str) -> Origin:
    """Split an origin URL; raises ValueError with the expectation when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("an origin URL without query, fragment or credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("an origin URL with a valid port") from None
    return Origin(url=url, scheme=parts.scheme, host=parts.hostname, port=port, base_path=parts.path or "/")


def _route(source: str, text: str, index: int, table: dict[str, Any]) -> Route:
    r = _Reader(source, table, f"route[{index}]", text)
    prefix = r.get("prefix", str, "a path prefix starting with '/'")
    if prefix is None or not prefix.startswith("/"):
        raise r.fail("prefix", "a path prefix starting with '/'", prefix)
    exclude = r.get("exclude", bool, "true or false", False)
    origin_url = r.get("origin", str, "an http:// or https:// URL")
    if exclude and origin_url is not None:
        raise r.fail("origin", "no origin on an exclusion route (exclude = true)", origin_url)
    origin = None
    if not exclude:
        if origin_url is None:
            raise r.fail("origin", "an http:// or https:// URL (or exclude = true)")
        try:
            origin = parse_origin(origin_url)
        except ValueError as e:
            raise r.fail("origin", str(e), origin_url) from None
    route = Route(
        prefix=prefix,
        origin=origin,
        preserve_host=r.get("preserve_host", bool, "true or false", False),
        connect_timeout=r.seconds("connect_timeout", _ROUTE.connect_timeout),
        response_timeout=r.seconds("response_timeout", _ROUTE.response_timeout),
        idle_timeout=r.seconds("idle_timeout", _ROUTE.idle_timeout),
        max_connections=r.positive_int("max_connections", _ROUTE.max_connections),
        cache=_route_cache(_Reader(source, r.table_of("cache"), f"route[{index}].cache", text)),
    )
    r.reject_unknown()
    return route


def _route_cache(r: _Reader) -> RouteCache:
    cache = RouteCache(
        enabled=r.get("enabled", bool, "true or false", True),
        disable=r.strings("disable"),
        default_ttl=r.get("default_ttl", (int, float), "a number of seconds", None),
        max_ttl=r.get("max_ttl", (int, float), "a number of seconds", None),
    )
    for name in ("default_ttl", "max_ttl"):
        value = getattr(cache, name)
        if value is not None and value < 0:
            raise r.fail(name, "a number of seconds, 0 or more", value)
    r.reject_unknown()
    return cache


def _cache_settings(r: _Reader) -> CacheSettings:
    d = CacheSettings()
    settings = CacheSettings(
        dir=r.get("dir", str, "a directory path"),
        map_size=r.positive_int("map_size", d.map_size),
        memory_max_bytes=r.get("memory_max_bytes", int, "a number of bytes", d.memory_max_bytes),
        memory_max_objects=r.get("memory_max_objects", int, "a whole number", d.memory_max_objects),
        memory_min_object_size=r.get("memory_min_object_size", int, "a number of bytes", d.memory_min_object_size),
        memory_max_object_size=r.get("memory_max_object_size", int, "a number of bytes", d.memory_max_object_size),
        max_object_size=r.positive_int("max_object_size", d.max_object_size),
        heuristic_fraction=r.get("heuristic_fraction", (int, float), "a fraction such as 0.1", d.heuristic_fraction),
        heuristic_max=r.get("heuristic_max", (int, float), "a number of seconds", d.heuristic_max),
        store_set_cookie=r.get("store_set_cookie", bool, "true or false", d.store_set_cookie),
        targeted_fields=tuple(f.lower() for f in r.strings("targeted_fields", d.targeted_fields)),
        forward_targeted_fields=r.get("forward_targeted_fields", bool, "true or false", d.forward_targeted_fields),
        forward_tag_fields=r.get("forward_tag_fields", bool, "true or false", d.forward_tag_fields),
        grace=r.get("grace", (int, float), "a number of seconds", d.grace),
        sort_query=r.get("sort_query", bool, "true or false", d.sort_query),
        drop_params=r.strings("drop_params"),
        share_schemes=r.get("share_schemes", bool, "true or false", d.share_schemes),
        collapse_timeout=r.seconds("collapse_timeout", d.collapse_timeout),
        collapse_max_waiters=r.positive_int("collapse_max_waiters", d.collapse_max_waiters),
        hit_for_miss_ttl=r.get("hit_for_miss_ttl", (int, float), "a number of seconds", d.hit_for_miss_ttl),
    )
    for name in ("memory_max_bytes", "memory_max_objects", "memory_min_object_size", "memory_max_object_size",
                 "heuristic_max", "grace", "hit_for_miss_ttl"):
        if getattr(settings, name) < 0:
            raise r.fail(name, "a value of 0 or more", getattr(settings, name))
    if not 0 <= settings.heuristic_fraction <= 1:
        raise r.fail("heuristic_fraction", "a fraction between 0 and 1", settings.heuristic_fraction)
    r.reject_unknown()
    return settings


def _networks(r: _Reader, name: str) -> tuple:
    nets = []
    for value in r.strings(name):
        try:
            nets.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise r.fail(name, "IP addresses or networks such as 10.0.0.0/8", value) from None
    return tuple(nets)


def parse_config(text: str, source: str) -> Config:
    """Validate a TOML document; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"\(at line (\d+), column \d+\)", str(e))
        raise ConfigError(source, "syntax", "valid TOML", str(e), int(found.group(1)) if found else None) from None
    top = _Reader(source, data, "", text)
    server = _Reader(source, top.table_of("server"), "server", text)
    listen = server.strings("listen", Config.listen)
    if not listen:
        raise server.fail("listen", "at least one listener endpoint such as tcp:8080")
    header = server.get("server_header", (str, bool), "a string, or false to send no Server field", "accel")
    if header is True:
        header = "accel"
    limits_r = _Reader(source, top.table_of("limits"), "limits", text)
    limits = Limits(
        max_header_bytes=limits_r.positive_int("max_header_bytes", _LIMITS.max_header_bytes),
        max_headers=limits_r.positive_int("max_headers", _LIMITS.max_headers),
        max_target_length=limits_r.positive_int("max_target_length", _LIMITS.max_target_length),
    )
    limits_r.reject_unknown()
    config = Config(
        source=source,
        listen=listen,
        server_header=header or None,
        server_names=server.strings("names"),
        trusted_proxies=_networks(server, "trusted_proxies"),
        via_pseudonym=server.get("via", str, "a string", "accel"),
        access_log=server.get("access_log", str, "a file path, or '-' for standard output"),
        limits=limits,
    )
    server.reject_unknown()

    routes_data = top.get("route", list, "an array of [[route]] tables", [])
    routes = []
    for i, table in enumerate(routes_data):
        if not isinstance(table, dict):
            raise top.fail("route", "[[route]] tables", table)
        routes.append(_route(source, text, i, table))
    prefixes = [r.prefix for r in routes]
    for p in prefixes:
        if prefixes.count(p) > 1:
            raise ConfigError(source, "route.prefix", "each prefix at most once", p)

    docs_r = _Reader(source, top.table_of("error_documents"), "error_documents", text)
    docs: dict[int, str] = {}
    for code, path in docs_r.table.items():
        docs_r.seen.add(code)
        if not (code.isdigit() and 400 <= int(code) <= 599):
            raise docs_r.fail(code, "an HTTP error status code between 400 and 599 as the key")
        if not isinstance(path, str):
            raise docs_r.fail(code, "the path of a file", path)
        full = path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(source)), path)
        if not os.path.isfile(full) or not os.access(full, os.R_OK):
            raise docs_r.fail(code, "a readable file", path)
        docs[int(code)] = full

    cache = _cache_settings(_Reader(source, top.table_of("cache"), "cache", text))
    purge_r = _Reader(source, top.table_of("purge"), "purge", text)
    purge = PurgeSettings(
        allow=_networks(purge_r, "allow") if "allow" in purge_r.table else PurgeSettings().allow,
        secret_header=purge_r.get("secret_header", str, "a header field name", "x-purge-secret").lower(),
        secret=purge_r.get("secret", str, "a string"),
    )
    purge_r.reject_unknown()
    top.seen.update({"server", "limits", "route", "error_documents", "cache", "purge"})
    top.reject_unknown(_TOP_EXTENSION_KEYS)
    return replace(config, routes=tuple(routes), error_documents=docs, cache=cache, purge=purge)


# Tables other parts of accel read from the same file (each validates its own).
_TOP_EXTENSION_KEYS: set[str] = {"tls"}


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ConfigError(path, "(file)", "a readable TOML file", e.strerror) from None
    except UnicodeDecodeError:
        raise ConfigError(path, "(file)", "UTF-8 text") from None
    return parse_config(text, path)


def with_overrides(
    config: Config,
    *,
    listen: tuple[str, ...] = (),
    origin: str | None = None,
    cache_dir: str | None = None,
    access_log: str | None = None,
) -> Config:
    """Apply command-line options, which win over the file."""
    changes: dict[str, Any] = {}
    if listen:
        changes["listen"] = tuple(listen)
    if origin is not None:
        try:
            parsed = parse_origin(origin)
        except ValueError as e:
            raise ConfigError("command line", "--origin", str(e), origin) from None
        others = tuple(r for r in config.routes if r.prefix != "/")
        changes["routes"] = others + (Route(prefix="/", origin=parsed),)
    if cache_dir is not None:
        changes["cache"] = replace(config.cache, dir=cache_dir)
    if access_log is not None:
        changes["access_log"] = access_log
    return replace(config, **changes)


def local_names() -> tuple[str, ...]:
    """Host names that always mean "this server" in an absolute-form request target."""
    return ("localhost", "127.0.0.1", "::1", socket.gethostname().lower())
