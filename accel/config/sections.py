"""The schema of each section: ``parse_config`` checks every table and key of a TOML document and builds the
``Config``; ``load_config`` reads the file; ``with_overrides`` applies the command-line options."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import tomllib
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from accel.config.settings import (
    ACCESS_LOG_FORMATS,
    AddressList,
    BALANCER_METHODS,
    BalancerMember,
    BalancerSettings,
    CacheSettings,
    CertificateFiles,
    ClusterSettings,
    COMMAND_LINE,
    Compress,
    Config,
    ConfigError,
    DEFAULT_LISTEN,
    DEFAULT_PORTS,
    FRAMING_NAMES,
    HeaderRule,
    HealthCheck,
    HOP_BY_HOP_NAMES,
    Limits,
    Origin,
    Protection,
    PurgeSettings,
    RateLimit,
    Route,
    RouteCache,
    StatusSettings,
    TLSListener,
    TLSSettings,
)
from accel.config.reader import (
    endpoint_relative_to_file,
    line_of,
    networks,
    path_value,
    Reader,
    relative_to_file,
    table_line,
)

_LIMITS = Limits()
_ROUTE = Route(prefix="/")


# A WebSocket origin is reached over HTTP (ws) or HTTPS (wss): the handshake is an HTTP/1.1 request.
_WEBSOCKET_SCHEMES = {"ws": "http", "wss": "https"}


def parse_origin(url: str) -> Origin:
    """Split an origin URL; raises ValueError with the expectation when it is not one. ``ws://`` and
    ``wss://`` origins are ``http`` and ``https`` ones (see ``is_websocket_origin``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", *_WEBSOCKET_SCHEMES) or not parts.hostname:
        raise ValueError("an http://, https://, ws:// or wss:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("an origin URL without query, fragment or credentials")
    scheme = _WEBSOCKET_SCHEMES.get(parts.scheme, parts.scheme)
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("an origin URL with a valid port") from None
    return Origin(url=url, scheme=scheme, host=parts.hostname, port=port, base_path=parts.path or "/")


def is_websocket_origin(url: str) -> bool:
    return urlsplit(url).scheme in _WEBSOCKET_SCHEMES


_ORIGIN = 'an http://, https://, ws:// or wss:// URL, or "balancer://NAME/"'


def parse_balancer_url(url: str) -> Origin:
    """``balancer://NAME/path``: a route to the members of ``[balancer.NAME]`` (their URLs give the base path)."""
    parts = urlsplit(url)
    if parts.scheme != "balancer" or not parts.netloc or parts.port or parts.query or parts.fragment:
        raise ValueError('"balancer://NAME/" naming a [balancer.NAME] table')
    return Origin(url=url, scheme="balancer", host=parts.netloc, port=0, base_path=parts.path or "/")


# Route prefixes and CacheDisable rules are compared with request paths in their normal form
# (accel.http.target): a configured path that is not in that form could never match.
_NOT_NORMAL = re.compile(r"//|/\.\.?(?:/|$)|[%\\#\x00-\x1f\x7f]")


_NORMAL = "without '//', '.' or '..' segments, '%', '\\', '#' or control characters"


_PREFIX = f"a path prefix starting with '/', {_NORMAL}"


def _route(source: str, text: str, index: int, table: dict[str, Any], defaults: Protection = Protection(),
           server_compress: Compress = Compress()) -> Route:
    r = Reader(source, table, f"route[{index}]", text)
    prefix = r.get("prefix", str, _PREFIX)
    if prefix is None or not prefix.startswith("/") or _NOT_NORMAL.search(prefix):
        raise r.fail("prefix", _PREFIX, prefix)
    exclude = r.get("exclude", bool, "true or false", False)
    origin_url = r.get("origin", str, _ORIGIN)
    if exclude and origin_url is not None:
        raise r.fail("origin", "no origin on an exclusion route (exclude = true)", origin_url)
    origin = None
    if not exclude:
        if origin_url is None:
            raise r.fail("origin", f"{_ORIGIN} (or exclude = true)")
        try:
            origin = parse_balancer_url(origin_url) if origin_url.startswith("balancer:") else parse_origin(origin_url)
        except ValueError as e:
            raise r.fail("origin", str(e), origin_url) from None
    route = Route(
        prefix=prefix,
        origin=origin,
        hosts=_hosts(r),
        preserve_host=r.get("preserve_host", bool, "true or false", False),
        connect_timeout=r.seconds("connect_timeout", _ROUTE.connect_timeout),
        response_timeout=r.seconds("response_timeout", _ROUTE.response_timeout),
        idle_timeout=r.seconds("idle_timeout", _ROUTE.idle_timeout),
        max_connections=r.positive_int("max_connections", _ROUTE.max_connections),
        cache=_route_cache(Reader(source, r.table_of("cache"), f"route[{index}].cache", text)),
        protection=_protection(r, defaults, scope=f"route[{index}]"),
        compress=_compress(Reader(source, r.table_of("compress"), f"route[{index}].compress", text), server_compress),
        **_route_tls(r, origin),
        **_route_websocket(r, origin_url),
    )
    r.reject_unknown()
    return route


_HOST_PATTERN = re.compile(r"^(\*\.)?([a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$")


def _hosts(r: Reader) -> tuple[str, ...]:
    """A route's ``hosts``: names ("api.example.com") or wildcards ("*.example.org"), compared without case."""
    hosts = r.strings("hosts")
    if "hosts" in r.table and not hosts:
        raise r.fail("hosts", "at least one host name (leave hosts out to serve every host)", [])
    for host in hosts:
        if not _HOST_PATTERN.match(host.lower()):
            raise r.fail("hosts", 'host names such as "api.example.com" or "*.example.org", without a port', host)
    return tuple(dict.fromkeys(h.lower() for h in hosts))


def _route_websocket(r: Reader, origin_url: str | None) -> dict[str, Any]:
    """The route's WebSocket keys: tunnelling is on for ws:// and wss:// origins, or with websocket = true."""
    implied = origin_url is not None and is_websocket_origin(origin_url)
    websocket = r.get("websocket", bool, "true or false", implied)
    if implied and not websocket:
        raise r.fail("websocket", "true (or absent) with a ws:// or wss:// origin", False)
    if websocket and origin_url is None:
        raise r.fail("websocket", "an origin on this route (an exclusion route tunnels nothing)", True)
    return {
        "websocket": websocket,
        "websocket_idle_timeout": r.seconds("websocket_idle_timeout", _ROUTE.websocket_idle_timeout),
        "websocket_max_tunnels": r.positive_int("websocket_max_tunnels", _ROUTE.websocket_max_tunnels),
    }


def _compress(r: Reader, inherited: Compress) -> Compress:
    """A ``[compress]`` table; keys it leaves out keep their ``inherited`` values (the server-wide ones)."""
    types = tuple(t.strip().lower() for t in r.strings("types", inherited.types))
    for media_type in types:
        if not re.fullmatch(r"[a-z0-9!#$&^_.+-]+/(\*|[a-z0-9!#$&^_.+-]+)", media_type):
            raise r.fail("types", 'media types such as "text/*" or "application/json"', media_type)
    compress = Compress(
        enabled=r.get("enabled", bool, "true or false", inherited.enabled),
        types=types,
        min_size=r.get("min_size", int, "a number of bytes, 0 or more", inherited.min_size),
        level=r.get("level", int, "a whole number from 1 to 9", inherited.level),
        brotli=r.get("brotli", bool, "true or false", inherited.brotli),
    )
    if compress.min_size < 0:
        raise r.fail("min_size", "a number of bytes, 0 or more", compress.min_size)
    if not 1 <= compress.level <= 9:
        raise r.fail("level", "a whole number from 1 to 9", compress.level)
    if compress.brotli and "brotli" in r.table and importlib.util.find_spec("brotli") is None:
        raise r.fail("brotli", "the brotli package installed (pip install 'accel[brotli]')", True)
    r.reject_unknown()
    return compress


def _route_tls(r: Reader, origin: Origin | None) -> dict[str, Any]:
    """The route's keys for an https:// origin: verification, CA bundle, client certificate."""
    values = {
        "tls_verify": r.get("tls_verify", bool, "true or false", True),
        "tls_ca": path_value(r, "tls_ca"),
        "tls_client_cert": path_value(r, "tls_client_cert"),
        "tls_client_key": path_value(r, "tls_client_key"),
    }
    for name in values:
        if name in r.table and (origin is None or origin.scheme != "https"):
            raise r.fail(name, "an https:// origin on this route (tls_* keys apply to HTTPS origins)", r.table[name])
    if values["tls_client_key"] and not values["tls_client_cert"]:
        raise r.fail("tls_client_key", "tls_client_cert as well (the certificate of that key)")
    if values["tls_ca"] and not values["tls_verify"]:
        raise r.fail("tls_ca", "no CA bundle when tls_verify = false (nothing would be verified)", r.table["tls_ca"])
    return values


def _certificates(r: Reader, where: str) -> tuple[CertificateFiles, ...]:
    entries = r.get("certificates", list, "an array of {cert = ..., key = ..., chain = ...} tables", [])
    out = []
    for i, entry in enumerate(entries):
        e = Reader(r.source, entry if isinstance(entry, dict) else {}, f"{where}.certificates[{i}]", r.text)
        if not isinstance(entry, dict):
            raise r.fail("certificates", "{cert = ..., key = ...} tables", entry)
        cert = path_value(e, "cert")
        if cert is None:
            raise e.fail("cert", "the path of a PEM certificate file")
        out.append(CertificateFiles(cert, path_value(e, "key"), path_value(e, "chain"),
                                    e.get("default", bool, "true or false", False), e.path))
        e.reject_unknown()
    if sum(c.default for c in out) > 1:
        raise r.fail("certificates", "at most one certificate with default = true")
    return tuple(out)


def _tls_settings(r: Reader) -> TLSSettings:
    """The ``[tls]`` table; listeners without certificates of their own use those of ``[tls]``."""
    shared_certs, shared_dir = _certificates(r, "tls"), path_value(r, "directory")
    listeners = [TLSListener(endpoint_relative_to_file(r.source, e), shared_certs, shared_dir, "tls") for e in r.strings("listen")]
    for i, table in enumerate(r.get("listener", list, "an array of [[tls.listener]] tables", [])):
        lr = Reader(r.source, table if isinstance(table, dict) else {}, f"tls.listener[{i}]", r.text)
        if not isinstance(table, dict):
            raise r.fail("listener", "[[tls.listener]] tables", table)
        endpoint = lr.get("endpoint", str, "a server endpoint such as tcp:8443")
        if not endpoint:
            raise lr.fail("endpoint", "a server endpoint such as tcp:8443")
        certs, directory = _certificates(lr, lr.path), path_value(lr, "directory")
        if not certs and directory is None:
            certs, directory = shared_certs, shared_dir
        listeners.append(TLSListener(endpoint_relative_to_file(r.source, endpoint), certs, directory, lr.path))
        lr.reject_unknown()
    for listener in listeners:
        name = "listen" if listener.where == "tls" else "endpoint"
        if listener.endpoint.split(":", 1)[0].lower() in ("ssl", "tls"):
            raise ConfigError(r.source, f"{listener.where}.{name}", "a plain endpoint such as tcp:443 (accel adds TLS itself)",
                              listener.endpoint, line_of(r.text, listener.where, name))
        if not listener.certificates and listener.directory is None:
            raise ConfigError(r.source, f"{listener.where}.certificates", "at least one certificate (certificates or directory)",
                              line=line_of(r.text, listener.where, name))
    if (shared_certs or shared_dir) and not listeners:
        raise r.fail("listen", "an HTTPS listener for the certificates (tls.listen or [[tls.listener]])")
    version = r.choice("min_version", ("1.2", "1.3"), '"1.2" or "1.3"', "1.2")
    redirect = Reader(r.source, r.table_of("redirect"), "tls.redirect", r.text)
    hsts = Reader(r.source, r.table_of("hsts"), "tls.hsts", r.text)
    settings = TLSSettings(
        listeners=tuple(listeners),
        min_version=version,
        ciphers=r.get("ciphers", str, "an OpenSSL cipher string"),
        check_interval=r.seconds("check_interval", TLSSettings().check_interval),
        redirect_listen=tuple(endpoint_relative_to_file(r.source, e) for e in redirect.strings("listen")),
        redirect_port=redirect.get("port", int, "a port number", None),
        hsts_max_age=hsts.get("max_age", int, "a number of seconds, 0 or more", None),
        hsts_include_subdomains=hsts.get("include_subdomains", bool, "true or false", False),
        hsts_preload=hsts.get("preload", bool, "true or false", False),
    )
    if settings.redirect_port is not None and not 0 < settings.redirect_port < 65536:
        raise redirect.fail("port", "a port number between 1 and 65535", settings.redirect_port)
    if settings.hsts_max_age is not None and settings.hsts_max_age < 0:
        raise hsts.fail("max_age", "a number of seconds, 0 or more", settings.hsts_max_age)
    for reader in (redirect, hsts, r):
        reader.reject_unknown()
    return settings


def _route_cache(r: Reader) -> RouteCache:
    cache = RouteCache(
        enabled=r.get("enabled", bool, "true or false", True),
        disable=r.strings("disable"),
        default_ttl=r.seconds_or_zero("default_ttl", None),
        max_ttl=r.seconds_or_zero("max_ttl", None),
        head_as_get=r.get("head_as_get", bool, "true or false", True),
    )
    for rule in cache.disable:
        if _NOT_NORMAL.search(rule) is not None:
            raise r.fail("disable", f"path prefixes or patterns {_NORMAL}", rule)
    r.reject_unknown()
    return cache


def _cache_settings(r: Reader) -> CacheSettings:
    d = CacheSettings()
    settings = CacheSettings(
        dir=path_value(r, "dir", "a directory path"),
        map_size=r.positive_int("map_size", d.map_size),
        memory_max_bytes=r.get("memory_max_bytes", int, "a number of bytes", d.memory_max_bytes),
        memory_max_objects=r.get("memory_max_objects", int, "a whole number", d.memory_max_objects),
        memory_min_object_size=r.get("memory_min_object_size", int, "a number of bytes", d.memory_min_object_size),
        memory_max_object_size=r.get("memory_max_object_size", int, "a number of bytes", d.memory_max_object_size),
        max_object_size=r.positive_int("max_object_size", d.max_object_size),
        heuristic_fraction=r.get("heuristic_fraction", (int, float), "a fraction such as 0.1", d.heuristic_fraction),
        heuristic_max=r.seconds_or_zero("heuristic_max", d.heuristic_max),
        store_set_cookie=r.choice("store_set_cookie", (False, True, "keep"), 'true, false or "keep"',
                                  d.store_set_cookie),
        targeted_fields=tuple(f.lower() for f in r.strings("targeted_fields", d.targeted_fields)),
        forward_targeted_fields=r.get("forward_targeted_fields", bool, "true or false", d.forward_targeted_fields),
        forward_tag_fields=r.get("forward_tag_fields", bool, "true or false", d.forward_tag_fields),
        grace=r.seconds_or_zero("grace", d.grace),
        sort_query=r.get("sort_query", bool, "true or false", d.sort_query),
        drop_params=r.strings("drop_params"),
        share_schemes=r.get("share_schemes", bool, "true or false", d.share_schemes),
        collapse_timeout=r.seconds("collapse_timeout", d.collapse_timeout),
        collapse_max_waiters=r.positive_int("collapse_max_waiters", d.collapse_max_waiters),
        hit_for_miss_ttl=r.seconds_or_zero("hit_for_miss_ttl", d.hit_for_miss_ttl),
        client_revalidate=r.choice("client_revalidate", ("conditional", "honour", "ignore"),
                                   '"conditional", "honour" or "ignore"', d.client_revalidate),
        min_revalidate_interval=r.seconds_or_zero("min_revalidate_interval", d.min_revalidate_interval),
        range_fetch_max=r.get("range_fetch_max", int, "a number of bytes", d.range_fetch_max),
    )
    for name in ("memory_max_bytes", "memory_max_objects", "memory_min_object_size", "memory_max_object_size"):
        if getattr(settings, name) < 0:
            raise r.fail(name, "a value of 0 or more", getattr(settings, name))
    if settings.range_fetch_max is not None and settings.range_fetch_max < 0:
        raise r.fail("range_fetch_max", "a number of bytes, 0 or more", settings.range_fetch_max)
    if not 0 <= settings.heuristic_fraction <= 1:
        raise r.fail("heuristic_fraction", "a fraction between 0 and 1", settings.heuristic_fraction)
    r.reject_unknown()
    return settings


# ---------------------------------------------------------------------------------------------------------
# Protecting the origins: access rules, methods, body size, rate limit, header rules, untrusted fields.
# The same keys in [server] (defaults; max_body_size in [limits]) and in each [[route]].

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.6.2


_FIELD_VALUE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]*$")  # RFC 9110 §5.5: no CR, LF, NUL or other controls


def _protection(r: Reader, defaults: Protection, scope: str) -> Protection:
    """The protection keys of ``r``'s table over ``defaults`` (the [server] ones, for a route): a key that is
    present replaces the default; header rules are added after the default ones. ``scope`` names the
    buckets of a rate limit set here ("server", or "route[N]": routes with one prefix on several hosts stay apart)."""
    changes: dict[str, Any] = {}
    for name in ("allow", "deny"):
        if name in r.table:
            changes[name] = AddressList(*networks(r, name, word="local"))
    if "methods" in r.table:
        methods = r.strings("methods")
        for method in methods:
            if not _TOKEN.match(method) or method != method.upper():
                raise r.fail("methods", "method names in upper case, such as GET", method)
        if "GET" in methods and "HEAD" not in methods:
            methods += ("HEAD",)  # as Apache's <Limit GET> and nginx's limit_except GET
        changes["methods"] = methods
    if scope != "server" and "max_body_size" in r.table:  # the server-wide size is in [limits]
        changes["max_body_size"] = _body_size(r)
    if "rate_limit" in r.table:
        changes["rate_limit"] = _rate_limit(r, scope)
    for name in ("strip_untrusted", "pass_untrusted"):
        if name in r.table:
            fields = r.strings(name)
            for field_name in fields:
                if not _TOKEN.match(field_name):
                    raise r.fail(name, "header field names", field_name)
            changes[name] = tuple(f.lower() for f in fields)
    r.seen.update(("allow", "deny", "methods", "strip_untrusted", "pass_untrusted"))
    changes["headers"] = defaults.headers + _header_rules(r)
    return replace(defaults, **changes)


def _body_size(r: Reader) -> int | None:
    value = r.get("max_body_size", (int, bool), "a number of bytes (0 or more), or false for no limit")
    if value is True or (not isinstance(value, bool) and value < 0):
        raise r.fail("max_body_size", "a number of bytes (0 or more), or false for no limit", value)
    return None if value is False else value


def _rate_limit(r: Reader, scope: str) -> RateLimit | None:
    expected = "a [rate_limit] table (requests, per, burst, key, hits_count), or false"
    table = r.get("rate_limit", (dict, bool), expected)
    if table is False:
        return None
    if table is True:
        raise r.fail("rate_limit", expected, table)
    t = Reader(r.source, table, r.key("rate_limit"), r.text)
    if "requests" not in table:
        raise t.fail("requests", "a whole number greater than 0 (requests per `per` seconds)")
    burst = t.get("burst", int, "a whole number, 0 or more", 0)
    if burst < 0:
        raise t.fail("burst", "a whole number, 0 or more", burst)
    key = t.get("key", str, '"client" or a request header field name', "client")
    if key != "client" and not _TOKEN.match(key):
        raise t.fail("key", '"client" or a request header field name', key)
    limit = RateLimit(
        requests=t.positive_int("requests", 1),
        per=t.seconds("per", 1.0),
        burst=burst,
        key=key if key == "client" else key.lower(),
        hits_count=t.get("hits_count", bool, "true or false", True),
        scope=scope,
    )
    t.reject_unknown()
    return limit


def _header_rules(r: Reader) -> tuple[HeaderRule, ...]:
    entries = r.get("header", list, "an array of [[header]] tables (side, action, name, value, always)", [])
    rules = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise r.fail("header", "[[header]] tables", entry)
        h = Reader(r.source, entry, f"{r.key('header')}[{i}]", r.text)
        side = h.choice("side", ("request", "response"), '"request" or "response"', None)
        action = h.choice("action", ("set", "append", "unset"), '"set", "append" or "unset"', None)
        name = h.get("name", str, "a header field name")
        if name is None or not _TOKEN.match(name):
            raise h.fail("name", "a header field name", name)
        if name.lower() in HOP_BY_HOP_NAMES | FRAMING_NAMES:
            raise h.fail("name", "an end-to-end field (hop-by-hop and framing fields are the connection's)", name)
        value = h.get("value", str, "a field value (a string)")
        if action == "unset" and value is not None:
            raise h.fail("value", "no value for action = \"unset\"", value)
        if action != "unset" and (value is None or not _FIELD_VALUE.match(value)):
            raise h.fail("value", "a field value without control characters", value)
        always = h.get("always", bool, "true or false", False)
        if always and side == "request":
            raise h.fail("always", "always only on response rules (requests have no error responses)", always)
        rules.append(HeaderRule(side, action, name, value or "", always))
        h.reject_unknown()
    return tuple(rules)


def _server_protection(server: Reader, limits: Limits) -> Protection:
    """The [server] defaults, with [limits] max_body_size."""
    return replace(_protection(server, Protection(), scope="server"), max_body_size=limits.max_body_size)


def parse_config(text: str, source: str) -> Config:
    """Validate a TOML document; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"\(at line (\d+), column \d+\)", str(e))
        raise ConfigError(source, "syntax", "valid TOML", str(e), int(found.group(1)) if found else None) from None
    top = Reader(source, data, "", text)
    server = Reader(source, top.table_of("server"), "server", text)
    listen = tuple(endpoint_relative_to_file(source, d) for d in server.strings("listen", DEFAULT_LISTEN))
    if not listen:
        raise server.fail("listen", "at least one listener endpoint such as tcp:8080")
    header = server.get("server_header", (str, bool), "a string, or false to send no Server field", "accel")
    if header is True:
        header = "accel"
    limits_r = Reader(source, top.table_of("limits"), "limits", text)
    limits = Limits(
        max_header_bytes=limits_r.positive_int("max_header_bytes", _LIMITS.max_header_bytes),
        max_headers=limits_r.positive_int("max_headers", _LIMITS.max_headers),
        max_target_length=limits_r.positive_int("max_target_length", _LIMITS.max_target_length),
        header_timeout=limits_r.seconds("header_timeout", _LIMITS.header_timeout),
        idle_timeout=limits_r.seconds("idle_timeout", _LIMITS.idle_timeout),
        max_body_size=_body_size(limits_r) if "max_body_size" in limits_r.table else None,
    )
    limits_r.reject_unknown()
    trusted_proxies, trusted_unix_peers = networks(server, "trusted_proxies")
    access_log = server.get("access_log", str, "a file path, or '-' for standard output")
    if access_log == "":
        raise server.fail("access_log", "a file path, or '-' for standard output", access_log)
    config = Config(
        source=source,
        listen=listen,
        shutdown_timeout=server.seconds("shutdown_timeout", Config().shutdown_timeout),
        server_header=header or None,
        server_names=server.strings("names"),
        trusted_proxies=trusted_proxies,
        trusted_unix_peers=trusted_unix_peers,
        via_pseudonym=server.get("via", str, "a string", "accel"),
        access_log=access_log if access_log in (None, "-") else relative_to_file(source, access_log),
        access_log_format=server.choice("access_log_format", ACCESS_LOG_FORMATS, '"combined" or "json"', "combined"),
        workers=_workers(server),
        limits=limits,
        protection=_server_protection(server, limits),
    )
    server.reject_unknown()

    compress = _compress(Reader(source, top.table_of("compress"), "compress", text), Compress())
    routes_data = top.get("route", list, "an array of [[route]] tables", [])
    routes = []
    for i, table in enumerate(routes_data):
        if not isinstance(table, dict):
            raise top.fail("route", "[[route]] tables", table)
        routes.append(_route(source, text, i, table, config.protection, compress))
    seen_routes: dict[tuple[str, str], int] = {}
    for i, route in enumerate(routes):
        for host in route.hosts or ("",):
            first = seen_routes.setdefault((host, route.prefix), i)
            if first != i:
                raise ConfigError(source, f"route[{i}].prefix", f"each prefix at most once per host (route[{first}] has it)",
                                  route.prefix, line_of(text, f"route[{i}]", "prefix"))

    docs_r = Reader(source, top.table_of("error_documents"), "error_documents", text)
    docs: dict[int, str] = {}
    for code, path in docs_r.table.items():
        docs_r.seen.add(code)
        if not (code.isdigit() and 400 <= int(code) <= 599):
            raise docs_r.fail(code, "an HTTP error status code between 400 and 599 as the key")
        if not isinstance(path, str):
            raise docs_r.fail(code, "the path of a file", path)
        full = relative_to_file(source, path)
        if not os.path.isfile(full) or not os.access(full, os.R_OK):
            raise docs_r.fail(code, "a readable file", path)
        docs[int(code)] = full

    cache = _cache_settings(Reader(source, top.table_of("cache"), "cache", text))
    purge_r = Reader(source, top.table_of("purge"), "purge", text)
    allow, allow_unix_peers = networks(purge_r, "allow", PurgeSettings().allow)
    purge = PurgeSettings(
        allow=allow,
        allow_unix_peers=allow_unix_peers,
        secret_header=purge_r.get("secret_header", str, "a header field name", "x-purge-secret").lower(),
        secret=purge_r.get("secret", str, "a string"),
    )
    purge_r.reject_unknown()
    tls = _tls_settings(Reader(source, top.table_of("tls"), "tls", text))
    _same_origin_tls(source, text, routes)
    balancers = _balancers(top)
    _routes_name_balancers(source, routes, balancers)
    status = _status_settings(Reader(source, top.table_of("status"), "status", text))
    cluster = _cluster_settings(Reader(source, top.table_of("cluster"), "cluster", text))
    top.seen.update({"server", "limits", "route", "error_documents", "cache", "purge", "tls", "compress", "status"})
    top.reject_unknown()
    return replace(config, routes=tuple(routes), error_documents=docs, cache=cache, purge=purge, tls=tls,
                   balancers=balancers, status=status, compress=compress, cluster=cluster)


# ---------------------------------------------------------------------------------------------------------
# Balancers and the status page

_CODES = 'a status class such as "2xx" or a list of status codes'


def _balancers(top: Reader) -> dict[str, BalancerSettings]:
    """Every ``[balancer.NAME]`` table."""
    out = {}
    for name, table in top.table_of("balancer").items():
        if not isinstance(table, dict):
            raise top.fail("balancer", "[balancer.NAME] tables", table)
        out[name] = _balancer(Reader(top.source, table, f"balancer.{name}", top.text), name)
    return out


def _balancer(r: Reader, name: str) -> BalancerSettings:
    method = r.choice("method", BALANCER_METHODS, " | ".join(BALANCER_METHODS), "byrequests")
    members = []
    tables = r.get("member", list, "an array of [[balancer.NAME.member]] tables", [])
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            raise r.fail("member", "[[balancer.NAME.member]] tables", table)
        members.append(_member(Reader(r.source, table, f"{r.path}.member[{i}]", r.text), i))
    if not members:
        raise r.fail("member", "at least one [[balancer.NAME.member]]")
    routes = [m.route for m in members]
    for route in routes:
        if routes.count(route) > 1:
            raise r.fail("member", "a different route for each member", route)
    if all(m.standby for m in members):
        raise r.fail("member", "at least one member that is not a standby")
    sticky_cookie = r.get("sticky_cookie", str, "a cookie name")
    sticky_set = r.get("sticky_set", bool, "true or false", False)
    if sticky_set and not sticky_cookie:
        raise r.fail("sticky_set", "sticky_cookie as well (the cookie to set)")
    retry = r.seconds_or_zero("retry", 60.0)
    health = None
    if "health" in r.table:
        health = _health(Reader(r.source, r.table_of("health"), f"{r.path}.health", r.text))
    r.reject_unknown()
    return BalancerSettings(name, tuple(members), method, sticky_cookie, sticky_set, retry, health)


def _member(r: Reader, index: int) -> BalancerMember:
    url = r.get("url", str, "an http:// or https:// URL")
    if url is None:
        raise r.fail("url", "an http:// or https:// URL")
    try:
        if urlsplit(url).scheme not in ("http", "https"):  # (parse_origin also takes ws:// and wss://)
            raise ValueError("an http:// or https:// URL")
        origin = parse_origin(url)
    except ValueError as e:
        raise r.fail("url", str(e), url) from None
    route = r.get("route", str, "a name without '.' or ';'", str(index + 1))
    if not route or not re.fullmatch(r"[A-Za-z0-9_~-]+", route):
        raise r.fail("route", "a name of letters, digits, '-', '_' or '~'", route)
    member = BalancerMember(origin, route, r.positive_int("weight", 1), r.get("standby", bool, "true or false", False))
    r.reject_unknown()
    return member


def _health(r: Reader) -> HealthCheck:
    d = HealthCheck()
    uri = r.get("uri", str, "a path starting with '/'", d.uri)
    if not uri.startswith("/") or re.search(r"[\s\x00-\x1f\x7f]", uri):
        raise r.fail("uri", "a path starting with '/', without spaces", uri)
    method = r.choice("method", ("GET", "HEAD", "OPTIONS"), "GET, HEAD or OPTIONS", d.method)
    health = HealthCheck(uri, method, r.seconds("interval", d.interval), _expected_codes(r),
                         r.positive_int("fails", d.fails), r.positive_int("passes", d.passes))
    r.reject_unknown()
    return health


def _expected_codes(r: Reader) -> frozenset[int]:
    value = r.get("expect", (str, list), _CODES, "2xx")
    codes: set[int] = set()
    for item in [value] if isinstance(value, str) else value:
        if isinstance(item, str) and re.fullmatch(r"[1-5]xx", item):
            codes.update(range(int(item[0]) * 100, int(item[0]) * 100 + 100))
        elif isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            codes.add(item)
        else:
            raise r.fail("expect", _CODES, item)
    if not codes:
        raise r.fail("expect", _CODES, value)
    return frozenset(codes)


def _routes_name_balancers(source: str, routes: list[Route], balancers: dict[str, BalancerSettings]) -> None:
    for i, route in enumerate(routes):
        if route.balancer is not None and route.balancer not in balancers:
            raise ConfigError(source, f"route[{i}].origin", f"a [balancer.{route.balancer}] table", route.origin.url)


def _status_settings(r: Reader) -> StatusSettings:
    expected = f"a path starting (and not ending) with '/', {_NORMAL}"
    paths = {}
    for name in ("path", "metrics_path", "health_path"):
        path = r.get(name, str, expected, getattr(StatusSettings(), name))
        if not path.startswith("/") or path.endswith("/") or _NOT_NORMAL.search(path):
            raise r.fail(name, expected, path)
        paths[name] = path
    if len(set(paths.values())) != len(paths):
        raise r.fail("metrics_path", "path, metrics_path and health_path all different", list(paths.values()))
    allow, allow_unix_peers = networks(r, "allow", StatusSettings().allow)
    metrics = r.get("metrics", bool, "true or false", StatusSettings().metrics)
    r.reject_unknown()
    return StatusSettings(paths["path"], paths["metrics_path"], allow, allow_unix_peers, paths["health_path"], metrics)


_PEER = "a list of peer URLs such as http://10.0.0.2:8080 (scheme, host and port only)"


def _cluster_settings(r: Reader) -> ClusterSettings:
    peers = []
    for url in r.strings("peers"):
        try:
            peer = parse_origin(url)
        except ValueError:
            raise r.fail("peers", _PEER, url) from None
        if peer.base_path != "/" or "?" in url:
            raise r.fail("peers", _PEER, url)
        peers.append(peer)
    if len({p.key for p in peers}) != len(peers):
        raise r.fail("peers", "each peer once", list(r.strings("peers")))
    settings = ClusterSettings(tuple(peers), r.seconds("purge_timeout", ClusterSettings().purge_timeout),
                               r.seconds_or_zero("drain_delay", ClusterSettings().drain_delay))
    r.reject_unknown()
    return settings


WORKERS_EXPECTED = 'a whole number of worker processes greater than 0, or "auto" (one per CPU)'


def parse_workers(value: object) -> int:
    """``workers = N`` or ``"auto"``; raises ValueError with the expectation otherwise."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(WORKERS_EXPECTED)
    return value


def _workers(r: Reader) -> int:
    value = r.get("workers", (int, str), WORKERS_EXPECTED, 1)
    try:
        return parse_workers(value)
    except ValueError:
        raise r.fail("workers", WORKERS_EXPECTED, value) from None


def _same_origin_tls(source: str, text: str, routes: list[Route]) -> None:
    """Routes to one https origin share its connections, so they must agree on how to verify it."""
    seen: dict[str, tuple] = {}
    for i, route in enumerate(routes):
        if route.origin is not None and route.origin.scheme == "https":
            settings = (route.tls_verify, route.tls_ca, route.tls_client_cert, route.tls_client_key)
            if seen.setdefault(route.origin.key, settings) != settings:
                raise ConfigError(source, f"route[{i}].tls_*", f"the same tls_* keys on every route to {route.origin.key}",
                                  line=table_line(text, f"route[{i}]"))


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
    workers: str | None = None,
) -> Config:
    """Apply command-line options, which win over the file; their relative paths are relative to the working
    directory."""
    changes: dict[str, Any] = {}
    options: list[str] = list(config.overridden_by)
    if listen:
        changes["listen"] = tuple(listen)
        options.append("--listen")
    if origin is not None:
        options.append("--origin")
        try:
            parsed = parse_origin(origin)
        except ValueError as e:
            raise ConfigError(COMMAND_LINE, "--origin", str(e), origin) from None
        others = tuple(r for r in config.routes if r.prefix != "/" or r.hosts)
        changes["routes"] = others + (Route(prefix="/", origin=parsed, protection=config.protection,
                                            compress=config.compress, websocket=is_websocket_origin(origin)),)
    if cache_dir is not None:
        changes["cache"] = replace(config.cache, dir=os.path.abspath(cache_dir))
        options.append("--cache-dir")
    if access_log is not None:
        changes["access_log"] = access_log if access_log == "-" else os.path.abspath(access_log)
        options.append("--access-log")
    if workers is not None:
        try:
            changes["workers"] = parse_workers(workers)
        except ValueError as e:
            raise ConfigError(COMMAND_LINE, "--workers", str(e), workers) from None
        options.append("--workers")
    return replace(config, overridden_by=tuple(options), **changes)


def local_names() -> tuple[str, ...]:
    """Host names that always mean "this server" in an absolute-form request target."""
    return ("localhost", "127.0.0.1", "::1", socket.gethostname().lower())
