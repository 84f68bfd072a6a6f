"""Writing to a plain TCP transport at once.

Twisted's ``write`` queues the bytes and asks the reactor to watch the socket for writability: two
epoll_ctl calls and a loop turn before the ``send``, and two more calls after it. A response or a request
that fits the socket's buffer (nearly all of them) can leave in a ``send`` right away; what does not fit,
and everything on a transport that already has bytes queued, goes through ``write`` as before, in order.

The last bytes before a close are sent with ``MSG_MORE`` (``write_now(..., last=True)``): the kernel holds
them until the close, which sends them with its FIN in one segment rather than two, as nginx does with
``TCP_CORK``. The client gets one packet and one wake-up fewer per connection. The caller closes right
after: held bytes are sent by the close, by a later ``send`` without the flag, or by Twisted's own write of
what did not fit.
"""

from __future__ import annotations

from socket import MSG_MORE

from twisted.internet import tcp

from accel.http.listening import AcceptedConnection

PLAIN_TCP = frozenset((tcp.Server, tcp.Client, AcceptedConnection))  # the transports' exact types


def nothing_queued(transport) -> bool:
    """Whether ``transport`` is an open plain TCP one with none of its bytes waiting for the reactor: what is
    written now may go straight to the socket, and a close may happen at once."""
    return (type(transport) in PLAIN_TCP and transport.connected and not transport.disconnecting
            and not transport._writeDisconnected and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer))


def write_now(transport, data: bytes, last: bool = False) -> None:
    """``transport.write(data)``, sent at once when ``transport`` is plain TCP with nothing queued; ``last``:
    the caller closes the connection right after, and the bytes may wait for the close's FIN."""
    if nothing_queued(transport):
        try:
            sent = transport.socket.send(data, MSG_MORE if last else 0)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # Twisted's own write meets the error again and reports it
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
