"""The token bucket behind ``rate_limit`` (pure: state in, state out, ``now`` as an argument).

A bucket holds up to ``capacity`` tokens (``requests + burst``) and gains ``rate`` tokens a second
(``requests / per``). A request takes one token; without one it is refused, and ``Retry-After`` says
how long until the next token (RFC 9110 §10.2.3, in whole seconds, at least 1; RFC 6585 §4 for 429).
A new bucket starts full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from accel.config import RateLimit


@dataclass(frozen=True, slots=True)
class Taken:
    allowed: bool
    tokens: float  # left in the bucket after this request
    retry_after: int  # seconds until a token is back, when refused (0 when allowed)


def rate_of(limit: RateLimit) -> float:
    return limit.requests / limit.per


def capacity_of(limit: RateLimit) -> float:
    return float(limit.requests + limit.burst)


def take(tokens: float | None, stamp: float, now: float, rate: float, capacity: float) -> Taken:
    """Refill a bucket that held ``tokens`` at ``stamp`` (None: a new bucket) up to ``now``, and take one."""
    if tokens is None:
        tokens = capacity
    else:
        tokens = min(capacity, tokens + max(0.0, now - stamp) * rate)  # a clock going back adds nothing
    if tokens >= 1.0:
        return Taken(True, tokens - 1.0, 0)
    return Taken(False, tokens, max(1, math.ceil((1.0 - tokens) / rate)))
