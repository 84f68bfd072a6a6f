"""Path-prefix routing (mod_proxy's ProxyPass): which route serves a request, and the origin path it maps to.

Longest prefix wins. A prefix ending in "/" matches everything below it; a prefix without a trailing slash
matches that exact path and everything below it as a path segment ("/app" matches "/app" and "/app/x", not
"/application"), which is how ProxyPass behaves for the common cases.
"""

from __future__ import annotations

from collections.abc import Iterable

from accel.config import Route


def _matches(prefix: str, path: str) -> bool:
    if not path.startswith(prefix):
        return False
    return prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] in "/?"


class RouteTable:
    """Routes ordered so the first match is the longest prefix."""

    def __init__(self, routes: Iterable[Route]):
        self.routes = tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))

    def match(self, path: str) -> Route | None:
        """The route for a request path (percent-encoding untouched), or None when nothing matches."""
        for route in self.routes:
            if _matches(route.prefix, path):
                return route
        return None


def origin_target(route: Route, target: str) -> str:
    """The request-target to send upstream: the route prefix replaced by the origin's base path.

    ``target`` is the client's origin-form target (path and query). "/api/users/42?x=1" through the route
    "/api/users/" → "http://users:9001/v1/" becomes "/v1/42?x=1".
    """
    assert route.origin is not None
    rest = target[len(route.prefix) :]
    base = route.origin.base_path
    if base.endswith("/") and rest.startswith("/"):
        rest = rest[1:]
    elif not base.endswith("/") and rest and not rest.startswith(("/", "?")):
        rest = "/" + rest
    joined = base + rest
    return joined if joined.startswith("/") else "/" + joined
