"""A per-volume gate between I/O and the operations that must exclude it.

Reads and writes *enter* the gate (many at once). An operation that changes
which physical clusters a volume owns in a way in-flight I/O could trip
over (taking a snapshot, revert, delete, unmapping discards) closes it
*exclusively*: new I/O waits, and the operation starts once the I/O
already in flight has left. Without it, a read that looked up cluster P
just before P was freed and reused could return another volume's data.
"""

import contextlib
import threading


class IOGate:
    __slots__ = ('_lock', '_cond', '_active', '_closed')

    def __init__(self):
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._closed = False

    def enter(self) -> None:
        # The data path: one lock round trip when the gate is open.
        lock = self._lock
        lock.acquire()
        try:
            while self._closed:
                self._cond.wait()
            self._active += 1
        finally:
            lock.release()

    def leave(self) -> None:
        lock = self._lock
        lock.acquire()
        try:
            self._active -= 1
            if self._closed and not self._active:
                self._cond.notify_all()
        finally:
            lock.release()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._closed = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()
