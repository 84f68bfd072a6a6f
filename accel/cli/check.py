"""``accel check-config``: everything ``twistd accel`` checks before it binds its ports, then the effective
configuration, as accel will run it."""

from __future__ import annotations

import click

from accel.cli.messages import CommandError
from accel.config import AddressList, BalancerSettings, Config, ConfigError, ConfigProblems, Protection, Route
from accel.tap import checked_config


@click.command("check-config")
@click.argument("path", type=click.Path())
def check_config(path: str) -> None:
    """Check a configuration file as start-up does (certificates, cache directory, log file, endpoints;
    not binding the ports) and print the effective configuration. Exit status 1, with one line per problem,
    when accel would not start."""
    try:
        config = checked_config(path)
    except ConfigProblems as e:
        *first, last = e.problems
        for problem in first:
            click.echo(f"accel: {problem}", err=True)
        raise CommandError(str(last)) from None
    click.echo(f"{path}: OK")
    for line in describe(config):
        click.echo(line)


def describe(config: Config) -> list[str]:
    """The effective configuration, one item a line."""
    from accel.tls.certificates import listener_entries, load_certificate

    lines = ["listeners:"]
    lines += [f"  http      {d}" for d in config.listen]
    for listener in config.tls.listeners:
        try:
            names = [name for files in listener_entries(listener, config.source)
                     for name in load_certificate(files, config.source).names]
        except ConfigError as e:  # only when the checks were skipped
            names = [f"unreadable: {e}"]
        lines.append(f"  https     {listener.endpoint}  (certificates for {', '.join(dict.fromkeys(names))})")
    port = config.tls.redirect_port
    to = f"https://<host>:{port}/" if port else "https://<host>/ on the first HTTPS listener's port"
    lines += [f"  redirect  {d}  (301 to {to})" for d in config.tls.redirect_listen]
    lines.append("routes (the first group with a route for the path serves it; longest prefix first):")
    for hosts, routes in _route_groups(config.routes):
        lines.append(f"  {'host ' + ', '.join(hosts) if hosts else 'every host'}:")
        for route in routes:
            lines.append(f"    {_route(route)}")
            protection = "" if route.exclude else describe_protection(route.protection)
            if protection:
                lines.append(f"    {'':<24}    {protection}")
    for name, balancer in config.balancers.items():
        lines += _balancer(name, balancer)
    if config.balancers:
        allowed = [str(n) for n in config.status.allow] + (["unix"] if config.status.allow_unix_peers else [])
        lines.append(f"balancer manager: {config.status.path}  (for {', '.join(allowed) or 'nobody'})")
    cache = config.cache
    if cache.dir:
        lines.append(f"cache: {cache.dir}  (map {cache.map_size >> 20} MiB; memory {cache.memory_max_bytes >> 20} MiB,"
                     f" {cache.memory_max_objects} objects)")
    else:
        lines.append("cache: off (no [cache] dir)")
    log = {None: "off", "-": "standard output"}.get(config.access_log, config.access_log)
    lines.append(f"access log: {log}")
    lines += [f"error document {code}: {doc}" for code, doc in sorted(config.error_documents.items())]
    lines.append(f"shutdown timeout: {config.shutdown_timeout:g} s")
    status = config.status
    allowed = [str(n) for n in status.allow] + (["unix"] if status.allow_unix_peers else [])
    peers = [p.key for p in config.cluster.peers]
    who = ", ".join(allowed) + (" and the peers" if peers else "")
    lines.append(f"health check: {status.health_path}  (for {who or 'nobody'};"
                 f" 503 for {config.cluster.drain_delay:g} s after SIGTERM before the listeners close,"
                 f" once it has been asked for)")
    if peers:
        lines.append(f"cluster peers (every PURGE is forwarded to them): {', '.join(peers)}"
                     f"  (purge timeout {config.cluster.purge_timeout:g} s)")
    lines.append(f"workers: {config.workers}" + (" (one process serves, no supervisor)" if config.workers == 1 else
                                                 " processes, started and supervised by the first one"))
    return lines


def describe_protection(p: Protection) -> str:
    """A route's effective protection (its own keys over the [server] defaults), on one line."""

    def addresses(a: AddressList) -> str:
        return ", ".join([str(n) for n in a.networks] + (["local"] if a.local else []))

    parts = []
    if p.allow is not None:
        parts.append(f"allow {addresses(p.allow) or 'nobody'}")
    if p.deny.networks or p.deny.local:
        parts.append(f"deny {addresses(p.deny)}")
    if p.methods is not None:
        parts.append(f"methods {', '.join(p.methods)}")
    if p.max_body_size is not None:
        parts.append(f"bodies up to {p.max_body_size} bytes")
    if p.rate_limit is not None:
        r = p.rate_limit
        buckets = "server-wide" if r.scope == "server" else "this route's"
        parts.append(f"{r.requests} requests per {r.per:g} s + burst {r.burst} by {r.key} ({buckets} buckets"
                     f"{'' if r.hits_count else ', hits free'})")
    if p.headers:
        parts.append(f"{len(p.headers)} header rule(s)")
    return "; ".join(parts)


def _route_groups(routes: tuple[Route, ...]) -> list[tuple[tuple[str, ...], list[Route]]]:
    """Routes grouped by their ``hosts``, host-specific groups first, each longest prefix first."""
    groups: dict[tuple[str, ...], list[Route]] = {}
    for route in routes:
        groups.setdefault(route.hosts, []).append(route)
    ordered = sorted(groups.items(), key=lambda item: not item[0])
    return [(hosts, sorted(group, key=lambda r: len(r.prefix), reverse=True)) for hosts, group in ordered]


def _balancer(name: str, balancer: BalancerSettings) -> list[str]:
    about = [balancer.method, f"retry {balancer.retry:g} s"]
    if balancer.sticky_cookie:
        about.append(f"sticky cookie {balancer.sticky_cookie}" + (" (set by accel)" if balancer.sticky_set else ""))
    health = balancer.health
    if health is not None:
        about.append(f"health {health.method} {health.uri} every {health.interval:g} s")
    lines = [f"balancer {name}: {', '.join(about)}"]
    for member in balancer.members:
        standby = ", standby" if member.standby else ""
        lines.append(f"  route {member.route:<8} {member.origin.url}  (weight {member.weight}{standby})")
    return lines


def _route(route: Route) -> str:
    if route.exclude:
        return f"{route.prefix:<24} (excluded: 404)"
    extra = ", preserve_host" if route.preserve_host else ""
    cache = route.cache
    rules = []
    if not cache.enabled:
        rules.append("cache off")
    if cache.enabled and cache.default_ttl is not None:
        rules.append(f"default_ttl {cache.default_ttl:g} s")
    if cache.enabled and cache.max_ttl is not None:
        rules.append(f"max_ttl {cache.max_ttl:g} s")
    if cache.enabled and cache.disable:
        rules.append(f"never cached: {', '.join(cache.disable)}")
    rules = ", ".join(rules) or "cached by the responses' own rules"
    return (f"{route.prefix:<24} -> {route.origin.url}  (connect {route.connect_timeout:g}s,"
            f" response {route.response_timeout:g}s, idle {route.idle_timeout:g}s,"
            f" max {route.max_connections} connections{extra}; {rules})")
