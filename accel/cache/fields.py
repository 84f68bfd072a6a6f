"""Header fields as plain tuples, and the field-value syntax shared by the cache rules.

A message's header section is ``Fields``: ``(name, value)`` pairs with lower-case
names and latin-1 decoded values, in received order, one pair per field line.
This module reads them (RFC 9110 §5.2-§5.3), splits list-based values while
respecting quoted strings (§5.6.1, §5.6.4) and compares entity-tags (§8.8.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

Fields = tuple[tuple[str, str], ...]

OWS = " \t"


def get_all(fields: Fields, name: str) -> list[str]:
    """Values of every line of field ``name``, in received order."""
    name = name.lower()
    values = []  # (a loop: a comprehension is a call of its own, and most fields are not the one asked for)
    for key, value in fields:
        if key == name:
            values.append(value)
    return values


def get_one(fields: Fields, name: str) -> str | None:
    """The field's value, lines joined by ", " (RFC 9110 §5.3); None when absent."""
    values = get_all(fields, name)
    if not values:
        return None
    return ", ".join(values)


def get_list(fields: Fields, name: str) -> list[str]:
    """Members of a list-based field across all its lines (RFC 9110 §5.6.1)."""
    members: list[str] = []
    for value in get_all(fields, name):
        members.extend(split_list(value))
    return members


def split_list(value: str, separator: str = ",") -> list[str]:
    """Split ``#element`` on commas outside quoted strings; trim OWS, drop empty members (§5.6.1).

    ``separator=";"`` splits parameters the same way (§5.6.6).
    """
    members: list[str] = []
    current: list[str] = []
    in_quotes = escaped = False
    for char in value:
        if in_quotes:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == separator:
            members.append("".join(current))
            current = []
            continue
        current.append(char)
    members.append("".join(current))
    return [member.strip(OWS) for member in members if member.strip(OWS)]


def unquote(text: str) -> str:
    """The content of a quoted-string with its quoted-pairs resolved (§5.6.4); other text unchanged."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    out: list[str] = []
    escaped = False
    for char in text[1:-1]:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def without(fields: Fields, names: Iterable[str]) -> Fields:
    """``fields`` minus every line whose name is in ``names``."""
    drop = {name.lower() for name in names}
    return tuple((key, value) for key, value in fields if key not in drop)


def replace(fields: Fields, name: str, values: Iterable[str]) -> Fields:
    """Replace all lines of ``name`` by one line per value, placed where the first old line was (else appended)."""
    name = name.lower()
    new_lines = tuple((name, value) for value in values)
    out: list[tuple[str, str]] = []
    placed = False
    for key, value in fields:
        if key == name:
            if not placed:
                out.extend(new_lines)
                placed = True
            continue
        out.append((key, value))
    if not placed:
        out.extend(new_lines)
    return tuple(out)


# --- entity-tags (RFC 9110 §8.8.3) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityTag:
    """An entity-tag: ``opaque`` includes its double quotes, ``weak`` marks the ``W/`` prefix."""

    opaque: str
    weak: bool

    def __str__(self) -> str:
        return ("W/" if self.weak else "") + self.opaque


def parse_entity_tag(text: str) -> EntityTag | None:
    """``entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE``; None when malformed (§8.8.3)."""
    text = text.strip(OWS)
    weak = text.startswith("W/")
    opaque = text[2:] if weak else text
    if len(opaque) < 2 or opaque[0] != '"' or opaque[-1] != '"' or '"' in opaque[1:-1]:
        return None
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in opaque):
        return None
    return EntityTag(opaque, weak)


def parse_entity_tags(value: str) -> list[EntityTag]:
    """The valid entity-tags of an ``#entity-tag`` list (malformed members are skipped)."""
    tags = (parse_entity_tag(member) for member in split_list(value))
    return [tag for tag in tags if tag is not None]


def strong_match(a: EntityTag | None, b: EntityTag | None) -> bool:
    """§8.8.3.2 strong comparison: both strong and character-for-character identical."""
    return a is not None and b is not None and not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag | None, b: EntityTag | None) -> bool:
    """§8.8.3.2 weak comparison: opaque tags identical, weakness ignored."""
    return a is not None and b is not None and a.opaque == b.opaque
