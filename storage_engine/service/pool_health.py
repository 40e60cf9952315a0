"""The health of a node's pools, and bringing a stopped pool back.

Each pool (volume group) knows its own condition (volstore/condition.py):

``ok``
    in service.
``no_space``
    the filesystem under a physical volume filled up. Writes that need new
    space fail with ENOSPC (NBD_ENOSPC; AoE answers ATA ABRT), flushes and
    changes that cannot be written are refused (API 507), and nothing else
    stops: reads, and writes into space already allocated, go on. The pool
    leaves this state by itself: every RECHECK_INTERVAL seconds a pool out
    of space is checked, and once the filesystems of its physical volumes
    have room again (HEADROOM_CLUSTERS clusters, or what the PV file still
    lacks) and a commit of what is pending succeeds, it is ok again.
``failed``
    an I/O error (EIO, a failed fdatasync) stopped the pool: what the page
    cache shows may not be what the disk holds, so all I/O and changes are
    refused until the pool is *reopened* (:meth:`PoolHealth.reopen`, which
    the node's ``reopen_pool`` wraps with its exports): the group is closed
    and opened again from disk, replaying its journal.

Every change of state is logged (ERROR when a pool leaves service, WARNING
when it returns) with the pool and the reason, and shows in the node's
readiness and statistics (:meth:`PoolHealth.view`, :meth:`summary`), and so
in the Cinder driver's pool stats (``backend_state: down``).

At start, and in every pool view, the pool's *backing* is checked too:
sparse PV files may still grow by more than their filesystems have free
(``shortfall``), in which case writes will fail with ENOSPC before the pool
looks full. That is flagged with a WARNING at start.
"""

import dataclasses
import datetime
import functools
import os
import stat
import threading

from oslo_log import log as logging

from storage_engine import devices
from storage_engine import errors
from storage_engine.volstore import condition

LOG = logging.getLogger(__name__)

#: seconds between two checks of a pool out of space
RECHECK_INTERVAL = 2.0
#: free space (in clusters of the pool) that counts as room again
HEADROOM_CLUSTERS = 8


@dataclasses.dataclass(frozen=True)
class Filesystem:
    """A filesystem holding sparse PV files of one pool."""

    mount: str
    size: int
    free: int
    #: bytes the pool's PV files on it may still grow by
    needed: int

    @property
    def shortfall(self) -> int:
        return max(0, self.needed - self.free)


def backing(paths) -> list[Filesystem]:
    """The filesystems under the PV files ``paths`` (block devices have
    their own size and are left out, and so are filesystems that report
    none).
    """
    found = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        unfilled = max(0, st.st_size - st.st_blocks * 512)
        if st.st_dev in found:
            fs = found[st.st_dev]
            found[st.st_dev] = dataclasses.replace(
                fs, needed=fs.needed + unfilled)
            continue
        vfs = os.statvfs(path)
        if not vfs.f_blocks:
            # No size to speak of (FUSE and other pseudo filesystems):
            # nothing to measure the files against.
            continue
        found[st.st_dev] = Filesystem(
            devices.mount_point(path), vfs.f_blocks * vfs.f_frsize,
            vfs.f_bavail * vfs.f_frsize, unfilled)
    return list(found.values())


def _iso(ts):
    # The API's time format (node.iso_time; node.py imports this module).
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(
        ts, datetime.timezone.utc).isoformat().replace('+00:00', 'Z')


class PoolHealth:
    """Watches the pools of one node.

    ``opener(name)`` opens pool ``name`` from disk (never creating it); it
    is what :meth:`reopen` uses. Thread-safe.
    """

    def __init__(self, opener=None):
        self._opener = opener
        self._groups = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    # -- watching -------------------------------------------------------------

    def watch(self, name: str, vg) -> None:
        """Watch pool ``name`` (its group ``vg``), from now on."""
        with self._lock:
            self._groups[name] = vg
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name='pool-health', daemon=True)
                self._thread.start()
        vg.listen(functools.partial(self._changed, name))
        now = vg.condition()
        if now.state != condition.OK:
            # Opened in that state (a recovery with no room to finish).
            self._changed(name, now)
        fss = backing(pv.path for pv in vg.physical_volumes())
        short = [fs for fs in fss if fs.shortfall]
        if short:
            LOG.warning(
                'pool %s: its physical volume files may still grow by %s '
                'more than their filesystems have free; writes will fail '
                'with ENOSPC (and the pool go out of space) before it looks '
                'full. Give the filesystems room, or use a smaller pool',
                name, ', '.join('%d MiB on %s (%d MiB free)'
                                % (fs.needed >> 20, fs.mount, fs.free >> 20)
                                for fs in short))

    @staticmethod
    def _changed(name: str, now: condition.Condition) -> None:
        if now.state == condition.NO_SPACE:
            LOG.error('pool %s is out of space: %s. Writes that need new '
                      'space fail with ENOSPC and changes that cannot be '
                      'recorded are refused; reads go on. The pool returns '
                      'to service by itself once its filesystem has room '
                      'again', name, now.reason)
        elif now.state == condition.FAILED:
            LOG.error('pool %s stopped after an I/O error: %s. All I/O and '
                      'changes on it fail until it is reopened: '
                      'storage-engine pool reopen %s (POST '
                      '/v1/pools/%s/reopen)', name, now.reason, name, name)
        else:
            LOG.warning('pool %s has room again and is back in service',
                        name)

    def condition(self, name: str) -> condition.Condition:
        return self._groups[name].condition()

    def view(self, name: str) -> dict:
        """The ``health`` and ``backing`` fields of the pool's view."""
        vg = self._groups[name]
        now = vg.condition()
        fss = backing(pv.path for pv in vg.physical_volumes())
        return {
            'health': {'state': now.state, 'reason': now.reason,
                       'since': _iso(now.since)},
            'backing': {
                'shortfall': sum(fs.shortfall for fs in fss),
                'metadata_preallocated': vg.metadata_allocated,
                # Only those short of space: the figures of the others
                # change with every write and say nothing.
                'filesystems': [{'mount': fs.mount, 'size': fs.size,
                                 'free': fs.free, 'needed': fs.needed}
                                for fs in fss if fs.shortfall]}}

    def summary(self) -> dict:
        """The node's health: ``degraded`` while any pool is not ok."""
        with self._lock:
            groups = sorted(self._groups.items())
        out = []
        for name, vg in groups:
            now = vg.condition()
            if now.state != condition.OK:
                out.append({'name': name, 'state': now.state,
                            'reason': now.reason, 'since': _iso(now.since)})
        return {'state': 'degraded' if out else 'ok', 'pools': out}

    # -- getting back into service --------------------------------------------

    def _has_room(self, vg) -> bool:
        headroom = HEADROOM_CLUSTERS * vg.cluster_size
        return all(fs.free >= min(headroom, fs.needed)
                   for fs in backing(pv.path for pv in
                                     vg.physical_volumes()))

    def recheck(self, name: str) -> bool:
        """Return a pool out of space to service if it can be; whether it
        is ok now.
        """
        vg = self._groups[name]
        now = vg.condition()
        if now.state != condition.NO_SPACE:
            return now.state == condition.OK
        if not self._has_room(vg):
            return False
        try:
            return vg.recover_space()
        except errors.EngineError as exc:
            LOG.debug('pool %s: not back yet: %s', name, exc)
            return False

    def _run(self) -> None:
        while not self._stop.wait(RECHECK_INTERVAL):
            with self._lock:
                names = sorted(self._groups)
            for name in names:
                try:
                    self.recheck(name)
                except Exception:
                    LOG.exception('pool %s: health check failed', name)

    def stopped(self, name: str) -> bool:
        """Whether pool ``name`` needs a reopen to serve again."""
        return self.condition(name).state == condition.FAILED

    def reopen(self, name: str, vg):
        """Close the group ``vg`` of pool ``name`` and open it again from
        disk (its journal replayed); the new group, watched.

        If it cannot be opened, the error is raised and the pool stays
        stopped (its old group, closed, keeps showing what it held).
        """
        if self._opener is None:
            raise errors.InvalidArgument('this node cannot reopen pools')
        try:
            vg.close()
        except errors.EngineError as exc:
            LOG.warning('pool %s: closing the stopped group: %s', name, exc)
        try:
            new = self._opener(name)
        except errors.EngineError as exc:
            LOG.error('pool %s could not be reopened: %s', name, exc)
            raise
        self.watch(name, new)
        LOG.warning('pool %s reopened from disk (%d journal records '
                    'replayed)', name, new.replayed)
        return new

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
