"""The request-target's path in one normal form (pure: no Twisted, no I/O).

Routing, CacheDisable rules, the cache key and the request sent upstream all read the same normalised
target, so that two spellings of one path can never be told apart by one of them and not by another
(``//admin/x``, ``/x/../admin/x``, ``/%61dmin/x`` and ``/./admin/x`` are all ``/admin/x``).

The normalisation is RFC 3986 §6.2.2 applied to the path, as RFC 9110 §4.2.3 allows for http(s) URIs:

* §6.2.2.2: a percent-encoded unreserved character (ALPHA, DIGIT, ``-``, ``.``, ``_``, ``~``) is decoded;
  every other percent-encoding is kept, its hex digits upper-cased (§6.2.2.1).
* §6.2.2.3 / §5.2.4: ``.`` and ``..`` segments are removed, after that decoding (so ``%2e%2e`` is ``..``).
* Repeated slashes are merged into one (not an RFC 3986 rule: most origins' file systems and routers
  treat ``//`` as ``/``, so keeping them apart would let ``//admin/`` past a rule for ``/admin/``).

A target that cannot be normalised safely is refused (``UnsafeTarget``; the caller answers 400):
a ``..`` above the root; an encoded ``/`` or ``\\`` (``%2F``, ``%5C``), which origins disagree on; a raw
backslash; a NUL or any other control character, raw or percent-encoded; a malformed percent-encoding
(RFC 3986 §2.1); a raw ``#`` (a request-target carries no fragment, RFC 9112 §3.2); and a dot segment
with parameters (``..;x``), which some servlet containers treat as ``..``.

The query is left exactly as received.
"""

from __future__ import annotations

import re
import string

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")  # RFC 3986 §2.3
_HEX = frozenset(string.hexdigits)
_REFUSED_DECODED = frozenset("/\\")
_REFUSED_RAW = re.compile(r"[\x00-\x1f\x7f\\#]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Nothing to do for a path without percent-encodings, "." segments (or "./" runs) and repeated slashes.
_NEEDS_WORK = re.compile(r"%|//|/\.(?:\.)?(?:[/;]|$)")


class UnsafeTarget(ValueError):
    """A request-target that cannot be normalised safely; the message says why."""


def _is_control(char: str) -> bool:
    return ord(char) < 0x20 or ord(char) == 0x7F


def _decode_unreserved(path: str) -> str:
    """§6.2.2.1-2: decode percent-encoded unreserved characters, upper-case the rest; refuse the unsafe."""
    if "%" not in path:
        return path
    out = []
    i = 0
    while i < len(path):
        char = path[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        digits = path[i + 1 : i + 3]
        if len(digits) != 2 or not set(digits) <= _HEX:
            raise UnsafeTarget("a malformed percent-encoding")
        decoded = chr(int(digits, 16))
        if decoded in _REFUSED_DECODED:
            raise UnsafeTarget("an encoded slash or backslash in the path")
        if _is_control(decoded):
            raise UnsafeTarget("an encoded control character in the path")
        out.append(decoded if decoded in _UNRESERVED else "%" + digits.upper())
        i += 3
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """§5.2.4 on an absolute path, with repeated slashes merged; a ``..`` above the root is refused."""
    segments = path.split("/")[1:]
    out: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment.partition(";")[0] in (".", "..") and ";" in segment:
            raise UnsafeTarget("a dot segment with parameters")
        if segment == "..":
            if not out:
                raise UnsafeTarget("a '..' segment above the root")
            out.pop()
            if i == last:
                out.append("")
        elif segment == ".":
            if i == last:
                out.append("")
        elif segment or i == last:  # an empty segment before the last one is a repeated slash
            out.append(segment)
    return "/" + "/".join(out)


def normalise_path(path: str) -> str:
    """The normal form of an absolute path (one starting with "/"); raises UnsafeTarget."""
    if not path.startswith("/"):
        raise UnsafeTarget("a path that does not start with '/'")
    refused = _REFUSED_RAW.search(path)
    if refused is not None:
        char = refused.group()
        what = {"\\": "a raw backslash", "#": "a raw '#'"}.get(char, "a control character")
        raise UnsafeTarget(f"{what} in the path")
    if _NEEDS_WORK.search(path) is None:
        return path
    return _remove_dot_segments(_decode_unreserved(path))


def normalise_target(target: str) -> str:
    """An origin-form target (path, optional "?query") with its path normalised; raises UnsafeTarget.

    The query is kept as received, but control characters are refused in it too.
    """
    path, has_query, query = target.partition("?")
    if query and _CONTROL.search(query):
        raise UnsafeTarget("a control character in the query")
    return normalise_path(path) + has_query + query
