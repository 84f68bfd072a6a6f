"""Listening sockets: the accept backlog.

Twisted listens with a backlog of 50. When more clients than that connect at once, the kernel drops
their SYNs and each waits for a retransmission (a second or more): accel listens with nginx's 511
unless the endpoint description sets ``backlog=`` itself. (The kernel caps it at net.core.somaxconn.)
Twisted's TCP port then accepts up to a hundred connections per readable event.
"""

from __future__ import annotations

DEFAULT_BACKLOG = 511
_TAKES_BACKLOG = ("tcp:", "tcp6:", "ssl:", "unix:")


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """``description`` (a Twisted server endpoint string) with ``backlog=`` added when it takes one and
    does not set it."""
    if not description.startswith(_TAKES_BACKLOG) or ":backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"
