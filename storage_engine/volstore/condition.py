"""What an open volume group knows of its own health.

Three states, each with a reason and the time it began:

``ok``
    Every write can land and every commit be written.
``no_space``
    The filesystem under a physical volume refused a write for want of
    space (:class:`errors.DeviceFull`), or a commit could not be written
    for want of space. Nothing is broken: reads go on, writes into space
    already allocated go on, and what was refused succeeds once there is
    room again. Metadata changes that could not be written stay pending.
    The group does not leave this state by itself: whoever watches it
    (the storage node's pool health) checks that there is room again,
    then calls :meth:`VolumeGroup.recover_space`.
``failed``
    An I/O error the group cannot vouch for (EIO, a failed fdatasync):
    what the page cache shows may not be what the disk holds, so every
    I/O and change is refused until the group is closed and opened again
    from disk. Final for this handle.

A listener (one callable) hears every change of state, from whatever
thread caused it; it must be quick and must not call back into the group.
"""

import dataclasses
import threading
import time

OK = 'ok'
NO_SPACE = 'no_space'
FAILED = 'failed'


@dataclasses.dataclass(frozen=True)
class Condition:
    state: str
    reason: str | None = None
    since: float | None = None      # time.time() when the state began


class Tracker:
    """The condition of one group; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._now = Condition(OK)
        #: Space refusals seen so far; recovery compares it before and
        #: after its trial commit, so a refusal meanwhile keeps the state.
        self.refusals = 0
        self.listener = None

    def get(self) -> Condition:
        return self._now

    def _change(self, new: Condition) -> None:
        self._now = new
        listener = self.listener
        if listener is not None:
            listener(new)

    def no_space(self, exc: BaseException) -> None:
        with self._lock:
            self.refusals += 1
            if self._now.state != OK:
                return
            self._change(Condition(NO_SPACE, str(exc), time.time()))

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self._now.state == FAILED:
                return
            self._change(Condition(FAILED, str(exc), time.time()))

    def space_back(self, refusals_before: int) -> bool:
        """Back to ok from no_space, unless space was refused again since
        ``refusals_before`` was read. Whether the group is ok now.
        """
        with self._lock:
            if self._now.state == NO_SPACE and \
                    self.refusals == refusals_before:
                self._change(Condition(OK))
            return self._now.state == OK
