"""Header rules (``[[server.header]]``, ``[[route.header]]``), applied to one side of a message (pure).

Like mod_headers: ``set`` replaces every field of that name with one, ``append`` adds one more field line,
``unset`` removes every field of that name. Request rules change what goes to the origin, after accel's own
forwarding fields are made. Response rules change what the client gets, when the header section is
written: after the cache, so a stored response never carries their values. A response rule applies to
responses below 400 unless ``always``, which applies it to every response, error pages and refusals
included (Apache's ``Header always``). The configuration refuses rules on hop-by-hop and framing fields.
"""

from __future__ import annotations

from collections.abc import Iterable

from accel.config import HeaderRule

RawFields = list[tuple[bytes, bytes]]


class HeaderRules:
    """One route's rules, compiled: ``(action, lower-case name, name as written, value)`` for each side."""

    __slots__ = ("request", "response")

    def __init__(self, rules: Iterable[HeaderRule]):
        compiled = {"request": [], "response": []}
        for rule in rules:
            name = rule.name.encode("latin-1")
            compiled[rule.side].append((rule.action, name.lower(), name, rule.value.encode("latin-1"), rule.always))
        self.request = tuple(compiled["request"])
        self.response = tuple(compiled["response"])

    def to_origin(self, fields: RawFields) -> RawFields:
        """The request fields for the origin with the request rules applied in order."""
        for action, lower, name, value, _ in self.request:
            if action != "append":
                fields = [(n, v) for n, v in fields if n.lower() != lower]
            if action != "unset":
                fields.append((name, value))
        return fields

    def to_client(self, headers, status: int) -> None:
        """Apply the response rules for a response with ``status`` to ``headers`` (twisted.web's Headers,
        or anything with setRawHeaders / addRawHeader / removeHeader)."""
        for action, lower, name, value, always in self.response:
            if status >= 400 and not always:
                continue
            if action == "set":
                headers.setRawHeaders(name, [value])
            elif action == "append":
                headers.addRawHeader(name, value)
            else:
                headers.removeHeader(name)

    def touches(self, status: int, names: Iterable[bytes]) -> bool:
        """Whether a response rule for ``status`` names one of the fields ``names``."""
        lowered = {name.lower() for name in names}
        return any((status < 400 or always) and lower in lowered for _, lower, _, _, always in self.response)


NO_RULES = HeaderRules(())
