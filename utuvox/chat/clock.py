"""The one clock the rules read: trio's for durations, UTC for timestamps.

Every timeout, rate bucket, login delay, rejoin grace and keepalive measures time with :meth:`Clock.now`,
which is ``trio.current_time()``: the same clock that ``trio.sleep`` and ``trio.move_on_after`` wait on,
so a test run under ``trio.testing.MockClock`` drives every one of them, and a deadline computed from
``now()`` can be slept until. What a person reads (an event's ``ts``, the day an upload quota counts
against) comes from :meth:`Clock.wall`.

The pieces that measure time take a ``Clock``; the server makes one and hands it to all of them, and a
test may hand them its own (a subclass with another ``wall``, to cross midnight).
"""

from __future__ import annotations

import time
from datetime import datetime

import trio

from utuvox.protocol import utc_now


class Clock:
    """Monotonic seconds for durations (:meth:`now`), UTC date and time for timestamps (:meth:`wall`)."""

    __slots__ = ()

    def now(self) -> float:
        """Seconds on trio's clock. Outside a trio run (a script, a synchronous unit test) there is no
        trio clock, and the process's monotonic clock stands in; one object never sees both, since it
        lives either in a run or outside one."""
        try:
            return trio.current_time()
        except RuntimeError:
            return time.monotonic()

    def wall(self) -> datetime:
        """The date and time now, in UTC."""
        return utc_now()


__all__ = ["Clock"]
