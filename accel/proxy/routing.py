"""Routing (mod_proxy's ProxyPass inside Apache's virtual hosts): which route serves a request, by Host and
then by path prefix, and the origin path it maps to.

Host first. A route's ``hosts`` lists names ("api.example.com") and wildcards ("*.example.org", which matches
one or more labels below example.org, never example.org itself). The Host field is compared without its port,
its case and a trailing dot. The routes are tried in groups, and the first group with a route for the path wins:

1. the routes that name the host exactly;
2. the routes whose wildcard covers it, the longest wildcard first;
3. the routes without ``hosts``, which serve every host.

Then the path. Within a group the longest prefix wins. A prefix ending in "/" matches everything below it; a
prefix without a trailing slash matches that exact path and everything below it as a path segment ("/app"
matches "/app" and "/app/x", not "/application"), which is how ProxyPass behaves for the common cases.
"""

from __future__ import annotations

from collections.abc import Iterable

from accel.config import Route


def _matches(prefix: str, path: str) -> bool:
    if not path.startswith(prefix):
        return False
    return prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] in "/?"


def host_name(host: str | None) -> str:
    """A Host field value as routes compare it: no port, no trailing dot, lower case ("" when absent)."""
    if not host:
        return ""
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.rsplit(":", 1)[0].rstrip(".").lower()


def _longest_first(routes: Iterable[Route]) -> tuple[Route, ...]:
    return tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))


class RouteTable:
    """Routes grouped by host, each group ordered so its first match is the longest prefix."""

    MAX_REMEMBERED_HOSTS = 1024  # Host values whose groups are remembered (clients choose them: bounded)

    def __init__(self, routes: Iterable[Route]):
        routes = tuple(routes)
        self.routes = _longest_first(routes)
        exact: dict[str, list[Route]] = {}
        wildcard: dict[str, list[Route]] = {}
        for route in routes:
            for host in route.hosts:
                if host.startswith("*."):
                    wildcard.setdefault(host[1:], []).append(route)  # ".example.org"
                else:
                    exact.setdefault(host, []).append(route)
        self.exact = {host: _longest_first(group) for host, group in exact.items()}
        self.wildcard = {suffix: _longest_first(group) for suffix, group in wildcard.items()}
        self.every_host = _longest_first(r for r in routes if not r.hosts)
        self._groups: dict[str, tuple[tuple[Route, ...], ...]] = {}

    def groups_for(self, host: str | None) -> tuple[tuple[Route, ...], ...]:
        """The route groups for a Host field value, in the order they are tried."""
        groups = self._groups.get(host or "")
        if groups is None:
            name = host_name(host)
            found = []
            if name in self.exact:
                found.append(self.exact[name])
            dot = name.find(".")
            while dot != -1:  # "a.b.example.org": ".b.example.org", then ".example.org", then ".org"
                suffix = name[dot:]
                if suffix in self.wildcard:
                    found.append(self.wildcard[suffix])
                dot = name.find(".", dot + 1)
            found.append(self.every_host)
            groups = tuple(found)
            if len(self._groups) >= self.MAX_REMEMBERED_HOSTS:
                self._groups.clear()
            self._groups[host or ""] = groups
        return groups

    def match(self, path: str, host: str | None = None) -> Route | None:
        """The route for a request path (percent-encoding untouched) on a host (the Host field value), or None
        when nothing matches."""
        for group in self.groups_for(host):
            for route in group:
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
