"""``accel cache``: inspect and invalidate the shared disk cache, while the server runs or not.

Every command finds the cache from ``--cache-dir DIR`` or ``--config FILE`` (its ``[cache] dir``; the file
also supplies the key options ``sort_query`` / ``drop_params`` / ``share_schemes`` and the freshness
settings). Both options can be given before or after the sub-command. Nothing is ever created: a directory
that does not exist, or that holds no accel cache, is refused.

Exit status: 0 success, 1 nothing matched (or ``verify`` found problems it did not repair), 2 usage or I/O
error (including "not an accel cache"). ``--json`` prints one JSON document for scripts.

The memory tier lives inside each server process and cannot be seen from here, so listings show what is
on disk (every entry is on disk; the hottest are also in memory). Purges made here reach every running
server before the command returns, through the shared purge epoch (``<cache-dir>/purge-epoch``).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import click
import lmdb

from accel.cache.entry import EntryHead
from accel.cache.epoch import PurgeEpoch
from accel.cache.fields import get_all
from accel.cache.key import cache_key_for_uri, url_prefix_key
from accel.cache.memory import MemoryTier
from accel.cache.policy import (
    HEURISTICALLY_CACHEABLE,
    CachePolicy,
    StoredResponse,
    freshness_lifetime,
    response_directives,
)
from accel.cache.store import DiskStore, IncompatibleStore, StoreFull
from accel.cache.tiers import TieredStore
from accel.config import CacheSettings, Config, ConfigError, load_config
from accel.proxy.routing import RouteTable

EXIT_OK, EXIT_NOTHING, EXIT_ERROR = 0, 1, 2
EPOCH_FILE = "purge-epoch"
PROGRESS_THRESHOLD = 2000  # entries; below this a listing is quick enough without a bar

_FORMAT_MARKER = b"accel-cache/1"  # DiskStore's meta "format" value
_META_MAGIC = 0xBEEFC0DE


class CacheCommandError(click.ClickException):
    """A usage, configuration or I/O problem: exit status 2."""

    exit_code = EXIT_ERROR


class NothingMatched(click.ClickException):
    """The command worked but found nothing: exit status 1."""

    exit_code = EXIT_NOTHING


# ---------------------------------------------------------------------------------------------------------
# Finding and opening the cache


@dataclass
class Location:
    dir: str
    config: Config | None
    settings: CacheSettings

    def __post_init__(self) -> None:
        self.routes = RouteTable(self.config.routes) if self.config is not None else None

    def policy_for(self, url: str) -> CachePolicy:
        """The freshness policy the server applies to `url` (its route's default/max TTL when known)."""
        s = self.settings
        route_cache = None
        if self.routes is not None:
            parts = urlsplit(url)
            route = self.routes.match((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
            route_cache = route.cache if route is not None else None
        return CachePolicy(
            heuristic_fraction=s.heuristic_fraction,
            heuristic_max=s.heuristic_max,
            default_ttl=route_cache.default_ttl if route_cache else None,
            max_ttl=route_cache.max_ttl if route_cache else None,
            store_set_cookie=s.store_set_cookie,
            targeted_fields=s.targeted_fields,
            grace=s.grace,
        )

    def key_options(self) -> dict:
        return {"sort_query": self.settings.sort_query, "drop_params": self.settings.drop_params}


def locate(cache_dir: str | None, config_path: str | None) -> Location:
    config = None
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise CacheCommandError(str(exc)) from None
    settings = config.cache if config is not None else CacheSettings()
    directory = cache_dir or settings.dir
    if directory is None:
        if config_path is not None:
            raise CacheCommandError(f"{config_path} has no [cache] dir; pass --cache-dir")
        raise CacheCommandError("say where the cache is: --cache-dir DIR or --config FILE")
    return Location(os.path.abspath(directory), config, settings)


def stored_map_size(directory: str) -> int | None:
    """The map size recorded in the LMDB meta pages by the last writer, or None when unreadable.

    Opening with a different map size and then writing would record that size for every process, so
    the command uses the size the server uses.
    """
    try:
        with open(os.path.join(directory, "data.mdb"), "rb") as f:
            head = f.read(16 + 64)
            if len(head) < 80:
                return None
            page_size = struct.unpack_from("<I", head, 16 + 24)[0]  # FREE_DBI md_pad holds the page size
            if page_size < 512 or page_size > 1 << 16:
                return None
            f.seek(page_size)
            second = f.read(len(head) + 96 + 16)
    except OSError:
        return None
    best = None
    for page in (head, second):
        if len(page) < 16 + 24:
            continue
        magic, _version, _address, map_size = struct.unpack_from("<IIQQ", page, 16)
        txnid = struct.unpack_from("<Q", page, 16 + 24 + 96 + 8)[0] if len(page) >= 16 + 24 + 96 + 16 else -1
        if magic == _META_MAGIC and (best is None or txnid > best[0]):
            best = (txnid, map_size)
    return best[1] if best else None


def check_cache_dir(directory: str) -> int | None:
    """Refuse anything that is not an existing accel cache; return its recorded map size."""
    if not os.path.isdir(directory):
        raise CacheCommandError(f"{directory}: no such directory")
    if not os.path.isfile(os.path.join(directory, "data.mdb")):
        raise CacheCommandError(f"{directory}: not an accel cache (no data.mdb); nothing was created")
    map_size = stored_map_size(directory)
    if map_size is None:
        raise CacheCommandError(f"{directory}: not an accel cache (data.mdb is not an LMDB database)")
    try:
        env = lmdb.open(directory, readonly=True, max_dbs=8, subdir=True, map_size=map_size)
    except lmdb.Error as exc:
        raise CacheCommandError(f"{directory}: cannot open the cache: {exc}") from None
    try:
        with env.begin() as txn:
            try:
                meta = env.open_db(b"meta", txn=txn, create=False)
                marker = txn.get(b"format", db=meta)
            except (lmdb.NotFoundError, lmdb.IncompatibleError):
                marker = None
    except lmdb.Error as exc:
        raise CacheCommandError(f"{directory}: cannot read the cache: {exc}") from None
    finally:
        env.close()
    if marker != _FORMAT_MARKER:
        found = "no accel format marker" if marker is None else f"format {marker!r}, expected {_FORMAT_MARKER!r}"
        raise CacheCommandError(f"{directory}: not an accel cache ({found})")
    return map_size


class Opened:
    """The cache opened for one command: the disk store and, for purges, a TieredStore over it."""

    def __init__(self, location: Location):
        self.location = location
        map_size = check_cache_dir(location.dir)
        try:
            self.disk = DiskStore(location.dir, map_size=map_size or location.settings.map_size)
        except IncompatibleStore as exc:
            raise CacheCommandError(f"not an accel cache: {exc}") from None
        except (lmdb.Error, OSError) as exc:
            raise CacheCommandError(f"{location.dir}: cannot open the cache: {exc}") from None
        self._tiered: TieredStore | None = None

    @property
    def tiered(self) -> TieredStore:
        """For purges: an empty memory tier, and the epoch every server process watches."""
        if self._tiered is None:
            epoch = PurgeEpoch(os.path.join(self.location.dir, EPOCH_FILE))
            self._tiered = TieredStore(self.disk, MemoryTier(max_bytes=0, max_objects=0), epoch)
        return self._tiered

    def close(self) -> None:
        if self._tiered is not None:
            self._tiered.epoch.close()
        self.disk.close()


def _open(ctx: click.Context, cache_dir: str | None, config_path: str | None) -> Opened:
    group = ctx.find_object(dict) or {}
    location = locate(cache_dir or group.get("cache_dir"), config_path or group.get("config"))
    opened = Opened(location)
    ctx.call_on_close(opened.close)
    return opened


def location_options(command):
    command = click.option(
        "--config", "config_path", type=click.Path(dir_okay=False),
        help="accel configuration file: the cache is its [cache] dir.",
    )(command)
    command = click.option(
        "--cache-dir", type=click.Path(file_okay=False), help="The cache directory ([cache] dir)."
    )(command)
    return command


def json_option(command):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(command)


def _emit_json(document) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _guard(action):
    """Run `action`, turning storage failures into exit status 2."""
    try:
        return action()
    except StoreFull as exc:
        raise CacheCommandError(f"the cache is full: {exc}") from None
    except (lmdb.Error, OSError) as exc:
        raise CacheCommandError(f"cache I/O error: {exc}") from None


# ---------------------------------------------------------------------------------------------------------
# Describing entries


def _duration(seconds: float) -> str:
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


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


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
        why = f"fresh for {_duration(ttl)} more ({basis})"
    else:
        why = f"stale by {_duration(-ttl)} ({basis})"
        if cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None:
            why += "; must be revalidated before use"
        elif cc.stale_while_revalidate is not None and -ttl <= cc.stale_while_revalidate:
            left = cc.stale_while_revalidate + ttl
            why += f"; may be served while revalidating for {_duration(left)} more (stale-while-revalidate)"
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


def _url_groups(disk: DiskStore, prefix: str):
    """(url, [heads]) for stored URLs starting with `prefix`, in key order."""
    url, heads = None, []
    for head in disk.iter_heads(prefix):
        if head.url != url and heads:
            yield url, heads
            heads = []
        url = head.url
        heads.append(head)
    if heads:
        yield url, heads


def _progress(total: int, label: str):
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


# ---------------------------------------------------------------------------------------------------------
# Commands


@click.group("cache")
@location_options
@click.pass_context
def cache(ctx: click.Context, cache_dir: str | None, config_path: str | None) -> None:
    """Inspect and invalidate the disk cache (works while the server runs).

    Exit status: 0 success, 1 nothing matched, 2 usage or I/O error.
    """
    ctx.ensure_object(dict)
    ctx.obj["cache_dir"] = cache_dir
    ctx.obj["config"] = config_path


@cache.command("ls")
@click.option("--prefix", default="", help="Only URLs starting with this (e.g. https://example.com/img/).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="List at most N URLs.")
@json_option
@location_options
@click.pass_context
def ls_command(ctx, prefix: str, limit: int | None, as_json: bool, cache_dir, config_path) -> None:
    """List stored URLs: variants, size, when stored, time to live.

    The memory tier belongs to each server process, so this lists the disk tier, which holds everything.
    """
    opened = _open(ctx, cache_dir, config_path)
    location, disk = opened.location, opened.disk
    now = time.time()

    def collect() -> list[dict]:
        rows = []
        with _progress(disk.stats()["entries"], "reading entries") as bar:
            for url, heads in _url_groups(disk, prefix):
                bar.update(len(heads))
                policy = location.policy_for(url)
                states = [freshness(head, policy, now) for head in heads]
                best = max(states, key=lambda s: (s["fresh"], s["ttl"]))
                rows.append({
                    "url": url,
                    "variants": len(heads),
                    "bytes": sum(head.body_length for head in heads),
                    "stored_at": max(head.stored_at for head in heads),
                    "expires_at": best["expires_at"],
                    "ttl": best["ttl"],
                    "fresh": any(s["fresh"] for s in states),
                    "stale_marked": all(s["stale_marked"] for s in states),
                    "tier": "disk",
                })
                if limit is not None and len(rows) >= limit:
                    break
        return rows

    rows = _guard(collect)
    if as_json:
        _emit_json(rows)
    elif rows:
        table = [("URL", "VARIANTS", "SIZE", "STORED", "TTL")]
        for row in rows:
            if row["stale_marked"]:
                ttl = "soft-purged"
            elif row["fresh"]:
                ttl = _duration(row["ttl"])
            else:
                ttl = f"stale {_duration(row['ttl'])}"
            table.append((row["url"], str(row["variants"]), _size(row["bytes"]), _when(row["stored_at"]), ttl))
        _print_table(table)
    if not rows:
        raise NothingMatched(f"no stored URL starts with {prefix!r}" if prefix else "the cache is empty")


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        click.echo("  ".join(cells).rstrip())


@cache.command("show")
@click.argument("url")
@json_option
@location_options
@click.pass_context
def show_command(ctx, url: str, as_json: bool, cache_dir, config_path) -> None:
    """Show every stored variant of URL (an absolute URL, e.g. https://example.com/page?x=1).

    For each variant: the request field values it was stored for (Vary), status and header fields,
    Age, freshness lifetime, fresh or stale and why, body size and tags.
    """
    opened = _open(ctx, cache_dir, config_path)
    location = opened.location
    key = _absolute_key(url, location)
    heads = _guard(lambda: opened.disk.variants(key))
    if not heads:
        raise NothingMatched(f"nothing stored for {key}")
    now = time.time()
    policy = location.policy_for(key)
    variants = []
    for head in heads:
        variants.append({
            "vary": secondary_key_fields(head),
            "status": head.status,
            "reason": head.reason,
            "fields": [list(pair) for pair in head.fields],
            "stored_at": head.stored_at,
            "bytes": head.body_length,
            "tags": list(head.tags),
            **freshness(head, policy, now),
        })
    if as_json:
        _emit_json({"url": key, "variants": variants})
        return
    click.echo(f"{key}  ({len(variants)} variant{'s' if len(variants) != 1 else ''})")
    for number, v in enumerate(variants, 1):
        click.echo("")
        click.echo(f"variant {number} of {len(variants)}")
        vary = ", ".join(f"{name}: {'(absent)' if value is None else value}" for name, value in v["vary"])
        _pair("secondary key", vary or "(no Vary)")
        _pair("status", f"{v['status']} {v['reason']}")
        _pair("stored at", f"{_when(v['stored_at'])} ({_duration(now - v['stored_at'])} ago)")
        _pair("age", _duration(v["age"]))
        _pair("freshness", f"{_duration(v['lifetime'])} ({v['lifetime_basis']})")
        _pair("state", v["why"])
        _pair("size", f"{v['bytes']} bytes")
        _pair("tags", ", ".join(v["tags"]) or "(none)")
        click.echo("  header fields:")
        for name, value in v["fields"]:
            click.echo(f"    {name}: {value}")


def _pair(label: str, value: str) -> None:
    click.echo(f"  {label + ':':<15}{value}")


def _absolute_key(url: str, location: Location) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise CacheCommandError(f"{url!r}: give an absolute http:// or https:// URL")
    key = cache_key_for_uri(url, **location.key_options())
    if location.settings.share_schemes and key.startswith("https://"):
        key = "http://" + key[len("https://"):]  # the cache keeps one entry for both, under http
    return key


@cache.command("stats")
@json_option
@location_options
@click.pass_context
def stats_command(ctx, as_json: bool, cache_dir, config_path) -> None:
    """Entries, bytes, LMDB map size and use, reader slots."""
    opened = _open(ctx, cache_dir, config_path)
    stats = _guard(opened.disk.stats)
    document = {
        "dir": opened.location.dir,
        **stats,
        "used_fraction": round(stats["used_bytes"] / stats["map_size"], 4) if stats["map_size"] else 0,
        "hits": None,  # not recorded: hit/miss counts live in each server process's memory
        "misses": None,
    }
    if as_json:
        _emit_json(document)
        return
    _pair("directory", document["dir"])
    _pair("entries", f"{stats['entries']}" + (f" (+{stats['pending']} being written)" if stats["pending"] else ""))
    _pair("body bytes", _size(stats["bytes"]))
    _pair("LMDB map", f"{_size(stats['used_bytes'])} used of {_size(stats['map_size'])} ({document['used_fraction']:.1%})")
    _pair("readers", f"{stats['readers']} reader slots used of {stats['max_readers']}")
    _pair("hits/misses", "not recorded on disk (each server process counts its own)")


@cache.command("purge")
@click.argument("url", required=False)
@click.option("--prefix", help="Purge every URL under this absolute URL prefix (both schemes).")
@click.option("--tag", "tags", multiple=True, help="Purge entries with this tag (Surrogate-Key / Cache-Tag); repeatable.")
@click.option("--all", "purge_all", is_flag=True, help="Purge every entry.")
@click.option("--soft", is_flag=True, help="Mark entries stale (revalidate before reuse) instead of deleting them.")
@json_option
@location_options
@click.pass_context
def purge_command(ctx, url, prefix, tags, purge_all, soft, as_json, cache_dir, config_path) -> None:
    """Purge URL (every variant, http and https), or --prefix P, --tag T or --all.

    Running servers see the purge before this command returns.
    """
    chosen = [name for name, given in (("URL", url), ("--prefix", prefix), ("--tag", tags), ("--all", purge_all)) if given]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of URL, --prefix, --tag or --all")
    opened = _open(ctx, cache_dir, config_path)
    location = opened.location
    schemes = ("http",) if location.settings.share_schemes else ("http", "https")
    targets: list[str]
    if url:
        key = _absolute_key(url, location)
        scheme, rest = key.split("://", 1)
        if location.settings.share_schemes:
            schemes = ("http",)
        else:
            schemes = (scheme, "https" if scheme == "http" else "http")
        targets = list(dict.fromkeys(cache_key_for_uri(f"{s}://{rest}") for s in schemes))
        mode, action = "url", lambda t: opened.tiered.purge_url(t, soft=soft)
    elif prefix:
        parts = urlsplit(prefix)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise CacheCommandError(f"{prefix!r}: give an absolute URL prefix such as https://example.com/img/")
        rest = prefix.split("://", 1)[1]
        path = rest[rest.index("/"):] if "/" in rest else "/"
        targets = [url_prefix_key(scheme, parts.netloc.rpartition("@")[2], path) for scheme in schemes]
        mode, action = "prefix", lambda t: opened.tiered.purge_prefix(t, soft=soft)
    elif tags:
        targets = list(dict.fromkeys(tags))
        mode, action = "tag", lambda t: opened.tiered.purge_tag(t, soft=soft)
    else:
        targets = ["*"]
        mode, action = "all", lambda t: opened.tiered.purge_all(soft=soft)
    purged = _guard(lambda: sum(action(target) for target in targets))
    if as_json:
        _emit_json({"status": "ok" if purged else "not found", "purged": purged, "mode": mode, "soft": soft,
                    "targets": targets})
    else:
        verb = "marked stale" if soft else "purged"
        click.echo(f"{verb} {purged} entr{'y' if purged == 1 else 'ies'} ({mode}: {', '.join(targets)})")
    if not purged:
        ctx.exit(EXIT_NOTHING)


@cache.command("verify")
@click.option("--repair", is_flag=True, help="Remove broken entries, dangling index records and stray chunks.")
@json_option
@location_options
@click.pass_context
def verify_command(ctx, repair: bool, as_json: bool, cache_dir, config_path) -> None:
    """Check that every record decodes and every body is complete.

    Exit status 1 when problems were found and not repaired. Reads the whole store in one transaction.
    """
    opened = _open(ctx, cache_dir, config_path)
    entries = _guard(opened.disk.stats)["entries"]
    if not as_json and entries >= PROGRESS_THRESHOLD:
        click.echo(f"verifying {entries} entries…", err=True)
    problems = _guard(lambda: opened.disk.verify(repair=repair))
    if repair and problems:
        opened.tiered.epoch.bump()  # servers drop memory copies of what was removed
    if as_json:
        _emit_json({"entries": entries, "problems": problems, "repaired": repair and bool(problems)})
    else:
        for problem in problems:
            click.echo(problem)
        if not problems:
            click.echo(f"OK: {entries} entries, no problems")
        elif repair:
            click.echo(f"repaired {len(problems)} problem{'s' if len(problems) != 1 else ''}")
        else:
            click.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}; run with --repair to remove them", err=True)
    if problems and not repair:
        ctx.exit(EXIT_NOTHING)


@cache.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@location_options
@click.pass_context
def clear_command(ctx, yes: bool, as_json: bool, cache_dir, config_path) -> None:
    """Delete every entry, including bodies still being written."""
    opened = _open(ctx, cache_dir, config_path)
    if not yes:
        entries = _guard(opened.disk.stats)["entries"]
        click.confirm(f"Delete all {entries} entries in {opened.location.dir}?", abort=True, err=True)
    purged = _guard(lambda: opened.tiered.purge_all())
    if as_json:
        _emit_json({"status": "ok", "purged": purged})
    else:
        click.echo(f"cleared {purged} entr{'y' if purged == 1 else 'ies'}")
