"""The event loop accel serves on: Twisted's epoll reactor, dispatching each ready descriptor directly.

Twisted's ``EPollReactor.doPoll`` runs every event through ``log.callWithLogger``: it asks the descriptor for
its log prefix and builds a legacy logging context (a dict copied and pushed per event) so that messages of
the old ``twisted.python.log`` API carry a "system". accel logs with ``twisted.logger`` (namespaces, not
systems), and that wrapping was about a tenth of a cache hit's CPU. ``DispatchingReactor`` calls
``_doReadOrWrite`` itself, which already catches what a protocol raises, logs it and drops the connection;
anything escaping it is logged by the reactor's main loop, as before.

The commonest event, a plain TCP connection with bytes to read and nothing else to report, takes a shorter
way still: what ``_doReadOrWrite`` → ``doRead`` → ``_dataReceived`` do for it is done by one function
(``accel.http.listening.read_once``: one ``recv``, then the protocol's ``dataReceived``), with their
outcomes: the peer's end of stream is ``ConnectionDone``, a failed ``recv`` is ``ConnectionLost``, and
whatever the protocol raises is logged and drops that connection, never the loop. A new connection waiting
on one of accel's listening ports is accepted by the port's ``doRead`` called from the loop itself: it
handles and logs its own errors.

Between two polls Twisted's ``runUntilCurrent`` looks for calls from other threads and delayed calls that are
due; on most turns there are none, and the loop skips it (``DispatchingReactor.runUntilCurrent``).
"""

from __future__ import annotations

import sys
from select import EPOLLIN

from twisted.internet.epollreactor import EPollReactor

from accel.http.immediate import PLAIN_TCP as _READS_DIRECTLY  # their doRead is Connection.doRead
from accel.http.listening import ACCEPTING as _ACCEPTS_DIRECTLY  # their doRead catches and logs everything
from accel.http.listening import read_once


class DispatchingReactor(EPollReactor):
    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1  # wait until something happens
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except InterruptedError:
            return
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue  # (closed by an earlier event of this batch)
            if event == EPOLLIN:
                kind = type(selectable)
                if kind in _READS_DIRECTLY:
                    read_once(selectable)  # tcp.Connection.doRead, as _doReadOrWrite runs it
                    continue
                if kind in _ACCEPTS_DIRECTLY:
                    selectable.doRead()  # (it logs what goes wrong itself, and reports nothing back)
                    continue
            handle(selectable, fd, event)

    doIteration = doPoll

    def runUntilCurrent(self) -> None:
        """Twisted's, when there is something for it to do: a call from another thread, a delayed call that is
        new or due, cancelled ones to clear out, or the stop to announce (most turns have none of these)."""
        pending = self._pendingTimedCalls
        if (self.threadCallQueue or self._newTimedCalls or self._justStopped or self._cancellations > 50
                or (pending and pending[0].time <= self.seconds())):
            super().runUntilCurrent()


def install() -> bool:
    """Install ``DispatchingReactor`` unless a reactor is installed already (``twistd --reactor``, or an
    import of the default one); True when it was installed."""
    if "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    installReactor(DispatchingReactor())
    return True
