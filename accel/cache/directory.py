"""Whether a directory holds an accel cache, found out without creating or changing anything: an LMDB
environment with accel's format marker. Used by ``accel cache`` (which never creates a cache) and by the start-up
checks (which refuse a ``data.mdb`` that is not one, or is damaged)."""

from __future__ import annotations

import os

import lmdb

_FORMAT_MARKER = b"accel-cache/1"  # DiskStore's meta "format" value


class NotACache(Exception):
    """The directory is missing, or holds something that is not an accel cache (or a damaged one)."""


class DamagedCache(NotACache):
    """An accel cache whose file LMDB finds damaged; the message says what to do."""


DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadTxnError)


def damaged(directory: str, error: lmdb.Error) -> str:
    """What to tell an operator whose cache file is damaged: LMDB cannot repair a file, a new cache can."""
    detail = str(error).split(": ")[-1]
    return (f"{directory}: the cache is damaged (LMDB: {detail}) and cannot be repaired in place; stop accel, "
            f"move {directory} away (or delete it) and start accel again with an empty cache")


def check_cache_dir(directory: str) -> int:
    """Refuse anything that is not an existing accel cache; return its map size.

    The environment is opened with map size 0, which adopts the size the last writer recorded: opening
    with another size and then writing would record that size for every process.
    """
    if not os.path.isdir(directory):
        raise NotACache(f"{directory}: no such directory")
    if not os.path.isfile(os.path.join(directory, "data.mdb")):
        raise NotACache(f"{directory}: not an accel cache (no data.mdb); nothing was created")
    try:
        env = lmdb.open(directory, readonly=True, max_dbs=8, subdir=True, map_size=0)
    except lmdb.InvalidError:
        raise NotACache(f"{directory}: not an accel cache (data.mdb is not an LMDB database)") from None
    except DAMAGE as exc:
        raise DamagedCache(damaged(directory, exc)) from None
    except lmdb.Error as exc:
        raise NotACache(f"{directory}: cannot open the cache: {exc}") from None
    try:
        map_size = env.info()["map_size"]
        with env.begin() as txn:
            try:
                meta = env.open_db(b"meta", txn=txn, create=False)
                marker = txn.get(b"format", db=meta)
            except (lmdb.NotFoundError, lmdb.IncompatibleError):
                marker = None
    except DAMAGE as exc:
        raise DamagedCache(damaged(directory, exc)) from None
    except lmdb.Error as exc:
        raise NotACache(f"{directory}: cannot read the cache: {exc}") from None
    finally:
        env.close()
    if marker != _FORMAT_MARKER:
        found = "no accel format marker" if marker is None else f"format {marker!r}, expected {_FORMAT_MARKER!r}"
        raise NotACache(f"{directory}: not an accel cache ({found})")
    return map_size
