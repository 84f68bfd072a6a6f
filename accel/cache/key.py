"""Primary cache keys: which stored responses belong to a request's target URI (RFC 9111 §2).

On a route that preserves the client's Host (``preserve_host = true``) the key is the client's URL. On any
other route the origin receives its own authority whatever the client's Host, so it cannot answer two host
aliases differently: the key is then the URL accel asks the origin for (``route_cache_key``), under the
client's scheme — ``http://10.0.0.5:8080/app/x`` — or, for a ``balancer://NAME`` route, under the balancer's
name — ``http://name/x`` — and every alias of the route shares one entry (nginx's default key,
``$scheme$proxy_host$request_uri``, with the path the origin gets).

The key is built with only the normalisations that cannot merge two
resources an origin may tell apart (RFC 9110 §4.2.3): lower-case scheme and host,
no default port, "/" for an empty path, no fragment. The path arrives normalised
already (``accel.http.target``: the one form routing and forwarding use too). Operator-chosen query
rewriting (dropping tracking parameters, sorting parameters) is opt-in.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Mapping
from urllib.parse import urlsplit

from accel.config import DEFAULT_PORTS, Origin, Route
from accel.http.addresses import split_authority
from accel.proxy.routing import RouteTable, origin_target


def _origin(scheme: str, host: str, default_port_for_scheme: Mapping[str, int]) -> str:
    """``scheme://host[:port]``: lower-case, default or empty port omitted (RFC 9110 §4.2.3)."""
    scheme = scheme.lower()
    host, port = split_authority(host.lower())
    if port and port.isdigit() and int(port) == default_port_for_scheme.get(scheme):
        port = ""
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


def _rewrite_query(query: str, sort_query: bool, drop_params: tuple[str, ...]) -> str | None:
    """Drop parameters whose raw name matches a pattern (fnmatch, case-sensitive) and optionally
    sort the rest by name, stably; raw encoding is kept. None when no parameter is left."""
    params = [param for param in query.split("&") if param]
    if drop_params:
        params = [p for p in params if not any(fnmatchcase(p.partition("=")[0], pat) for pat in drop_params)]
    if sort_query:
        params.sort(key=lambda param: param.partition("=")[0])
    return "&".join(params) if params else None


def cache_key(
    scheme: str,
    host: str,
    path_and_query: str,
    *,
    default_port_for_scheme: Mapping[str, int] = DEFAULT_PORTS,
    sort_query: bool = False,
    drop_params: Iterable[str] = (),
) -> str:
    """``scheme://host[:port]/path[?query]`` for a request target in origin-form.

    The path is kept byte for byte. Without ``sort_query``/``drop_params`` the query
    is kept as received (an empty query "?" stays); with them, empty parameters are
    dropped and a query left empty disappears.
    """
    path_and_query = path_and_query.partition("#")[0]
    path, has_query, query = path_and_query.partition("?")
    drop = tuple(drop_params)
    key = _origin(scheme, host, default_port_for_scheme) + (path or "/")
    if not has_query:
        return key
    if sort_query or drop:
        rewritten = _rewrite_query(query, sort_query, drop)
        return key if rewritten is None else f"{key}?{rewritten}"
    return f"{key}?{query}"


def url_prefix_key(
    scheme: str, host: str, path_prefix: str, *, default_port_for_scheme: Mapping[str, int] = DEFAULT_PORTS
) -> str:
    """Key prefix covering every key under ``path_prefix`` on this origin (purge by prefix).

    The prefix always contains the "/" after the authority, so ``example.com`` never
    covers ``example.com.evil`` or ``example.com:8080``.
    """
    if not path_prefix.startswith("/"):
        path_prefix = "/" + path_prefix
    return _origin(scheme, host, default_port_for_scheme) + path_prefix


def origin_authority(origin: Origin) -> str:
    """The authority a non-preserve-host route's keys use: ``host:port`` of the origin (its port always
    written, so that ``cache_key`` drops it only when it is the default of the key's scheme and http://o and
    https://o stay apart), or a balancer's name."""
    if origin.scheme == "balancer":
        return origin.host.lower()
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    return f"{host}:{origin.port}".lower()


def route_cache_key(scheme: str, host: str, target: str, route: Route | None, **options) -> str:
    """The primary key of ``target`` (origin-form) requested with Host ``host`` and served by ``route``: the
    client's URL when the route preserves the Host (or there is no route), else the origin's (see above)."""
    if route is None or route.origin is None or route.preserve_host:
        return cache_key(scheme, host, target, **options)
    return cache_key(scheme, origin_authority(route.origin), origin_target(route, target), **options)


def route_prefix_key(scheme: str, host: str, path_prefix: str, route: Route | None) -> str:
    """``url_prefix_key`` of the keys ``route_cache_key`` gives the paths under ``path_prefix`` (a path under
    ``route``'s prefix, or the prefix itself)."""
    if route is None or route.origin is None or route.preserve_host:
        return url_prefix_key(scheme, host, path_prefix)
    return url_prefix_key(scheme, origin_authority(route.origin), origin_target(route, path_prefix))


def route_of_key(key: str, routes: RouteTable) -> Route | None:
    """The route whose responses are stored under ``key`` (the inverse of ``route_cache_key``, for tools that
    read the keys): a route that does not preserve the Host when the key is in its origin's URL space (the
    longest base path wins), else the route the key's URL itself is routed to."""
    parts = urlsplit(key)
    path = parts.path or "/"
    origin = _origin(parts.scheme, parts.netloc, DEFAULT_PORTS)
    best, best_base = None, ""
    for route in routes.routes:
        if route.origin is None or route.preserve_host:
            continue
        if _origin(parts.scheme, origin_authority(route.origin), DEFAULT_PORTS) != origin:
            continue
        base = origin_target(route, route.prefix).partition("?")[0]
        under = path.startswith(base) and (base.endswith("/") or len(path) == len(base) or path[len(base)] == "/")
        if under and (best is None or len(base) > len(best_base)):
            best, best_base = route, base
    if best is not None:
        return best
    return routes.match(path + (f"?{parts.query}" if parts.query else ""), parts.netloc)
