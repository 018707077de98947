"""The supervisor's loop over the children of the process tree: spawn, watch, reap, respawn.

Each child holds a place (the inference process, HTTP worker 1..N), and the loop keeps every
place filled, as gunicorn's arbiter does:

- A child that exits is reaped and replaced. One that is alive but whose heartbeat is older
  than ``heartbeat_timeout_s`` (or that has not begun beating ``startup_timeout_s`` after its
  start) is hung: killed with SIGKILL, reaped and replaced.
- A replacement waits ``BACKOFF_FIRST_S``, doubled for each earlier restart of its place
  within the last minute, at most ``BACKOFF_MAX_S``: a child that dies at once does not spin.
- A tree that needs more than ``max_restarts_per_minute`` restarts within 60 s is not
  healing: every child is stopped and the supervisor exits 1, for the orchestrator to take
  over. So is a child that fails before its first heartbeat at the tree's start: a bad
  configuration fails the same way on every restart.
- Every restart is logged and counted in ``digits_child_restarts_total{kind, reason}``.

The loop sleeps until the next thing that can happen: a child's exit (its sentinel), a stop
signal (the wake pipe), a heartbeat falling due, or a replacement's start.
"""

import logging
import multiprocessing.connection
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from service.config import Settings
from service.heartbeat import Heartbeat
from service.metrics import SupervisorMetrics

__all__ = ["Place", "Supervisor"]

log = logging.getLogger(__name__)

Kind = Literal["http_worker", "inference"]
Reason = Literal["exited", "hung"]

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
WINDOW_S = 60.0
KILL_WAIT_S = 5.0  # a process in uninterruptible sleep (a driver call) dies only when the call returns


@dataclass
class Place:
    """One child's place in the tree: what runs there, and the process that runs it now."""

    name: str
    kind: Kind
    target: Callable[..., None]
    args: tuple[Any, ...]  # the target's, before the place's heartbeat
    heartbeat: Heartbeat
    process: BaseProcess | None = None
    started_at: float = 0.0
    replace_at: float | None = None  # dead: when its replacement starts
    reason: Reason = "exited"  # why the last process here ended
    restarts: deque[float] = field(default_factory=deque)  # this place's, within the last minute
    spawned: int = 0  # processes started here so far


class Supervisor:
    def __init__(self, context: SpawnContext, places: list[Place], settings: Settings, metrics: SupervisorMetrics) -> None:
        self.context = context
        self.places = places
        self.settings = settings
        self.metrics = metrics
        self.restarts: deque[float] = deque()  # the tree's, within the last minute

    def run(self, wake: int, stopping: Callable[[], bool]) -> int:
        """Fill every place and keep them filled until ``stopping()`` (0) or the tree gives up (1).

        ``wake`` is the read end of a pipe written on every stop signal. The children are
        still running when it returns: stopping them is ``stop``'s.
        """
        for place in self.places:
            self._spawn(place)
        while not stopping():
            self._sleep(wake)
            if stopping():
                break
            now = time.monotonic()
            for place in self.places:
                if place.process is None:
                    if place.replace_at is not None and now >= place.replace_at:
                        self._respawn(place)
                    continue
                reason = self._ended(place, now)
                if reason is None:
                    continue
                if place.process is not None or not self._schedule(place, reason, now):  # unkillable, or not healing
                    return 1
        return 0

    def _spawn(self, place: Place) -> None:
        place.heartbeat.clear()
        process = self.context.Process(target=place.target, args=(*place.args, place.heartbeat), name=place.name)
        process.start()
        place.process, place.started_at, place.replace_at = process, time.monotonic(), None
        place.spawned += 1

    def _respawn(self, place: Place) -> None:
        self._spawn(place)
        assert place.process is not None
        self.metrics.observe_restart(place.kind, place.reason)
        log.warning("restarted %s as pid %s (the last one %s)", place.name, place.process.pid, place.reason)

    def _deadline(self, place: Place) -> float:
        last = place.heartbeat.last()
        return place.started_at + self.settings.startup_timeout_s if last is None else last + self.settings.heartbeat_timeout_s

    def _ended(self, place: Place, now: float) -> Reason | None:
        """Whether the process here has ended (reaped) or hangs (killed, then reaped; kept
        in its place when it outlives the kill, and then the tree gives up)."""
        process = place.process
        assert process is not None
        if process.is_alive():
            if now < self._deadline(place):
                return None
            last = place.heartbeat.last()
            since = f"for {now - last:.1f} s" if last is not None else f"{now - place.started_at:.1f} s after its start"
            log.error("%s (pid %s) is hung, no heartbeat %s: killing it", place.name, process.pid, since)
            process.kill()
            reason: Reason = "hung"
        else:
            reason = "exited"
        process.join(KILL_WAIT_S)
        if process.is_alive():
            log.error("%s (pid %s) outlived SIGKILL for %.0f s: stopping every process", place.name, process.pid, KILL_WAIT_S)
            return reason
        log.error("%s (pid %s) ended with exit code %s", place.name, process.pid, process.exitcode)
        if process.pid is not None:
            self.metrics.forget_process(process.pid)
        place.process = None
        return reason

    def _schedule(self, place: Place, reason: Reason, now: float) -> bool:
        """Its replacement, after a backoff; False when the tree gives up instead."""
        if reason == "exited" and place.heartbeat.last() is None and place.spawned == 1:
            log.error("%s failed to start: stopping every process", place.name)
            return False
        for window in (self.restarts, place.restarts):
            while window and window[0] <= now - WINDOW_S:
                window.popleft()
        if len(self.restarts) >= self.settings.max_restarts_per_minute:
            log.error(
                "restart limit reached (%d restarts within %.0f s, DIGITS_MAX_RESTARTS_PER_MINUTE=%d): stopping every process",
                len(self.restarts),
                WINDOW_S,
                self.settings.max_restarts_per_minute,
            )
            return False
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** len(place.restarts))
        self.restarts.append(now)
        place.restarts.append(now)
        place.reason, place.replace_at = reason, now + delay
        log.warning("restarting %s in %.1f s", place.name, delay)
        return True

    def _sleep(self, wake: int) -> None:
        """Until a child exits, a signal arrives or the next deadline (a heartbeat, a replacement)."""
        now = time.monotonic()
        deadlines = [place.replace_at if place.process is None else self._deadline(place) for place in self.places]
        due = [deadline for deadline in deadlines if deadline is not None]
        timeout = max(0.0, min(due) - now) + 0.01 if due else None
        sentinels = [place.process.sentinel for place in self.places if place.process is not None]
        multiprocessing.connection.wait([wake, *sentinels], timeout)

    def send(self, kind: Kind, sig: int) -> None:
        """``sig`` to every running child of ``kind``."""
        for place in self.places:
            if place.kind == kind and place.process is not None and place.process.pid is not None and place.process.is_alive():
                os.kill(place.process.pid, sig)

    def stop(self, kind: Kind, grace_s: float) -> None:
        """SIGTERM to every child of ``kind`` at once, SIGKILL to any still running after ``grace_s``."""
        processes = [place.process for place in self.places if place.kind == kind and place.process is not None]
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("%s did not stop within %.0f s: killed", process.name, grace_s)
                process.kill()
                process.join(KILL_WAIT_S)
