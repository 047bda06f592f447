"""The instance's one timer, on a timerfd: asyncio's own timers fire up to a millisecond late.

asyncio gives epoll_wait its timeout in whole milliseconds, rounded up, so `call_at` runs its
callback 0-1 ms after the time asked for. For a master that is advert jitter: the router sets
the next advert one interval after the moment it sent the last one, so every advert carries the
lateness of its wake-up (measured on the wire by bench.jitter: ~0.5 ms typical, 1 ms worst,
keepalived ~0.2 ms). A timerfd expires with the kernel's high-resolution timers and makes its
descriptor readable, which the loop's epoll watches like any socket, so the callback runs as
soon as the loop gets to it. Where timerfd is not available, the timer falls back to call_at.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable

__all__ = ["PreciseTimer"]

CLOCK_MONOTONIC = 1  # what time.monotonic() and so asyncio's loop.time() read
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                         ctypes.POINTER(_Itimerspec)]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


class PreciseTimer:
    """One re-armable timer on the loop's clock: `arm(when)`, `cancel()`, `when()`; `close()` at the end."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop, self.callback = loop, callback
        self._when: float | None = None
        self._handle: asyncio.TimerHandle | None = None  # the fallback without timerfd
        self._fd = -1
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        if _LIBC is not None:
            fd = _LIBC.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                loop.add_reader(fd, self._expired)

    def when(self) -> float | None:
        """The time it is armed for, None when disarmed."""
        return self._when

    def arm(self, when: float) -> None:
        self._when = when
        if self._fd >= 0:
            self._settime(when)
        else:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self.loop.call_at(when, self._fallback)

    def set(self, when: float | None) -> None:
        """Armed for `when` (None: disarmed); nothing to do when it is already."""
        if when == self._when:
            return
        if when is None:
            self.cancel()
        else:
            self.arm(when)

    def fire_if_due(self) -> None:
        """Run the callback now if its time has come (for a caller about to do other work first)."""
        if self._when is not None and self._when <= self.loop.time():
            self.cancel()
            self.callback()

    def cancel(self) -> None:
        self._when = None
        if self._fd >= 0:
            self._settime(0.0)
        elif self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        self.cancel()
        if self._fd >= 0:
            self.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _settime(self, when: float) -> None:
        assert _LIBC is not None
        spec = self._spec  # one structure for every call: this runs at each advert
        sec = int(when)
        # an absolute time of 0 disarms; any other, even in the past (fires at once), arms
        spec.it_value.tv_sec, spec.it_value.tv_nsec = (sec, max(1, int((when - sec) * 1e9))) if when > 0 else (0, 0)
        if _LIBC.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def _expired(self) -> None:
        """No read(2) of the expiry count: timerfd_settime resets it, and the callback arms the next
        time (or we disarm below), so the descriptor stops being readable without one more system
        call per advert. Readable but re-armed for later or cancelled since: nothing is due."""
        when = self._when
        if when is None or when > self.loop.time() + 1e-6:
            return
        self._fire()
        if self._when is None and self._fd >= 0:
            self._settime(0.0)  # not re-armed by the callback: disarming clears the readable state

    def _fallback(self) -> None:
        self._handle = None
        self._fire()

    def _fire(self) -> None:
        if self._when is None:
            return
        self._when = None
        self.callback()
