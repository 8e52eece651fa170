"""One timed run at a time across every browser session of this server.

When several people press Run on the live throughput page together, their runs would share the
CPU's cores: every one of them slower, every measurement wrong, and every run's buffers in memory
at once. Instead each run takes a ticket and waits its turn, first come first served; the waiting
page is told how many runs are ahead of it. The queue is one object per server process
(`shared_queue`, a `st.cache_resource`), so every session sees the same one.

A waiting session calls `on_wait(ahead)` every `poll` seconds. On a page that callback draws the
waiting note, and a Streamlit call is also where a session that was closed or rerun stops: the
exception it raises leaves the queue (the ticket is returned in `finally`) instead of keeping a
dead session's place.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import streamlit as st

# Runs allowed to wait; the next one is told the machine is busy instead of queueing forever.
MAX_WAITING = 32


class QueueFull(RuntimeError):
    """More runs are waiting than the queue holds."""


class RunQueue:
    """A first-come-first-served turn for one run at a time (thread-safe)."""

    def __init__(self, max_waiting: int = MAX_WAITING):
        if max_waiting < 0:
            raise ValueError("max_waiting must be >= 0.")
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._tickets: deque[int] = deque()  # arrival order; the first ticket holds the turn
        self._numbers = itertools.count()

    def __len__(self) -> int:
        """Runs holding or waiting for the turn."""
        with self._cond:
            return len(self._tickets)

    @contextmanager
    def turn(self, on_wait: Callable[[int], None] | None = None, poll: float = 0.5) -> Iterator[int]:
        """Wait for this run's turn, then hold it for the `with` block. Yields how many runs were
        ahead when it arrived. `on_wait(ahead)` is called while waiting (outside the lock; if it
        raises, the ticket is given back). Raises QueueFull when `max_waiting` runs already wait."""
        with self._cond:
            if len(self._tickets) > self.max_waiting:
                raise QueueFull(f"{len(self._tickets) - 1} runs are already waiting; try again in a moment.")
            ticket = next(self._numbers)
            self._tickets.append(ticket)
            first = ahead = len(self._tickets) - 1
        try:
            while ahead:
                if on_wait is not None:
                    on_wait(ahead)
                with self._cond:
                    if self._tickets[0] != ticket:
                        self._cond.wait(poll)
                    ahead = self._tickets.index(ticket)
            yield first
        finally:
            with self._cond:
                self._tickets.remove(ticket)
                self._cond.notify_all()


@st.cache_resource(show_spinner=False)
def shared_queue() -> RunQueue:
    """The server's one run queue, shared by every session."""
    return RunQueue()
