"""The event loop accel serves on: Twisted's epoll reactor, dispatching each ready descriptor directly.

Twisted's ``EPollReactor.doPoll`` runs every event through ``log.callWithLogger``: it asks the descriptor for
its log prefix and builds a legacy logging context (a dict copied and pushed per event) so that messages of
the old ``twisted.python.log`` API carry a "system". accel logs with ``twisted.logger`` (namespaces, not
systems), and that wrapping was about a tenth of a cache hit's CPU. ``DispatchingReactor`` calls
``_doReadOrWrite`` itself, which already catches what a protocol raises, logs it and drops the connection;
anything escaping it is logged by the reactor's main loop, as before.
"""

from __future__ import annotations

import sys

from twisted.internet.epollreactor import EPollReactor


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
            if selectable is not None:  # (closed by an earlier event of this batch)
                handle(selectable, fd, event)

    doIteration = doPoll


def install() -> bool:
    """Install ``DispatchingReactor`` unless a reactor is installed already (``twistd --reactor``, or an
    import of the default one); True when it was installed."""
    if "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    installReactor(DispatchingReactor())
    return True
