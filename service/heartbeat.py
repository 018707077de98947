"""Heartbeats from the children of the process tree to their supervisor, through shared memory.

Each child has a slot holding the time (``CLOCK_MONOTONIC``, one clock for every process of
the machine) of its event loop's last beat, 0 until the first. Beats come from the event
loop itself, not from a thread: a loop blocked in a C call, deadlocked or stopped beats no
more although its process is alive, and that is the hang the supervisor must see.
"""

import asyncio
import ctypes
import time
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["BEAT_INTERVAL_S", "Heartbeat", "heartbeats", "keep_beating"]

BEAT_INTERVAL_S = 0.1  # uvicorn's tick; a beat is one store to shared memory


@dataclass(frozen=True)
class Heartbeat:
    """One child's slot; passed to the child when it is spawned (the memory is inherited)."""

    times: Any  # ctypes array of c_double in shared memory (typeshed has no name for it)
    slot: int

    def beat(self) -> None:
        self.times[self.slot] = time.monotonic()

    def last(self) -> float | None:
        """The time of the last beat; None before the first."""
        value = float(self.times[self.slot])
        return value or None

    def clear(self) -> None:
        """Before a process takes the slot: its predecessor's beats are not its own."""
        self.times[self.slot] = 0.0


def heartbeats(context: BaseContext, count: int) -> list[Heartbeat]:
    """``count`` slots in one block of shared memory, made before any child starts."""
    times = context.RawArray(ctypes.c_double, count)
    return [Heartbeat(times, slot) for slot in range(count)]


async def keep_beating(heartbeat: Heartbeat, interval_s: float = BEAT_INTERVAL_S) -> None:
    """Beat from this event loop until cancelled."""
    while True:
        heartbeat.beat()
        await asyncio.sleep(interval_s)
