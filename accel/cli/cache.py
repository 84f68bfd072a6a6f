"""``accel cache``: inspect and invalidate the shared disk cache, while the server runs or not.

Every command finds the cache from ``--cache-dir DIR`` or ``--config FILE`` (its ``[cache] dir``; the file
also supplies the key options ``sort_query`` / ``drop_params`` / ``share_schemes`` and the freshness
settings). Both options can be given before or after the sub-command. Nothing is ever created: a directory
that does not exist, or that holds no accel cache, is refused.

Exit status: 0 success, 1 nothing matched (or ``verify`` found problems it did not repair), 2 usage or I/O
error (including "not an accel cache"), 3 ``purge --cluster``: a peer did not confirm the purge. ``--json`` prints one JSON document for scripts.

The memory tier lives inside each server process and cannot be seen from here, so listings show what is
on disk (every entry is on disk; the hottest are also in memory). Purges made here reach every running
server before the command returns, through the shared purge epoch (``<cache-dir>/purge-epoch``).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import click

from accel.cache.fanout import all_confirmed
from accel.cache.figures import SUMMED, live_figures, summed
from accel.cache.key import route_cache_key
from accel.cache.purge import prefix_keys, url_keys
from accel.cli import describe
from accel.cli.cache_location import (
    EXIT_NOTHING,
    CacheCommandError,
    Location,
    NothingMatched,
    guard,
    json_option,
    location_options,
    open_cache,
)
from accel.cli.cluster_purge import EXIT_PEER_FAILED, purge_peers
from accel.cli.describe import duration, emit_json, freshness, pair, print_table, secondary_key_fields, size, url_groups, when


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
@click.option("--prefix", default="", help="Only URLs starting with this URL (https://example.com/img/), or whose path "
              "starts with this path on any host (/img/).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="List at most N URLs.")
@json_option
@location_options
@click.pass_context
def ls_command(ctx, prefix: str, limit: int | None, as_json: bool, cache_dir, config_path) -> None:
    """List stored URLs: variants, size, when stored, time to live.

    The memory tier belongs to each server process, so this lists the disk tier, which holds everything.
    """
    if prefix and not prefix.startswith("/") and urlsplit(prefix).scheme.lower() not in ("http", "https"):
        raise CacheCommandError(f"--prefix {prefix!r}: give a path such as /img/ or a URL such as https://example.com/img/")
    opened = open_cache(ctx, cache_dir, config_path)
    location, disk = opened.location, opened.disk
    now = time.time()

    def collect() -> list[dict]:
        rows = []
        with describe.progress(disk.stats()["entries"], "reading entries") as bar:
            for url, heads in url_groups(disk, prefix):
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

    rows = guard(collect)
    if as_json:
        emit_json(rows)
    elif rows:
        table = [("URL", "VARIANTS", "SIZE", "STORED", "TTL")]
        for row in rows:
            if row["stale_marked"]:
                ttl = "soft-purged"
            elif row["fresh"]:
                ttl = duration(row["ttl"])
            else:
                ttl = f"stale {duration(row['ttl'])}"
            table.append((row["url"], str(row["variants"]), size(row["bytes"]), when(row["stored_at"]), ttl))
        print_table(table)
    if not rows:
        raise NothingMatched(f"no stored URL starts with {prefix!r}" if prefix else "the cache is empty")


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
    opened = open_cache(ctx, cache_dir, config_path)
    location = opened.location
    key = _absolute_key(url, location)
    heads = guard(lambda: opened.disk.variants(key))
    if not heads:
        raise NothingMatched(f"nothing stored for {key}")
    now = time.time()
    policy = location.policy_for(url)
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
        emit_json({"url": key, "variants": variants})
        return
    click.echo(f"{key}  ({len(variants)} variant{'s' if len(variants) != 1 else ''})")
    for number, v in enumerate(variants, 1):
        click.echo("")
        click.echo(f"variant {number} of {len(variants)}")
        vary = ", ".join(f"{name}: {'(absent)' if value is None else value}" for name, value in v["vary"])
        pair("secondary key", vary or "(no Vary)")
        pair("status", f"{v['status']} {v['reason']}")
        pair("stored at", f"{when(v['stored_at'])} ({duration(now - v['stored_at'])} ago)")
        pair("age", duration(v["age"]))
        pair("freshness", f"{duration(v['lifetime'])} ({v['lifetime_basis']})")
        pair("state", v["why"])
        pair("size", f"{v['bytes']} bytes")
        pair("tags", ", ".join(v["tags"]) or "(none)")
        click.echo("  header fields:")
        for name, value in v["fields"]:
            click.echo(f"    {name}: {value}")


def _host_and_target(url: str) -> tuple[str, str]:
    """The Host and origin-form target a client asks for ``url`` with (an absolute http(s) URL)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise CacheCommandError(f"{url!r}: give an absolute http:// or https:// URL")
    target = (parts.path or "/") + (f"?{parts.query}" if "?" in url.partition("#")[0] else "")
    return parts.netloc.rpartition("@")[2], target


def _absolute_key(url: str, location: Location) -> str:
    """The key a client's request for ``url`` is stored under: with ``--config``, through the route serving
    it (a route that does not preserve the Host keys by its origin); without, the URL itself."""
    host, target = _host_and_target(url)
    # share_schemes: the cache keeps one entry for both schemes, under http
    scheme = "http" if location.settings.share_schemes else urlsplit(url).scheme.lower()
    route = location.routes.match(target, host) if location.routes is not None else None
    return route_cache_key(scheme, host, target, route, **location.key_options())


@cache.command("stats")
@json_option
@location_options
@click.pass_context
def stats_command(ctx, as_json: bool, cache_dir, config_path) -> None:
    """Entries, bytes, LMDB map size and use, reader slots; the memory tiers of the running servers."""
    opened = open_cache(ctx, cache_dir, config_path)
    stats = guard(opened.disk.stats)
    processes = live_figures(opened.location.dir)
    memory = summed(processes) if processes else dict.fromkeys(SUMMED)  # None: no server is running
    document = {
        "dir": opened.location.dir,
        **stats,
        "used_fraction": round(stats["used_bytes"] / stats["map_size"], 4) if stats["map_size"] else 0,
        "processes": len(processes),
        "memory_objects": memory["objects"],
        "memory_bytes": memory["bytes"],
        "hits": memory["hits"],
        "misses": memory["misses"],
    }
    if as_json:
        emit_json(document)
        return
    pair("directory", document["dir"])
    pair("entries", f"{stats['entries']}" + (f" (+{stats['pending']} being written)" if stats["pending"] else ""))
    pair("body bytes", size(stats["bytes"]))
    pair("LMDB map", f"{size(stats['used_bytes'])} used of {size(stats['map_size'])} ({document['used_fraction']:.1%})")
    pair("readers", f"{stats['readers']} reader slots used of {stats['max_readers']}")
    if processes:
        pair("memory tiers", f"{memory['objects']} objects, {size(memory['bytes'])} in {len(processes)} server process(es)")
        pair("hits/misses", f"{memory['hits']} / {memory['misses']} (memory tier, summed over the server processes)")
    else:
        pair("hits/misses", "not recorded: no server process is using this cache")


@cache.command("purge")
@click.argument("url", required=False)
@click.option("--prefix", help="Purge every URL under this absolute URL prefix (both schemes).")
@click.option("--tag", "tags", multiple=True, help="Purge entries with this tag (Surrogate-Key / Cache-Tag); repeatable.")
@click.option("--all", "purge_all", is_flag=True, help="Purge every entry.")
@click.option("--soft", is_flag=True, help="Mark entries stale (revalidate before reuse) instead of deleting them.")
@click.option("--cluster", is_flag=True, help="Send the purge to every [cluster] peer of the configuration too.")
@json_option
@location_options
@click.pass_context
def purge_command(ctx, url, prefix, tags, purge_all, soft, cluster, as_json, cache_dir, config_path) -> None:
    """Purge URL (every variant, http and https), or --prefix P, --tag T or --all.

    Running servers see the purge before this command returns. With --cluster, the [cluster] peers get the
    same purge as a PURGE request; exit status 3 when one of them did not confirm it.
    """
    chosen = [name for name, given in (("URL", url), ("--prefix", prefix), ("--tag", tags), ("--all", purge_all)) if given]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of URL, --prefix, --tag or --all")
    if cluster and purge_all:
        raise click.UsageError("--all --cluster: a PURGE clears one host; use --cluster --prefix http://HOST/")
    opened = open_cache(ctx, cache_dir, config_path)
    if cluster and (opened.location.config is None or not opened.location.config.cluster.peers):
        raise click.UsageError("--cluster needs --config FILE with [cluster] peers")
    location = opened.location
    targets: list[str]
    if url:
        host, target = _host_and_target(url)
        keys = url_keys(host, target, location.settings, location.routes)
        targets = sorted(keys, key=lambda k: not k.startswith(urlsplit(url).scheme.lower() + "://"))  # URL's first
        mode, action = "url", lambda t: opened.tiered.purge_url(t, soft=soft)
    elif prefix:
        parts = urlsplit(prefix)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise CacheCommandError(f"{prefix!r}: give an absolute URL prefix such as https://example.com/img/")
        rest = prefix.split("://", 1)[1]
        path = rest[rest.index("/"):] if "/" in rest else "/"
        targets = prefix_keys(parts.netloc.rpartition("@")[2], path, location.settings, location.routes)
        mode, action = "prefix", lambda t: opened.tiered.purge_prefix(t, soft=soft)
    elif tags:
        targets = list(dict.fromkeys(tags))
        mode, action = "tag", lambda t: opened.tiered.purge_tag(t, soft=soft)
    else:
        targets = ["*"]
        mode, action = "all", lambda t: opened.tiered.purge_all(soft=soft)
    purged = guard(lambda: sum(action(target) for target in targets))
    document = {"status": "ok" if purged else "not found", "purged": purged, "mode": mode, "soft": soft,
                "targets": targets}
    if cluster:
        document["peers"] = peers = purge_peers(opened.location.config, *_purge_request(url or prefix, mode, tags), soft)
        document["status"] = "ok" if all_confirmed(peers) else "peer failed"
    if as_json:
        emit_json(document)
    else:
        verb = "marked stale" if soft else "purged"
        click.echo(f"{verb} {purged} entr{'y' if purged == 1 else 'ies'} ({mode}: {', '.join(targets)})")
        for peer, answer in document.get("peers", {}).items():
            done = f"{verb} {answer['purged']}" if answer["status"] == "ok" else f"FAILED: {answer['detail']}"
            click.echo(f"{peer}: {done}")
    if cluster:
        if document["status"] != "ok":
            ctx.exit(EXIT_PEER_FAILED)
    elif not purged:
        ctx.exit(EXIT_NOTHING)


def _purge_request(url: str | None, mode: str, tags) -> tuple[str | None, str, str, list[str]]:
    """(Host, request-target, X-Purge-Method, tags) of the PURGE for peers (a tag purge: any host)."""
    if mode == "tag":
        return None, "/", mode, list(tags)
    parts = urlsplit(url)
    target = parts.path or "/"
    if mode == "url" and parts.query:
        target += "?" + parts.query
    return parts.netloc.rpartition("@")[2], target, mode, []


@cache.command("verify")
@click.option("--repair", is_flag=True, help="Remove broken entries, dangling index records and stray chunks.")
@json_option
@location_options
@click.pass_context
def verify_command(ctx, repair: bool, as_json: bool, cache_dir, config_path) -> None:
    """Check that every record decodes and every body is complete.

    Exit status 1 when problems were found and not repaired. Reads the whole store in one read transaction
    (running servers go on writing); repairs are made in short write transactions.
    """
    opened = open_cache(ctx, cache_dir, config_path)
    entries = guard(opened.disk.stats)["entries"]
    if not as_json and entries >= describe.PROGRESS_THRESHOLD:
        click.echo(f"verifying {entries} entries…", err=True)
    # With --repair, through the tiered store: servers drop their memory copies of what is removed.
    disk = opened.tiered.disk if repair else opened.disk
    problems = guard(lambda: disk.verify(repair=repair))
    if as_json:
        emit_json({"entries": entries, "problems": problems, "repaired": repair and bool(problems)})
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
    """Delete every entry, including bodies still being written (in short write transactions)."""
    opened = open_cache(ctx, cache_dir, config_path)
    if not yes:
        entries = guard(opened.disk.stats)["entries"]
        click.confirm(f"Delete all {entries} entries in {opened.location.dir}?", abort=True, err=True)
    purged = guard(lambda: opened.tiered.purge_all())
    if as_json:
        emit_json({"status": "ok", "purged": purged})
    else:
        click.echo(f"cleared {purged} entr{'y' if purged == 1 else 'ies'}")
