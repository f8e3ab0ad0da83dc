"""A count of the requests that still hold model work or tensors.

Both services keep one: tests read it to prove that a cancelled or disconnected request was freed.
"""

from __future__ import annotations

import threading


class ActiveRequests:
    """Thread-safe counter of in-flight requests."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def add(self, delta: int) -> None:
        with self._lock:
            self._count += delta
