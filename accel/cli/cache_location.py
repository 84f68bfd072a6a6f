"""Finding and opening the cache for ``accel cache``: where it is, whether it is an accel cache, and how
command failures map to exit statuses (0 success, 1 nothing matched, 2 usage or I/O error)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import click
import lmdb

from accel.cache.directory import DAMAGE, NotACache, check_cache_dir, damaged
from accel.cache.epoch import PurgeEpoch
from accel.cache.key import route_of_key
from accel.cache.memory import MemoryTier
from accel.cache.policy import CachePolicy
from accel.cache.store import DiskStore, IncompatibleStore, StoreFull
from accel.cache.tiers import TieredStore
from accel.cli.messages import CommandError
from accel.config import CacheSettings, Config, ConfigError, load_config
from accel.proxy.routing import RouteTable

EXIT_OK, EXIT_NOTHING, EXIT_ERROR = 0, 1, 2
_OPENED_DIR = "accel.cache_dir"  # click context meta: the directory of the cache a command opened
EPOCH_FILE = "purge-epoch"


class CacheCommandError(CommandError):
    """A usage, configuration or I/O problem: exit status 2."""

    exit_code = EXIT_ERROR


class NothingMatched(CommandError):
    """The command worked but found nothing: exit status 1."""

    exit_code = EXIT_NOTHING


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
            route = route_of_key(url, self.routes)
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


class Opened:
    """The cache opened for one command: the disk store and, for purges, a TieredStore over it."""

    def __init__(self, location: Location):
        self.location = location
        try:
            map_size = check_cache_dir(location.dir)
        except NotACache as exc:
            raise CacheCommandError(str(exc)) from None
        try:
            self.disk = DiskStore(location.dir, map_size=map_size)
        except IncompatibleStore as exc:
            raise CacheCommandError(f"not an accel cache: {exc}") from None
        except (lmdb.Error, OSError) as exc:
            raise CacheCommandError(f"{location.dir}: cannot open the cache: {exc}") from None
        self._tiered: TieredStore | None = None

    @property
    def tiered(self) -> TieredStore:
        """For changes: an empty memory tier, and the shared counters every server process watches (from
        here on, every change the disk store commits reaches the servers' memory tiers)."""
        if self._tiered is None:
            epoch = PurgeEpoch(os.path.join(self.location.dir, EPOCH_FILE))
            self._tiered = TieredStore(self.disk, MemoryTier(max_bytes=0, max_objects=0), epoch)
        return self._tiered

    def close(self) -> None:
        if self._tiered is not None:
            self._tiered.epoch.close()
        self.disk.close()


def open_cache(ctx: click.Context, cache_dir: str | None, config_path: str | None) -> Opened:
    group = ctx.find_object(dict) or {}
    location = locate(cache_dir or group.get("cache_dir"), config_path or group.get("config"))
    opened = Opened(location)
    ctx.meta[_OPENED_DIR] = location.dir
    ctx.call_on_close(opened.close)
    return opened


def location_options(command):
    command = click.option(
        "--config", "config_path", type=click.Path(),
        help="accel configuration file: the cache is its [cache] dir.",
    )(command)
    command = click.option(
        "--cache-dir", type=click.Path(file_okay=False), help="The cache directory ([cache] dir)."
    )(command)
    return command


def json_option(command):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(command)


def guard(action):
    """Run `action`, turning storage failures into exit status 2."""
    try:
        return action()
    except StoreFull as exc:
        raise CacheCommandError(f"the cache is full: {exc}") from None
    except DAMAGE as exc:
        ctx = click.get_current_context(silent=True)
        directory = ctx.meta.get(_OPENED_DIR) if ctx is not None else None
        raise CacheCommandError(damaged(directory or "the cache directory", exc)) from None
    except (lmdb.Error, OSError) as exc:
        raise CacheCommandError(f"cache I/O error: {exc}") from None
