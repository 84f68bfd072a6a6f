"""Secondary cache keys: which stored variant a request may use (RFC 9111 §4.1).

A stored response can be reused only if every request field named by its
``Vary`` matches the request that produced it. Matching allows whitespace
changes, combining lines, case-normalising case-insensitive values and
reordering members whose order is insignificant; this module applies exactly
those transformations, listed per field in ``NORMALISATION`` (with weights written
canonically, RFC 9110 §12.4.2), and nothing that could merge requests an origin may
distinguish. Any other field's lines are combined and the optional whitespace
around its commas is normalised (§5.6.1).

The one reduction beyond that is Accept-Encoding, to the codings accel can serve (``servable_codings``):
the cache sends the origin the reduced value instead of the client's, so requests that share a reduced
value are, for the origin, the same request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .fields import Fields, get_all, get_list, split_list


@dataclass(frozen=True, slots=True)
class Normalisation:
    """How one list-based request field may be normalised (§4.1).

    ``lower_values``: the whole member is case-insensitive (codings, charsets, language tags).
    Otherwise only the leading token and parameter names are lower-cased (media ranges,
    whose parameter values can be case-sensitive).
    ``sort_members``: member order carries no meaning, so members are sorted.
    """

    lower_values: bool
    sort_members: bool


NORMALISATION: dict[str, Normalisation] = {
    # §12.5.2: charsets are case-insensitive; order is kept, being deprecated and loosely specified.
    "accept-charset": Normalisation(lower_values=True, sort_members=False),
    # §12.5.4: tags are case-insensitive; preference is by qvalue (§12.4.2), so order carries none.
    "accept-language": Normalisation(lower_values=True, sort_members=True),
    # §12.5.1: type/subtype and parameter names are case-insensitive; parameter values may not be.
    "accept": Normalisation(lower_values=False, sort_members=False),
}


# The content codings accel can serve (its own compression, issue 19), best first; Accept-Encoding is reduced
# to those for Vary, as Varnish does: clients listing codings differently share a variant.
SERVABLE_CODINGS = ("br", "gzip")
IDENTITY = "identity"
_CODING_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 §8.4.1.3


def servable_codings(values: list[str]) -> str:
    """Accept-Encoding reduced to the codings of ``SERVABLE_CODINGS`` it accepts (RFC 9110 §12.5.3: a
    qvalue above 0, by name or through ``*``), e.g. ``"br, gzip"``, or ``"identity"`` when it accepts
    none of them. Sent to the origin in place of the client's value, so the stored variant is one every
    client with the same reduced value can use."""
    weights: dict[str, float] = {}
    for value in values:
        for member in split_list(value):
            parts = split_list(member, ";")
            if not parts:
                continue  # (";" alone names no coding)
            coding, *params = parts
            q = 1.0
            for param in params:
                name, _, text = param.partition("=")
                if name.strip(" \t").lower() == "q":
                    weight = _canonical_weight(text.strip(" \t"))
                    q = float(weight) if weight is not None else 0.0
            coding = coding.lower()
            coding = _CODING_ALIASES.get(coding, coding)
            weights[coding] = max(q, weights.get(coding, 0.0))  # listed twice: the better weight, in any order
    star = weights.get("*", 0.0)
    accepted = [coding for coding in SERVABLE_CODINGS if weights.get(coding, star) > 0]
    return ", ".join(accepted) or IDENTITY


def vary_names(fields: Fields) -> tuple[str, ...] | None:
    """Lower-cased, de-duplicated field names listed by ``Vary``; None for ``*``, which never matches."""
    names: list[str] = []
    for member in get_list(fields, "vary"):
        name = member.lower()
        if name == "*":
            return None
        if name not in names:
            names.append(name)
    return tuple(names)


_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?", re.ASCII)


def _canonical_weight(value: str) -> str | None:
    """RFC 9110 §12.4.2: ``qvalue`` written shortest (``0.50`` → ``0.5``, ``1.000`` → ``1``); None if invalid."""
    if not _QVALUE.fullmatch(value):
        return None
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


def _normalise_member(member: str, rule: Normalisation) -> str:
    """Drop optional whitespace around ``;`` and ``=``, lower-case what the rule allows and write the
    weight canonically; a trailing ``q=1`` is the default weight (§12.4.2) and is dropped."""
    parts = split_list(member, ";")
    if not parts:
        return ""
    head, params = parts[0], []
    for param in parts[1:]:
        name, sep, value = param.partition("=")
        name, value = name.strip(" \t").lower(), value.strip(" \t")
        if name == "q" and _canonical_weight(value) is not None:
            value = _canonical_weight(value)
        params.append(name + sep + (value.lower() if rule.lower_values else value))
    if params and params[-1] == "q=1":
        params.pop()
    return ";".join([head.lower(), *params])


def normalise_field(name: str, values: list[str]) -> str:
    """One comparable value for a request field's lines (§4.1).

    Accept-Encoding is reduced to the codings accel can serve (``servable_codings``). Fields listed in
    ``NORMALISATION`` are split into members, normalised and re-joined with ","; any other field keeps
    its members' text and order, joined with ", ".
    """
    if name.lower() == "accept-encoding":
        return servable_codings(values)
    rule = NORMALISATION.get(name.lower())
    if rule is None:
        return ", ".join(member for value in values for member in split_list(value))
    members = [_normalise_member(member, rule) for value in values for member in split_list(value)]
    members = [member for member in members if member]
    if rule.sort_members:
        members.sort()
    return ",".join(members)


def secondary_key(names: tuple[str, ...], request_fields: Fields) -> str:
    """Stable text of the request's values for the ``Vary`` names; an absent field differs from an empty one."""
    entries = []
    for name in names:
        values = get_all(request_fields, name)
        entries.append([name, normalise_field(name, values) if values else None])
    return json.dumps(entries, separators=(",", ":"))


def matches(stored_vary_names: tuple[str, ...] | None, stored_secondary_key: str, request_fields: Fields) -> bool:
    """§4.1: the request selects this stored response; ``Vary: *`` (None) never matches."""
    if stored_vary_names is None:
        return False
    return secondary_key(stored_vary_names, request_fields) == stored_secondary_key


def stored_request_fields(stored_vary_names: tuple[str, ...] | None, stored_secondary_key: str) -> Fields:
    """The stored request's values of the fields ``Vary`` names, in the normalised form ``secondary_key``
    kept (equivalent by §4.1); a field the stored request lacked is absent."""
    if not stored_vary_names:
        return ()
    return tuple((name, value) for name, value in json.loads(stored_secondary_key) if value is not None)
