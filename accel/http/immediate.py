"""Writing to a plain TCP transport at once.

Twisted's ``write`` queues the bytes and asks the reactor to watch the socket for writability: two
epoll_ctl calls and a loop turn before the ``send``, and two more calls after it. A response or a request
that fits the socket's buffer (nearly all of them) can leave in a ``send`` right away; what does not fit,
and everything on a transport that already has bytes queued, goes through ``write`` as before, in order.

The last bytes before a close (``write_now(..., last=True)``) are sent with ``MSG_MORE`` and followed by
the end of the stream (``shutdown(SHUT_WR)``): the kernel sends them with the FIN in one segment rather than
two, as nginx's ``TCP_CORK`` makes it, so the client gets one packet and one wake-up fewer per connection.
They have left before the close: a client that sent more than its last request has those bytes unread at the
close, and the kernel then resets the connection and drops whatever it still held to send. What did not fit
goes through Twisted's own write, without the flag, as before.
"""

from __future__ import annotations

from socket import MSG_MORE, SHUT_WR

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
    nothing follows on this connection (the caller closes it), and the FIN leaves with these bytes."""
    if nothing_queued(transport):
        skt = transport.socket
        try:
            sent = skt.send(data, MSG_MORE if last else 0)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # Twisted's own write meets the error again and reports it
        if sent == len(data):
            if last:
                try:
                    skt.shutdown(SHUT_WR)
                except OSError:
                    pass  # (the peer is gone: the close that follows has nothing to send)
            return
        data = data[sent:]
    transport.write(data)
