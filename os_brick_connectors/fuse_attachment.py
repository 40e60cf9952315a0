"""An export attached as nbdfuse and a loop device: the fuse mode.

Without a kernel client for the protocol (no nbd.ko, no aoe.ko) our
connectors attach the same way: ``nbdfuse`` serves an NBD export as a file,
``disk`` in the attachment's state directory (state.py), and ``losetup``
binds a /dev/loopN to that file. nbdfuse stays in the foreground, so it is
started detached (detached.py, spawn.py) and outlives the service; under
systemd give the service ``KillMode=process`` or stopping it kills nbdfuse
too, and the loop devices fail.

The NBD connector's nbdfuse connects to the storage node itself. The AoE
connector's connects to a local NBD server, the AoE bridge: an
:class:`Upstream`, started before nbdfuse and stopped after it.

:class:`FuseAttachment` is the whole lifecycle of one such attachment:
what is attached, attach, show a new size, detach. It works from the
state directory alone, whatever process set it up.
"""

import dataclasses
import os
import typing

from os_brick import exception
from oslo_utils import excutils

from os_brick_connectors import detached
from os_brick_connectors import errors as errors_mod
from os_brick_connectors import host as host_mod
from os_brick_connectors import state


@dataclasses.dataclass(frozen=True)
class Upstream:
    """A local server nbdfuse connects to, started first, stopped last."""

    helper: detached.Helper
    # Starts it; returns once it serves, raises if it cannot.
    start: typing.Callable[[], None]


class FuseAttachment:
    """nbdfuse serving an export as ``paths.disk``, a loop device on it.

    ``source``: what nbdfuse reads, the arguments after its mount point (an
    NBD URI, or ``--command`` and a program speaking NBD on its standard
    input and output).
    """

    def __init__(self, host: host_mod.Host, paths: state.StatePaths,
                 subject: errors_mod.Subject, source: typing.Sequence[str],
                 read_only: bool, timeout: float,
                 upstream: typing.Optional[Upstream] = None):
        self._host = host
        self.paths = paths
        self.subject = subject
        self.source = list(source)
        self.read_only = read_only
        self.timeout = timeout
        self.upstream = upstream
        self.nbdfuse = paths.nbdfuse

    # -- what is attached -----------------------------------------------------

    def loop_devices(self) -> typing.List[str]:
        if 'disk' not in self.paths.entries():
            return []
        return self._host.loop_devices(self.paths.disk)

    def serving(self) -> bool:
        """nbdfuse (and the upstream) run, and the file is mounted."""
        pid = self.nbdfuse.pid()
        return bool(pid) and self.nbdfuse.is_ready(pid) and \
            (self.upstream is None or bool(self.upstream.helper.pid())) and \
            host_mod.mounted(self.paths.disk)

    def device(self) -> typing.Optional[str]:
        """The live loop device of the export, if there is one."""
        if self.serving():
            loops = self._host.loop_devices(self.paths.disk)
            if loops:
                return loops[0]
        return None

    # -- attaching ------------------------------------------------------------

    def connect(self, check: typing.Optional[typing.Callable] = None) -> str:
        """Attach and return the loop device.

        A serving nbdfuse without its loop device is used as it is;
        otherwise the leftovers of an attachment whose processes are gone
        are cleared, ``check()`` (if given) may refuse with a clear error
        before anything is set up, and everything is started.
        """
        if not self.serving():
            self.clear()
            if check:
                check()
            self._start()
        return self._loop_attach()

    def _loop_attach(self, device: typing.Optional[str] = None) -> str:
        try:
            return self._host.loop_attach(self.paths.disk, self.read_only,
                                          device)
        except Exception:
            with excutils.save_and_reraise_exception():
                self.clear(force=True)

    def _start(self) -> None:
        """The upstream, then nbdfuse; returns once the file is mounted.
        Whatever fails, everything is undone.
        """
        try:
            self._host.make_dir(self.paths.dir)
            if self.upstream:
                self.upstream.start()
            self._host.make_file(self.paths.disk)
            ro = ['-r'] if self.read_only else []
            self.nbdfuse.start(
                self._host,
                ['nbdfuse', '-P', self.nbdfuse.ready, *ro, self.paths.disk,
                 *self.source],
                lambda: host_mod.mounted(self.paths.disk), self.timeout,
                exited=self._nbdfuse_exited,
                late=lambda tail: self.subject.error(
                    'nbdfuse did not mount %s within %ds: %s'
                    % (self.subject, self.timeout, tail)),
                subject=str(self.subject))
        except Exception:
            with excutils.save_and_reraise_exception():
                self.clear(force=True)

    def _nbdfuse_exited(self, tail: str) -> Exception:
        if self.upstream:
            # It met our own local server, which did answer.
            return self.subject.error(
                'nbdfuse exited while attaching %s: %s'
                % (self.subject, tail or 'no message'))
        # It met the server: what it says is why the export is not ours.
        return self.subject.unavailable('nbdfuse exited: %s'
                                        % (tail or 'no message'))

    # -- a new size -----------------------------------------------------------

    def show_size(self, size: int) -> None:
        """Make the loop device, if any, show ``size`` bytes."""
        loops = self.loop_devices()
        if loops and host_mod.block_size(loops[0]) != size:
            self._refresh(loops[0], size)

    def _refresh(self, device: str, size: int) -> None:
        """nbdfuse (and the upstream) learn the size once, when they
        connect, and the loop device holds the file of that nbdfuse:
        ``losetup -c`` alone would find the old size. The loop device is
        unbound, everything started again, and the same device bound to
        the new file. That needs the device closed: a mounted, held or
        swapped-on device is refused before anything is touched.
        """
        why = host_mod.block_in_use(device)
        if why:
            raise self.subject.busy(
                device, '%s; unmount it to show the new size %d'
                % (why, size))
        self._host.flush_buffers(device)
        self._host.loop_detach(device)
        if host_mod.loop_bound(device):
            # A process has it open: the kernel unbinds it on last close.
            raise self.subject.busy(
                device, 'a process has it open, so it keeps the old size '
                'and is released when closed; connect again then to see %d '
                'bytes' % size)
        self._host.unmount_fuse(self.paths.disk)
        self._stop(self.nbdfuse, unmounted=True)
        if self.upstream:
            self._stop(self.upstream.helper, unmounted=False)
        self._start()
        self._loop_attach(device)
        if host_mod.block_size(device) != size:
            raise self.subject.error(
                '%s shows %s bytes of %s, not %d'
                % (device, host_mod.block_size(device), self.subject, size))

    # -- detaching ------------------------------------------------------------

    def _stop(self, helper: detached.Helper, unmounted: bool) -> None:
        helper.stop(self._host, self.timeout, unmounted,
                    failed=self.subject.error)

    def clear(self, force: bool = False,
              errors: typing.Optional[exception.ExceptionChainer] = None
              ) -> None:
        """Undo whatever the state directory says is attached.

        Without ``force`` the first failure is raised and what is under it
        stays (nbdfuse is not pulled from under a loop device still in
        use); with it, failures are gathered in ``errors`` and the rest
        goes on.
        """
        if errors is None:
            errors = exception.ExceptionChainer()
        paths = self.paths
        if not os.path.isdir(paths.dir):
            return
        serving = self.serving()
        loops = []
        with errors.context(force, 'Failed to list loop devices of %s',
                            paths.disk):
            loops = self.loop_devices()
        for loop in loops:
            with errors.context(force, 'Failed to detach %s', loop):
                if serving:
                    # Nothing to flush to when nbdfuse is gone.
                    self._host.flush_buffers(loop)
                self._host.loop_detach(loop)
                if host_mod.loop_bound(loop):
                    raise self.subject.busy(
                        loop, 'a process has it open; it is released when '
                        'closed')
        unmounted = False
        if host_mod.mounted(paths.disk):
            with errors.context(force, 'Failed to unmount %s', paths.disk):
                self._host.unmount_fuse(paths.disk)
                unmounted = True
        with errors.context(force, 'Failed to stop nbdfuse of %s',
                            paths.dir):
            self._stop(self.nbdfuse, unmounted)
        if host_mod.mounted(paths.disk):
            return      # forced past a mount that stayed: keep its files
        if self.upstream:
            with errors.context(force, 'Failed to stop the %s of %s',
                                self.upstream.helper.what, paths.dir):
                self._stop(self.upstream.helper, unmounted=False)
        with errors.context(force, 'Failed to remove %s', paths.dir):
            self._host.remove_files(*paths.all_files())
            self._host.remove_dir(paths.dir)
