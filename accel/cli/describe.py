"""Describing stored entries for people and scripts: durations, sizes, times, freshness and why, tables."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import datetime

import click

from accel.cache.entry import EntryHead
from accel.cache.fields import get_all
from accel.cache.policy import (
    HEURISTICALLY_CACHEABLE,
    CachePolicy,
    StoredResponse,
    freshness_lifetime,
    response_directives,
)
from accel.cache.store import DiskStore

PROGRESS_THRESHOLD = 2000  # entries; below this a listing is quick enough without a bar


def duration(seconds: float) -> str:
    seconds = int(round(abs(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{m:02d}m"
    days, h = divmod(hours, 24)
    return f"{days}d{h:02d}h"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def when(timestamp: float) -> str:
    """A stored time in ISO 8601 with the local offset: 2026-03-01T10:12:04+01:00."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def stored_response(head: EntryHead) -> StoredResponse:
    return StoredResponse(
        status=head.status, fields=head.fields, request_time=head.request_time, response_time=head.response_time,
        initial_age=head.initial_age, vary_names=head.vary_names, secondary_key=head.secondary_key,
        stale_marked=head.stale_marked, body_length=head.body_length,
    )


def freshness(head: EntryHead, policy: CachePolicy, now: float) -> dict:
    """Age, freshness lifetime and whether the entry is fresh, with the reason (RFC 9111 §4.2)."""
    fields = head.fields
    age = stored_response(head).age(now)
    lifetime = freshness_lifetime(head.status, fields, policy, response_time=head.response_time)
    uncapped = freshness_lifetime(head.status, fields, replace(policy, max_ttl=None), response_time=head.response_time)
    cc, source = response_directives(fields, policy)
    where = "" if source == "cache-control" else f" in {source}"
    if cc.s_maxage is not None:
        basis = f"s-maxage={cc.s_maxage}{where}"
    elif cc.max_age is not None:
        basis = f"max-age={cc.max_age}{where}"
    elif source == "cache-control" and get_all(fields, "expires"):
        basis = "Expires - Date"
    elif head.status not in HEURISTICALLY_CACHEABLE and not cc.public:
        basis = f"no explicit freshness, and status {head.status} gets no heuristic freshness"
    elif policy.default_ttl is not None:
        basis = "the route's default_ttl (no explicit freshness)"
    elif get_all(fields, "last-modified"):
        basis = f"heuristic: {policy.heuristic_fraction:g} of the time since Last-Modified"
    else:
        basis = "no explicit freshness and no Last-Modified"
    if uncapped != lifetime:
        basis += f", capped by the route's max_ttl ({policy.max_ttl:g}s)"
    ttl = lifetime - age
    fresh = False
    if head.stale_marked:
        why = "stale: marked by a soft purge; revalidated with the origin before it is used"
    elif cc.no_cache:
        why = "stale: no-cache; revalidated with the origin on every use"
    elif ttl > 0:
        fresh = True
        why = f"fresh for {duration(ttl)} more ({basis})"
    else:
        why = f"stale by {duration(-ttl)} ({basis})"
        if cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None:
            why += "; must be revalidated before use"
        elif cc.stale_while_revalidate is not None and -ttl <= cc.stale_while_revalidate:
            left = cc.stale_while_revalidate + ttl
            why += f"; may be served while revalidating for {duration(left)} more (stale-while-revalidate)"
        else:
            why += "; revalidated with the origin on the next request"
    return {
        "age": round(age, 3),
        "lifetime": round(lifetime, 3),
        "lifetime_basis": basis,
        "ttl": round(ttl, 3),
        "expires_at": round(head.response_time - head.initial_age + lifetime, 3),
        "fresh": fresh,
        "stale_marked": head.stale_marked,
        "why": why,
    }


def secondary_key_fields(head: EntryHead) -> list[list]:
    """The Vary request fields and the values this variant was stored for ([name, value or None])."""
    try:
        entries = json.loads(head.secondary_key) if head.secondary_key else []
        if isinstance(entries, list) and all(isinstance(e, list) and len(e) == 2 for e in entries):
            return entries
    except ValueError:
        pass
    return [["(secondary key)", head.secondary_key]]


def url_groups(disk: DiskStore, prefix: str):
    """(url, [heads]) for stored URLs starting with `prefix`, in key order. A `prefix` starting with "/" is a
    path: it matches URLs of every host and scheme whose path starts with it."""
    url, heads = None, []
    if prefix.startswith("/"):
        stored = (head for head in disk.iter_heads() if _path_of(head.url).startswith(prefix))
    else:
        stored = disk.iter_heads(prefix)
    for head in stored:
        if head.url != url and heads:
            yield url, heads
            heads = []
        url = head.url
        heads.append(head)
    if heads:
        yield url, heads


def _path_of(url: str) -> str:
    """The path and query of a stored URL ("http://host/a?b" → "/a?b")."""
    slash = url.find("/", url.find("://") + 3)
    return url[slash:] if slash != -1 else "/"


def progress(total: int, label: str):
    """A progress bar on standard error, for work over many entries (a no-op context for little work)."""
    if total < PROGRESS_THRESHOLD:
        return _NoBar()
    return click.progressbar(length=total, label=label, file=sys.stderr)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        click.echo("  ".join(cells).rstrip())


def pair(label: str, value: str) -> None:
    click.echo(f"  {label + ':':<15}{value}")


def emit_json(document) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))
