"""How many decoded pixels the service holds at once, and giving memory back after a burst.

A 205 KB PNG can hold 64 megapixels (the decoder's own cap): 192 MB as RGB, more while it is
resized. With one decode per thread, a burst of such uploads took `serve` from 1.3 to 2.9 GB
and it stayed at 2.0 GB (issue #23). So a decode first reserves the pixels it will hold (read
from the header: `hashtagkit.images.decoded_pixels`) from a budget shared by every request,
waiting while others hold it; one image larger than the whole budget still runs, alone. When the last decode of a
burst finishes, glibc is asked to return its freed heap to the system (`malloc_trim`), which
it otherwise keeps for later allocations."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time

log = logging.getLogger("hashtagkit.serve")

DECODE_PIXELS = 128_000_000  # two 64-megapixel photos, ~400 MB as RGB, decoded at once at most
TRIM_EVERY_S = 1.0  # malloc_trim at most this often


def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


class PixelBudget:
    """An asyncio budget of pixels being decoded (see the module docstring)."""

    def __init__(self, limit: int = DECODE_PIXELS) -> None:
        self.limit = int(limit)
        self.in_flight = 0
        self.peak = 0  # the most pixels held at once: what a test and /v1/info read
        self._changed: asyncio.Condition | None = None
        self._trim = _malloc_trim()
        self._trimmed = 0.0

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, pixels: int) -> int:
        """Wait until `pixels` fit under the limit (or nothing else is decoding); returns what
        was taken, for `release`."""
        pixels = max(0, int(pixels))
        async with self._condition():
            await self._changed.wait_for(lambda: self.in_flight == 0 or self.in_flight + pixels <= self.limit)
            self.in_flight += pixels
            self.peak = max(self.peak, self.in_flight)
        return pixels

    async def release(self, pixels: int) -> None:
        async with self._condition():
            self.in_flight -= pixels
            self._changed.notify_all()
            idle = self.in_flight == 0
        if idle and pixels and self._trim is not None and time.monotonic() - self._trimmed >= TRIM_EVERY_S:
            self._trimmed = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, self._trim, 0)
