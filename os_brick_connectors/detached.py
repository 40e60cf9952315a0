"""Long-lived helper processes of an attachment: nbdfuse, the AoE bridge.

Each is started detached (spawn.py) so that it outlives the service that
attached, and recorded in the attachment's state directory: a pidfile
written when it is started, a ready file it writes its own PID to once it
serves, and its output. A recorded PID is trusted only while that process
still runs with the attachment's file in its command line: after a reboot
or a crash the PID may belong to anything.
"""

import dataclasses
import os
import typing

from oslo_log import log as logging

from os_brick_connectors import host as host_mod

LOG = logging.getLogger(__name__)

Failure = typing.Callable[[str], Exception]


@dataclasses.dataclass(frozen=True)
class Helper:
    """One helper process of an attachment, as its files record it."""

    what: str                       # its name in messages
    comm: typing.Optional[str]      # its process name; None: any
    marker: str                     # an argument only ours has
    pidfile: str
    ready: str
    log: str
    # Whether SIGTERM is how it normally stops (no warning then).
    stops_on_term: bool = False

    @property
    def where(self) -> str:
        """The state directory it belongs to."""
        return os.path.dirname(self.pidfile)

    def files(self) -> typing.List[str]:
        return [self.pidfile, self.pidfile + '.tmp', self.ready,
                self.ready + '.tmp', self.log]

    def running(self, pid: typing.Optional[int]) -> bool:
        return host_mod.process_running(pid, self.comm, self.marker)

    def pid(self) -> typing.Optional[int]:
        """The recorded process, if it is still the one running."""
        pid = host_mod.read_pid(self.pidfile)
        return pid if self.running(pid) else None

    def is_ready(self, pid: int) -> bool:
        """Whether process ``pid`` said it serves."""
        return host_mod.read_pid(self.ready) == pid

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log, errors='replace') as f:
                return ' '.join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ''

    def start(self, host: host_mod.Host, command: typing.Sequence[str],
              serving: typing.Callable[[], bool], timeout: float,
              exited: Failure, late: Failure, subject: str) -> int:
        """Run ``command`` detached, for ``subject`` (what it serves, as
        the log names it); return its PID once it said it is ready and
        ``serving()`` agrees.

        Raises ``exited(log tail)`` if it exits first, ``late(log tail)``
        if ``timeout`` passes first; the caller undoes what it set up.
        """
        pid = host.spawn(command, self.log, self.pidfile)
        LOG.debug('Started %s %d for %s', self.what, pid, subject)

        def ready():
            if self.is_ready(pid) and serving():
                return True
            if not self.running(pid):
                raise exited(self.log_tail())
            return False

        if not host_mod.poll(ready, timeout):
            raise late(self.log_tail())
        return pid

    def stop(self, host: host_mod.Host, timeout: float, unmounted: bool,
             failed: Failure) -> None:
        """Stop the recorded process, after checking it is ours; nothing
        to do if none runs.

        ``unmounted``: its mount was just taken away, which makes nbdfuse
        exit by itself (its manual asks that it be stopped that way): wait
        for that first. Then SIGTERM, then SIGKILL, each given a third of
        ``timeout``; ``failed(reason)`` is raised if it outlives them all.
        """
        pid = self.pid()
        if not pid:
            return
        signals = (None, 'TERM', 'KILL') if unmounted else ('TERM', 'KILL')
        for signal_name in signals:
            if signal_name:
                if signal_name == 'KILL' or not self.stops_on_term:
                    LOG.warning('Sending SIG%s to %s %d (state %s)',
                                signal_name, self.what, pid, self.where)
                host.kill(pid, signal_name)
            if host_mod.poll(lambda: not self.running(pid), timeout / 3):
                return
        raise failed('%s %d (%s) does not exit'
                     % (self.what, pid, self.where))
