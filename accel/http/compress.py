"""Compressors for the content codings accel produces: gzip (zlib, always) and br (the optional brotli package).

``Encoder`` compresses a body as it streams: each ``compress`` returns what can be sent so far (flushed, so a
stream of events is not held back), ``finish`` the end of the stream. Memory stays flat whatever the length.
"""

from __future__ import annotations

import zlib

try:
    import brotli
except ImportError:  # the optional extra accel[brotli]
    brotli = None

BROTLI_AVAILABLE = brotli is not None


class Encoder:
    """One body's compressor for ``coding`` ("gzip" or "br") at ``level`` (1-9)."""

    def __init__(self, coding: str, level: int):
        self.coding = coding
        if coding == "gzip":
            self._zlib = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 16+15: gzip framing
        elif coding == "br" and brotli is not None:
            self._brotli = brotli.Compressor(quality=level)
        else:
            raise ValueError(f"cannot encode {coding!r}")

    def compress(self, data: bytes) -> bytes:
        if self.coding == "gzip":
            return self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        return self._brotli.process(data) + self._brotli.flush()

    def finish(self) -> bytes:
        if self.coding == "gzip":
            return self._zlib.flush(zlib.Z_FINISH)
        return self._brotli.finish()


def encode(coding: str, level: int, body: bytes) -> bytes:
    """A whole body in ``coding`` (for stored responses: done once, not flushed on the way)."""
    if coding == "gzip":
        compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
        return compressor.compress(body) + compressor.flush()
    if coding == "br" and brotli is not None:
        return brotli.compress(body, quality=level)
    raise ValueError(f"cannot encode {coding!r}")
