"""Reading values out of TOML tables: ``Reader`` takes typed values out of one table and names the dotted key
(and its line) in every ``ConfigError``; file paths relative to the configuration file; network lists."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from accel.config.settings import COMMAND_LINE, ConfigError

class Reader:
    """Takes typed values out of one TOML table, reporting mistakes with the dotted key."""

    def __init__(self, source: str, table: dict[str, Any], path: str, text: str):
        self.source, self.table, self.path, self.text = source, table, path, text
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, expected: str, got: object = None) -> ConfigError:
        return ConfigError(self.source, self.key(name), expected, got, line_of(self.text, self.path, name))

    def get(self, name: str, kind: type | tuple[type, ...], expected: str, default: Any = None) -> Any:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if not isinstance(value, kind) or (kind in (int, float, (int, float)) and isinstance(value, bool)):
            raise self.fail(name, expected, value)
        return value

    def choice(self, name: str, allowed: tuple[bool | str, ...], expected: str, default: Any) -> Any:
        """One of ``allowed`` (booleans and strings; an integer is neither)."""
        value = self.get(name, (bool, str), expected, default)
        if value not in allowed:
            raise self.fail(name, expected, value)
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self.get(name, (int, float), "a number of seconds greater than 0", default)
        if value <= 0:
            raise self.fail(name, "a number of seconds greater than 0", value)
        return float(value)

    def seconds_or_zero(self, name: str, default: float | None) -> float | None:
        """A number of seconds, 0 (none) or more."""
        value = self.get(name, (int, float), "a number of seconds, 0 or more", default)
        if value is not None and value < 0:
            raise self.fail(name, "a number of seconds, 0 or more", value)
        return value if value is None else float(value)

    def positive_int(self, name: str, default: int) -> int:
        value = self.get(name, int, "a whole number greater than 0", default)
        if value <= 0:
            raise self.fail(name, "a whole number greater than 0", value)
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(name, (list, str), "a string or a list of strings", None)
        if value is None:
            return default
        if isinstance(value, str):
            return (value,)
        if not all(isinstance(v, str) for v in value):
            raise self.fail(name, "a list of strings", value)
        return tuple(value)

    def table_of(self, name: str) -> dict[str, Any]:
        return self.get(name, dict, "a table", {})

    def reject_unknown(self) -> None:
        for name in self.table:
            if name not in self.seen:
                raise self.fail(name, "a known key (see the configuration reference in README.md)", None)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")


def _sections(text: str) -> list[tuple[str, int, int]]:
    """(dotted path with array indexes such as "route[1].cache", first line, last line) of every table.

    The top level is the path "". Good enough for messages: dotted keys and inline tables are searched
    as text within the table that holds them.
    """
    lines = text.splitlines()
    counts: dict[str, int] = {}
    sections: list[tuple[str, int, int]] = []
    start, path = 1, ""
    for number, line in enumerate(lines, 1):
        found = _HEADER.match(line)
        if not found:
            continue
        sections.append((path, start, number - 1))
        names = [part.strip().strip("\"'") for part in found.group(2).split(".")]
        resolved = []
        for i, name in enumerate(names):
            plain = ".".join(names[: i + 1])
            if found.group(1) == "[[" and i == len(names) - 1:
                counts[plain] = counts.get(plain, 0) + 1
            index = counts.get(plain)
            resolved.append(f"{name}[{index - 1}]" if index else name)
        path, start = ".".join(resolved), number
    sections.append((path, start, len(lines)))
    return sections


def line_of(text: str, table: str, name: str) -> int | None:
    """The line of key ``name`` in the table ``table`` (a dotted path such as "route[1]" or "tls"), for
    messages about values that parsed but are wrong. A table that has no header of its own is an inline one
    ("tls.certificates[1]", "route[0].cache = {...}"): its key in the enclosing table names the line."""
    lines = text.splitlines()
    sections = {section: (first, last) for section, first, last in reversed(_sections(text))}
    while table not in sections and table:
        parent, _, inline = table.rpartition(".")
        table, name = parent, inline.split("[", 1)[0]
    first, last = sections.get(table, (1, len(lines)))
    key = re.compile(r"^\s*[\"']?" + re.escape(name) + r"[\"']?\s*=")
    for number in range(first, last + 1):
        if key.match(lines[number - 1]):
            return number
    return None


def table_line(text: str, table: str) -> int | None:
    """The header line of a table such as "route[1]"."""
    return next((first for section, first, _ in _sections(text) if table and section == table), None)


def path_value(r: Reader, name: str, expected: str = "a file path") -> str | None:
    """A file or directory path; relative paths are relative to the configuration file."""
    value = r.get(name, str, expected)
    if value is None:
        return None
    if not value:
        raise r.fail(name, expected, value)
    return relative_to_file(r.source, value)


def relative_to_file(source: str, path: str) -> str:
    """``path`` made absolute: a relative one is taken relative to the folder of the file ``source``."""
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(source)), os.path.expanduser(path)))


# Endpoint arguments that are file paths, by endpoint type (Twisted's ssl: and unix: server endpoints).
_ENDPOINT_PATHS = {"ssl": ("privateKey", "certKey", "extraCertChain", "caCertsDir", "dhParameters"), "unix": ("address",)}


def endpoint_relative_to_file(source: str, description: str) -> str:
    """An endpoint description whose relative file paths (an ``ssl:`` endpoint's key and certificate, a ``unix:``
    socket) are made relative to the configuration file, like every other path in it."""
    kind, _, rest = description.partition(":")
    names = _ENDPOINT_PATHS.get(kind.lower())
    if not names or not rest:
        return description
    parts = re.split(r"(?<!\\):", rest)
    for i, part in enumerate(parts):
        name, equals, value = part.partition("=")
        path = value if equals else name
        if (equals and name in names or not equals and i == 0 and kind.lower() == "unix") and path:
            if not os.path.isabs(path):
                absolute = relative_to_file(source, path).replace(":", "\\:")
                parts[i] = f"{name}={absolute}" if equals else absolute
    return f"{kind}:{':'.join(parts)}"


def networks(r: Reader, name: str, default: tuple = (), word: str = "unix") -> tuple[tuple, bool]:
    """(networks, whether ``word`` is listed): "unix" stands for peers on UNIX sockets, which have no IP
    address; "local" (``allow`` / ``deny``) for those and the loopback addresses."""
    if name not in r.table:
        r.seen.add(name)
        return default, False
    networks, listed = [], False
    for value in r.strings(name):
        if value == word:
            listed = True
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise r.fail(name, f'IP addresses or networks such as 10.0.0.0/8, or "{word}"', value) from None
    return tuple(networks), listed


def located(error: ConfigError) -> ConfigError:
    """``error`` with its line, for a problem found after parsing (a certificate, a directory): the key's line
    in the file it names, when the key is there."""
    if error.line is not None or error.source == COMMAND_LINE:
        return error
    try:
        with open(error.source, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return error
    table, _, name = error.key.rpartition(".")
    line = line_of(text, table, name.split("[", 1)[0]) if name else None
    return ConfigError(error.source, error.key, error.expected, error.got, line) if line else error
