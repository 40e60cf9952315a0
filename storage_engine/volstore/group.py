"""A volume group: physical volumes, their volumes, and crash safety.

Durability rules (see doc/source/volume-store.rst for the full argument):

1. *Data before metadata.* A commit first ``fdatasync``s every PV, then
   writes the journal records (or a checkpoint) that map the new data,
   then syncs PV0. A mapping is never durable before the data (or the
   zeros) it points at.
2. *Deferred reuse.* A cluster freed by a record is reused only after that
   record is durable, so a crash can never hand a cluster that the
   recovered state still maps to another volume.
3. *Management operations commit before they return*, every one of them,
   even one with nothing to change: each is a barrier (a flush). Writes are
   acknowledged to the page cache and become durable at the next flush
   (or at once with FUA), as with any disk with a volatile write cache.

Running out of space (a sparse PV on a filesystem that fills up) is not a
failure (see condition.py). A write refused with ENOSPC changes nothing
the group knows. A commit that cannot be written for want of space keeps
its records and deferred frees pending, in order, for the next commit, and
leaves the journal and superblock as they were; a flush then fails, and
claims nothing. A management operation first makes sure its own commit can
be written (:meth:`VolumeGroup._begin_change`: a checkpoint first if the
journal is short of room, the ring ahead of the head allocated) and is
refused with NoSpace, having changed nothing, if not. The
metadata area of PV0 (label, superblock slots, journal ring) is
preallocated at create and open where the filesystem lets it, so its
writes do not run out of space in the first place. Only real I/O errors
(and any failed fdatasync) stop the group until it is opened again.

Concurrency: one metadata lock guards the model and the pending records;
a commit lock serialises commits; each volume has an :class:`IOGate` and an
allocation lock (see volume.py).
"""

import contextlib
import math
import os
import threading
import time
import zlib

from oslo_log import log as logging

from storage_engine import devices
from storage_engine import errors
from storage_engine import names
from storage_engine.volstore import allocator as allocator_mod
from storage_engine.volstore import checkpoint
from storage_engine.volstore.clustermap import UNMAPPED
from storage_engine.volstore import condition as condition_mod
from storage_engine.volstore import info
from storage_engine.volstore import iogate
from storage_engine.volstore import journal as journal_mod
from storage_engine.volstore import layout
from storage_engine.volstore import records
from storage_engine.volstore import state as state_mod

DEFAULT_CLUSTER_SIZE = 1024 * 1024
DEFAULT_JOURNAL_SIZE = 64 * 1024 * 1024
MIN_CLUSTER_SIZE = 4096
MAX_CLUSTER_SIZE = 256 * 1024 * 1024
# Mapping changes held in memory before a commit is forced even without a
# flush: bounds memory and the work lost... never acknowledged work, only
# work a flush would otherwise have to do at once.
MAX_PENDING_ENTRIES = 64 * 1024
# Largest MAP record; bigger batches are split.
_MAP_RECORD_ENTRIES = 32 * 1024
# Journal ring kept allocated ahead of the head when the whole ring cannot
# be (a filesystem smaller than the metadata area).
RING_AHEAD = 4 * 1024 * 1024
# Room a management operation makes sure the journal has before it changes
# anything (at most this share of the ring): its own record plus the
# mappings writes publish meanwhile, so that its commit is an append into
# allocated blocks, not a checkpoint that may need new space.
_COMMIT_ROOM = 256 * 1024

LOG = logging.getLogger(__name__)


class _PV:
    """A physical volume of an open group."""

    __slots__ = ('index', 'uuid', 'path', 'device', 'data_offset',
                 'clusters', 'base')

    def __init__(self, index, uuid, path, device, data_offset, clusters,
                 base):
        self.index = index
        self.uuid = uuid
        self.path = path
        self.device = device
        self.data_offset = data_offset
        self.clusters = clusters
        self.base = base

    def describe(self) -> dict:
        return {'index': self.index, 'uuid': self.uuid, 'path': self.path,
                'data_offset': self.data_offset, 'clusters': self.clusters,
                'base': self.base}


def _pv_spec(spec):
    if isinstance(spec, (tuple, list)):
        path, size = spec
        return str(path), size
    return str(spec), None


class VolumeGroup:
    """An open volume group. Thread-safe; one open handle per group."""

    # -- creation and opening -------------------------------------------------

    def __init__(self):
        self._meta_lock = threading.RLock()
        self._commit_lock = threading.Lock()
        self._gates_lock = threading.Lock()
        self._records = []
        self._map_batch = {}
        self._map_count = 0
        self._frees = []
        # Clusters handed out for a first write whose mapping is not
        # published yet (the data is being written): allocated and owned
        # by nothing, and no leak (the consistency check skips them).
        self._filling = set()
        self._failed = None
        self._closed = False
        # Set first thing by close(): no new I/O or change may start.
        self._closing = False
        self._health = condition_mod.Tracker()
        # After a recovery whose checkpoint could not be written: the
        # ring may hold a torn commit past the replayed end, so nothing
        # may be appended before a checkpoint (with an LSN jump) is.
        self._need_checkpoint = False
        #: the whole metadata area of PV0 is allocated (see
        #: _preallocate_metadata)
        self.metadata_allocated = False
        self.read_only = False
        self.replayed = 0
        self.recovered = False

    @classmethod
    def create(cls, pvs, name: str = 'vg0',
               cluster_size: int = DEFAULT_CLUSTER_SIZE,
               journal_size: int = DEFAULT_JOURNAL_SIZE,
               over_subscription_ratio: float = 20.0,
               reserved_percentage: int = 0,
               force: bool = False) -> 'VolumeGroup':
        """Create a group on ``pvs``: paths, or ``(path, size)`` pairs.

        A path that does not exist is created as a sparse file of ``size``
        bytes. A device that already carries a PV label is refused unless
        ``force`` is given, so a group is never overwritten by mistake.
        """
        names.check_name(name, 'volume group name')
        if not pvs:
            raise errors.InvalidArgument('a volume group needs at least one '
                                         'physical volume')
        if cluster_size & (cluster_size - 1) or \
                not MIN_CLUSTER_SIZE <= cluster_size <= MAX_CLUSTER_SIZE:
            raise errors.InvalidSize(
                'cluster size must be a power of two between %d and %d'
                % (MIN_CLUSTER_SIZE, MAX_CLUSTER_SIZE))
        if journal_size % journal_mod.BLOCK or journal_size < 64 * 1024:
            raise errors.InvalidSize('journal size must be a multiple of '
                                     '4 KiB and at least 64 KiB')
        _check_policy(over_subscription_ratio, reserved_percentage)
        self = cls()
        self.name = name
        self.uuid = names.new_id()
        self.cluster_size = cluster_size
        self._seed = zlib.crc32(self.uuid.encode())
        self._pvs = []
        self._sb_seq = 0
        self._ckpt = None
        opened = []
        created = []      # files this call made, removed if it fails
        try:
            for index, spec in enumerate(pvs):
                path, size = _pv_spec(spec)
                existed = os.path.exists(path)
                dev = devices.Device.open(path, create_size=size)
                opened.append(dev)
                if not existed:
                    created.append(path)
                if index == 0:
                    dev.lock()
                pv = self._format_pv(dev, index, journal_size, force,
                                     base=sum(p.clusters for p in self._pvs))
                self._pvs.append(pv)
                self._watch(dev)
            self.journal = journal_mod.Journal(
                self._pvs[0].device, layout.JOURNAL_OFFSET, journal_size,
                self._seed)
            self._preallocate_metadata()
            self.state = state_mod.State(cluster_size, self._defer_free)
            self.state.policy.update(
                over_subscription_ratio=float(over_subscription_ratio),
                reserved_percentage=int(reserved_percentage))
            self.allocator = allocator_mod.Allocator(
                sum(pv.clusters for pv in self._pvs))
            dev0 = self._pvs[0].device
            # Clear both superblock slots: an older group's superblock must
            # never be mistaken for ours.
            for slot in layout.SUPERBLOCK_SLOTS:
                dev0.pwrite(bytes(layout.SUPERBLOCK_SIZE), slot)
            self._checkpoint_now()
        except BaseException:
            for pv in self._pvs:
                if pv.path not in created:
                    # Leave a device we did not create as we found it.
                    _wipe_label(pv.device)
            for dev in opened:
                dev.close()
            for path in created:
                os.unlink(path)
            raise
        return self

    def _format_pv(self, dev, index, journal_size, force, base) -> '_PV':
        cs = self.cluster_size
        if not force:
            try:
                layout.Label.decode(dev.pread(layout.LABEL_SIZE, 0), dev.path)
            except errors.MetadataError:
                pass
            else:
                raise errors.AlreadyExists(
                    '%s already belongs to a volume group (force to '
                    'overwrite)' % dev.path, path=dev.path)
        meta_end = layout.JOURNAL_OFFSET + journal_size if index == 0 \
            else layout.LABEL_SIZE
        data_offset = layout.align_up(max(meta_end, 1024 * 1024), cs)
        clusters = (dev.size - data_offset) // cs if dev.size > data_offset \
            else 0
        if clusters < 1:
            raise errors.InvalidSize(
                '%s is too small: %d bytes, a physical volume needs at least '
                '%d' % (dev.path, dev.size, data_offset + cs), path=dev.path)
        pv_uuid = names.new_id()
        label = layout.Label(self.uuid, pv_uuid, index, data_offset,
                             clusters, cs)
        dev.pwrite(label.encode(), 0)
        dev.sync()
        return _PV(index, pv_uuid, dev.path, dev, data_offset, clusters, base)

    @classmethod
    def open(cls, pv0_path: str, pv_paths: dict | None = None,
             read_only: bool = False) -> 'VolumeGroup':
        """Open the group whose first PV is ``pv0_path``.

        Other PVs are found at the paths recorded when they were added;
        ``pv_paths`` ({index: path}) overrides them (device names move).
        After a crash the journal is replayed and a checkpoint written (not
        in ``read_only`` mode, which changes nothing on disk).
        """
        self = cls()
        self.read_only = read_only
        dev0 = devices.Device.open(pv0_path, read_only=read_only)
        opened = [dev0]
        try:
            dev0.lock(exclusive=not read_only)
            label = layout.Label.decode(dev0.pread(layout.LABEL_SIZE, 0),
                                        pv0_path)
            if label.pv_index != 0:
                raise errors.InvalidArgument(
                    '%s is physical volume %d of its group; open the group '
                    'by its first physical volume' % (pv0_path,
                                                      label.pv_index))
            best = None
            for slot in layout.SUPERBLOCK_SLOTS:
                got = layout.decode_superblock(
                    dev0.pread(layout.SUPERBLOCK_SIZE, slot))
                if got and got[1].get('uuid') == label.group_uuid and \
                        (best is None or got[0] > best[0]):
                    best = got
            if best is None:
                raise errors.MetadataError(
                    '%s has no valid superblock' % pv0_path, path=pv0_path)
            self._sb_seq, sb = best
            self.name = sb['name']
            self.uuid = sb['uuid']
            self.cluster_size = sb['cluster_size']
            self._seed = zlib.crc32(self.uuid.encode())
            self._pvs = []
            for rec in sb['pvs']:
                if rec['index'] == 0:
                    dev = dev0
                    path = pv0_path
                else:
                    path = (pv_paths or {}).get(rec['index'], rec['path'])
                    dev = devices.Device.open(path, read_only=read_only)
                    opened.append(dev)
                    lab = layout.Label.decode(
                        dev.pread(layout.LABEL_SIZE, 0), path)
                    if lab.group_uuid != self.uuid or \
                            lab.pv_uuid != rec['uuid']:
                        raise errors.MetadataError(
                            '%s is not physical volume %d of group %s'
                            % (path, rec['index'], self.name), path=path)
                self._pvs.append(_PV(rec['index'], rec['uuid'], path, dev,
                                     rec['data_offset'], rec['clusters'],
                                     rec['base']))
            jr = sb['journal']
            self.journal = journal_mod.Journal(dev0, jr['offset'], jr['size'],
                                               self._seed)
            for pv in self._pvs:
                self._watch(pv.device)
            if not read_only:
                self._preallocate_metadata()
            self._ckpt = sb['checkpoint']
            if self._ckpt is not None:
                blob = self._read_runs(self._ckpt['runs'],
                                       self._ckpt['length'])
                self.state = checkpoint.load(blob, self.cluster_size,
                                             self._seed)
            else:
                self.state = state_mod.State(self.cluster_size)
            replay = sb['replay']
            for _lsn, rtype, payload in self.journal.replay(replay['pos'],
                                                            replay['lsn']):
                self.state.apply(rtype, payload)
                self.replayed += 1
            self.allocator, problems = self._derive_allocator()
            if problems:
                raise errors.MetadataError(
                    'metadata of %s is inconsistent: %s'
                    % (self.name, '; '.join(problems[:5])),
                    problems=problems)
            self.state.on_free = self._defer_free
            if self.replayed and not read_only:
                # Recovery: make the replayed state a checkpoint, and jump
                # the LSN past anything a torn commit may have left.
                self.recovered = True
                self.journal.torn = True
                self._need_checkpoint = True
                try:
                    self._checkpoint_now()
                except errors.NoSpace as exc:
                    # Open anyway (reads need no space); every commit is a
                    # checkpoint until one can be written.
                    LOG.warning('volume group %s: no room for the recovery '
                                'checkpoint (%s); flushes fail until there '
                                'is', self.name, exc)
        except BaseException:
            for dev in opened:
                dev.close()
            raise
        return self

    def _derive_allocator(self):
        """The allocator from ownership; problems found on the way."""
        return allocator_mod.derive(
            sum(pv.clusters for pv in self._pvs),
            self._ckpt['runs'] if self._ckpt else (),
            self.state.volumes.values())

    def _read_runs(self, runs, length) -> bytes:
        parts = []
        left = length
        for start, count in runs:
            for pcl in range(start, start + count):
                dev, off = self.locate(pcl)
                n = min(left, self.cluster_size)
                parts.append(dev.pread(n, off))
                left -= n
        return b''.join(parts)

    def locate(self, pcl: int):
        """``(device, byte offset)`` of physical cluster ``pcl``."""
        for pv in self._pvs:
            if pcl < pv.base + pv.clusters:
                return pv.device, pv.data_offset + \
                    (pcl - pv.base) * self.cluster_size
        raise errors.MetadataError('cluster %d is past the end of the group'
                                   % pcl)

    # -- commits and checkpoints ----------------------------------------------

    def _defer_free(self, pcl: int) -> None:
        self._frees.append(pcl)

    def _seal_batch(self) -> None:
        if not self._map_batch:
            return
        batch = {}
        n = 0
        for vid, entries in self._map_batch.items():
            for i in range(0, len(entries), _MAP_RECORD_ENTRIES):
                part = entries[i:i + _MAP_RECORD_ENTRIES]
                if n + len(part) > _MAP_RECORD_ENTRIES and batch:
                    self._records.append((records.R_MAP,
                                          records.encode_map(batch)))
                    batch, n = {}, 0
                batch.setdefault(vid, []).extend(part)
                n += len(part)
        if batch:
            self._records.append((records.R_MAP, records.encode_map(batch)))
        self._map_batch = {}
        self._map_count = 0

    def _apply_live(self, rtype: int, body: dict) -> None:
        """Apply a management record now; it commits with the next commit.

        The caller holds the metadata lock and has validated everything.
        """
        payload = records.encode_json(body)
        self._seal_batch()
        self.state.apply(rtype, payload)
        self._records.append((rtype, payload))

    def publish(self, vol, lcl: int, value: int) -> None:
        """Make a data-path mapping change visible (durable at next commit)."""
        with self._meta_lock:
            self.state.set_entry(vol, lcl, value)
            self._filling.discard(value)
            self._map_batch.setdefault(vol.vid, []).append((lcl, value))
            self._map_count += 1
            full = self._map_count >= MAX_PENDING_ENTRIES
        if full:
            try:
                self.commit()
            except errors.NoSpace:
                # The write is where it should be and its mapping visible:
                # it stands, and is made durable by a later flush (which
                # fails, claiming nothing, while there is no room).
                pass

    def commit(self) -> None:
        """Make every completed write and metadata change durable."""
        self._check_usable()
        if self.read_only:
            return              # nothing can have changed
        with self._commit_lock:
            self._check_usable()        # closed while we waited?
            self._commit_locked()

    def _commit_locked(self, checkpoint_now: bool = False) -> None:
        """Commit under the commit lock: the pending records in the journal,
        or a checkpoint (``checkpoint_now``, or when they do not fit).

        NoSpace: nothing was made durable that was not before; the records
        and deferred frees are pending again, ahead of newer ones, and the
        group is usable. Any other error stops the group.
        """
        with self._meta_lock:
            self._seal_batch()
            recs, self._records = self._records, []
            frees, self._frees = self._frees, []
            blob = None
            if checkpoint_now or self._need_checkpoint or \
                    (recs and not self.journal.fits(recs)):
                blob = checkpoint.dump(self.state, self._seed)
        try:
            # Data before metadata. A PV nobody wrote since its last
            # sync has nothing to make durable (the flag is read after
            # the records were captured, see Device.dirty).
            for pv in self._pvs:
                if pv.device.dirty:
                    pv.device.sync()
            if blob is not None:
                self._write_checkpoint(blob)
            elif recs:
                if not self.metadata_allocated:
                    # Refused before anything is written, if it must be.
                    self.journal.preallocate(self.journal.commit_size(recs))
                self.journal.append(recs)
                self._pvs[0].device.sync()
        except errors.NoSpace as e:
            with self._meta_lock:
                self._records[:0] = recs
                self._frees[:0] = frees
            self._health.no_space(e)
            raise
        except errors.EngineError as e:
            self._fail(e)
            raise
        self.allocator.release(frees)

    def _checkpoint_now(self) -> None:
        with self._commit_lock:
            self._commit_locked(checkpoint_now=True)

    def _write_checkpoint(self, blob: bytes) -> None:
        """Write ``blob`` as the checkpoint and point the superblock at it;
        the journal restarts at its head.

        Fails having changed nothing the group relies on: the old
        checkpoint stays in use until the new superblock is written.
        """
        next_lsn = self.journal.next_lsn
        if self.journal.torn:
            # A failed commit may have left records at the head with LSNs
            # from next_lsn on: start past any the ring can hold.
            next_lsn += self.journal.size // journal_mod.HEADER_SIZE + 1
        cs = self.cluster_size
        runs = self.allocator.allocate(-(-len(blob) // cs))
        old = self._ckpt
        try:
            pos = 0
            touched = set()
            for start, count in runs:
                for pcl in range(start, start + count):
                    dev, off = self.locate(pcl)
                    dev.pwrite(memoryview(blob)[pos:pos + cs], off)
                    touched.add(dev)
                    pos += cs
            for dev in touched:
                dev.sync()
            self._ckpt = {'runs': runs, 'length': len(blob)}
            self._write_superblock(replay_pos=self.journal.head_pos,
                                   replay_lsn=next_lsn)
        except BaseException:
            self._ckpt = old
            self.allocator.release_runs(runs)
            raise
        self.journal.reset(self.journal.head_pos, next_lsn)
        self._need_checkpoint = False
        if old is not None:
            self.allocator.release_runs(old['runs'])

    def _write_superblock(self, replay_pos=None, replay_lsn=None,
                          pvs=None) -> None:
        if replay_pos is None:
            replay_pos, replay_lsn = (self.journal.start_pos,
                                      self.journal.start_lsn)
        seq = self._sb_seq + 1
        body = {
            'name': self.name, 'uuid': self.uuid,
            'cluster_size': self.cluster_size,
            'pvs': [pv.describe() for pv in (pvs or self._pvs)],
            'journal': {'offset': self.journal.offset,
                        'size': self.journal.size},
            'checkpoint': self._ckpt,
            'replay': {'pos': replay_pos, 'lsn': replay_lsn},
            'written': time.time(),
        }
        raw = layout.encode_superblock(seq, body)
        dev0 = self._pvs[0].device
        # The sequence only moves on once the slot is written: a slot left
        # torn by a refused write is written again next time, never the
        # other one, which holds the superblock in use.
        dev0.pwrite(raw, layout.SUPERBLOCK_SLOTS[seq % 2])
        self._sb_seq = seq
        dev0.sync()

    def _fail(self, exc: errors.EngineError) -> None:
        """Stop the group: what the disks hold is no longer certain."""
        self._failed = exc
        self._health.failed(exc)

    def _watch(self, dev) -> None:
        dev.on_full = self._health.no_space

    def _preallocate_metadata(self, quiet: bool = False) -> None:
        """Allocate PV0's metadata area (label, superblock slots, journal
        ring), best effort: on a filesystem too small for the whole ring,
        what fits ahead of the journal's head (see _begin_change). Says
        why it could not in a warning, unless ``quiet``.
        """
        dev0 = self._pvs[0].device
        try:
            self.metadata_allocated = \
                dev0.preallocate(0, layout.JOURNAL_OFFSET) and \
                self.journal.preallocate()
            if not self.metadata_allocated and not quiet:
                LOG.warning('volume group %s: the filesystem of %s cannot '
                            'preallocate; metadata writes may fail for want '
                            'of space when it is full', self.name,
                            dev0.path)
            return
        except errors.DeviceFull as exc:
            reason = exc
        try:
            self.journal.preallocate(RING_AHEAD)
        except errors.DeviceFull:
            pass
        if quiet:
            return
        LOG.warning('volume group %s: no room to preallocate its %d MiB '
                    'metadata area on %s (%s); it is allocated as it is '
                    'used', self.name,
                    (layout.JOURNAL_OFFSET + self.journal.size) >> 20,
                    dev0.path, reason)

    def _begin_change(self) -> None:
        """Before a management operation changes anything: make sure the
        commit it ends with can be written, or refuse it (NoSpace) with
        nothing changed.

        Writes a checkpoint first if the journal has not room for what is
        pending and the operation's record with some to spare (records
        that writes publish meanwhile), and allocates the ring ahead of
        the head. What is pending stays pending otherwise, and commits
        with the operation: a refusal changes nothing the caller can see.
        """
        self._check_usable(write=True)
        with self._commit_lock:
            self._check_usable(write=True)
            journal = self.journal
            try:
                with self._meta_lock:
                    need = min(_COMMIT_ROOM, journal.size // 8) + \
                        self._pending_bytes()
                if self._need_checkpoint or not journal.has_room(need):
                    # Afterwards the journal is empty, nothing is pending.
                    self._commit_locked(checkpoint_now=True)
                    need = min(_COMMIT_ROOM, journal.size // 8)
                if not self.metadata_allocated:
                    self._pvs[0].device.preallocate(0, layout.JOURNAL_OFFSET)
                    journal.preallocate(max(RING_AHEAD, need))
            except errors.NoSpace as exc:
                self._health.no_space(exc)
                raise type(exc)(
                    'volume group %s has no room to record a change now, so '
                    'none was made: %s' % (self.name, exc),
                    **exc.details) from None

    def _pending_bytes(self) -> int:
        """About the journal bytes the pending records take (metadata
        lock held).
        """
        heads = len(self._records) + \
            self._map_count // _MAP_RECORD_ENTRIES + 1
        return sum(len(p) for _t, p in self._records) + \
            heads * journal_mod.HEADER_SIZE + \
            self._map_count * records.MAP_ENTRY_SIZE + \
            len(self._map_batch) * 8 * (heads + 1)

    def condition(self) -> condition_mod.Condition:
        """ok, no_space or failed, why and since when (condition.py)."""
        return self._health.get()

    def listen(self, listener) -> None:
        """Call ``listener(condition)`` on every change of condition."""
        self._health.listener = listener

    def recover_space(self) -> bool:
        """Leave no_space if the group can: allocate the metadata area
        again and commit what is pending. True if the group is ok now.

        The caller (the node's pool health) knows whether the filesystems
        have room again; this only proves that commits can be written.
        """
        self._check_usable()
        seen = self._health.refusals
        if self._health.get().state == condition_mod.OK:
            return True
        with self._commit_lock:
            self._check_usable()
            try:
                if not self.metadata_allocated and not self.read_only:
                    self._preallocate_metadata(quiet=True)
                if not self.read_only:
                    self._commit_locked()
            except errors.NoSpace:
                return False
        return self._health.space_back(seen)

    def flush(self) -> None:
        self.commit()

    def close(self) -> None:
        """Commit, write a checkpoint (so the next open replays nothing).

        Waits for I/O in flight, and refuses new I/O, first: no thread may
        use a device after it is closed (its descriptor could by then be
        another file's).
        """
        if self._closed:
            return
        self._closing = True
        with self._quiesced():
            if self._closed:
                return          # another thread closed it meanwhile
            try:
                if not self.read_only and self._failed is None:
                    self._close_checkpoint()
            finally:
                self._closed = True
                for pv in self._pvs:
                    pv.device.close()

    def _close_checkpoint(self) -> None:
        try:
            self._commit_locked(checkpoint_now=True)
            return
        except errors.NoSpace as exc:
            if self._need_checkpoint:
                lost = exc
            else:
                # The journal instead: the next open replays it.
                try:
                    self._commit_locked()
                    LOG.warning('volume group %s: closed without a '
                                'checkpoint (%s); the next open replays '
                                'its journal', self.name, exc)
                    return
                except errors.NoSpace as again:
                    lost = again
        with self._meta_lock:
            count = len(self._records)
        LOG.error('volume group %s: closed with %d metadata records that '
                  'could not be written (%s): writes not flushed since the '
                  'last successful flush are lost', self.name, count, lost)
        raise lost

    @contextlib.contextmanager
    def _quiesced(self):
        """No I/O in flight on any volume, and no commit, inside."""
        with self._meta_lock:
            nodes = list(self.state.volumes.values())
        # The order every operation takes them in: gates, commit, metadata.
        with _exclusive_all([self.gate(v) for v in nodes]):
            with self._commit_lock, self._meta_lock:
                yield

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_usable(self, write: bool = False, memory: bool = False,
                      io: bool = False) -> None:
        """Refuse work a closed or failed group cannot do.

        ``memory``: a view of what the group holds in memory (volumes,
        capacity), which a failed group still gives, closed or not, so
        that an operator can see what it held. ``io``: data I/O, refused
        as soon as a close has begun.
        """
        if self._closed or (io and self._closing):
            if not (memory and self._failed is not None):
                raise errors.GroupClosed('volume group %s is closed'
                                         % self.name)
        elif self._failed is not None and not memory:
            raise errors.DeviceError(
                'volume group %s stopped after an I/O error (%s); reopen it'
                % (self.name, self._failed))
        if write and self.read_only:
            raise errors.ReadOnly('volume group %s is open read-only'
                                  % self.name)

    # -- lookups --------------------------------------------------------------

    def _lookup(self, ref: str, kind: str | None = None):
        if not isinstance(ref, str):
            raise errors.InvalidArgument('%r is not a volume name or id'
                                         % (ref,))
        st = self.state
        vol = st.by_id.get(ref) or st.by_name.get(ref)
        if vol is None and names.is_uuid(ref):
            vol = st.by_id.get(names.check_id(ref))
        if vol is None or vol.hidden:
            cls = errors.SnapshotNotFound if kind == state_mod.SNAPSHOT \
                else errors.VolumeNotFound
            raise cls('%s %s not found in group %s'
                      % (kind or 'volume or snapshot', ref, self.name),
                      ref=ref)
        if kind is not None and vol.kind != kind:
            raise errors.WrongKind('%s is a %s, not a %s'
                                   % (ref, vol.kind, kind), ref=ref)
        return vol

    def gate(self, vol) -> iogate.IOGate:
        g = vol.gate
        if g is None:
            with self._gates_lock:
                if vol.gate is None:
                    vol.gate = iogate.IOGate()
                    vol.alloc_lock = threading.Lock()
                g = vol.gate
        return g

    def alloc_lock(self, vol) -> threading.Lock:
        if vol.alloc_lock is None:
            self.gate(vol)
        return vol.alloc_lock

    @staticmethod
    def _heirs(parent, leaving) -> list:
        """Volumes a hidden snapshot merges into when ``leaving`` goes.

        ``leaving`` stops being a child of ``parent`` (deleted, flattened,
        reverted elsewhere); hidden snapshots left with one child are then
        merged into it (State._collect). A merge into a volume changes its
        map under its I/O, so its gate must be closed too.
        """
        out = []
        node = parent
        while node is not None and node.hidden:
            rest = node.children - {leaving}
            if len(rest) > 1:
                break
            if rest:
                (heir,) = rest
                if heir.kind == state_mod.VOLUME:
                    out.append(heir)
                break   # a merge leaves the grandparent's children as is
            leaving, node = node, node.parent
        return out

    @contextlib.contextmanager
    def _closed_gates(self, nodes):
        """Close the gates of ``nodes()`` exclusively, then take the
        metadata lock.

        ``nodes`` runs under the metadata lock, and again once the gates
        are closed: if the forest changed meanwhile so that it names one
        more, everything is released and closed again.
        """
        while True:
            with self._meta_lock:
                want = set(nodes())
            with _exclusive_all([self.gate(v) for v in want]):
                with self._meta_lock:
                    if set(nodes()) <= want:
                        yield
                        return

    def _info(self, vol) -> info.VolumeInfo:
        origin = self.state.volumes.get(vol.origin_vid) \
            if vol.origin_vid is not None else None
        parent = vol.parent
        while parent is not None and parent.hidden:
            parent = parent.parent
        return info.VolumeInfo(
            id=vol.id, name=vol.name, kind=vol.kind, size=vol.size,
            thin=vol.thin, parent_id=parent.id if parent else None,
            origin_id=origin.id if origin is not None and not origin.hidden
            else None,
            created_at=vol.created, allocated=vol.owned * self.cluster_size,
            read_only=vol.read_only, has_parent=vol.parent is not None)

    def get(self, ref: str) -> info.VolumeInfo:
        # Not a memory view: callers look one up to act on it, and on a
        # failed group they must learn at once that they cannot.
        self._check_usable()
        with self._meta_lock:
            return self._info(self._lookup(ref))

    def volumes(self) -> list[info.VolumeInfo]:
        self._check_usable(memory=True)
        with self._meta_lock:
            return sorted((self._info(v) for v in self.state.visible()
                           if v.kind == state_mod.VOLUME),
                          key=lambda i: i.name)

    def snapshots(self, volume: str | None = None) -> list[info.VolumeInfo]:
        self._check_usable(memory=True)
        with self._meta_lock:
            origin = self._lookup(volume, state_mod.VOLUME) \
                if volume is not None else None
            return sorted((self._info(v) for v in self.state.visible()
                           if v.kind == state_mod.SNAPSHOT and
                           (origin is None or v.origin_vid == origin.vid)),
                          key=lambda i: i.created_at)

    def physical_volumes(self) -> list[info.PhysicalVolumeInfo]:
        self._check_usable(memory=True)
        cs = self.cluster_size
        out = []
        for pv in self._pvs:
            used = self.allocator.count_used(pv.base, pv.base + pv.clusters)
            out.append(info.PhysicalVolumeInfo(
                pv.index, pv.uuid, pv.path, pv.clusters * cs,
                (pv.clusters - used) * cs))
        return out

    # -- capacity -------------------------------------------------------------

    def _meta_reserve(self) -> int:
        """Clusters kept free for the next checkpoints."""
        ckpt = sum(c for _s, c in self._ckpt['runs']) if self._ckpt else 1
        return 2 * ckpt + 4 + self.allocator.total // 4096

    def _available(self) -> int:
        """Clusters thin allocations may take."""
        return self.allocator.free_count - self.state.thick_reserved - \
            self._meta_reserve()

    def capacity(self) -> info.GroupCapacity:
        self._check_usable(memory=True)
        cs = self.cluster_size
        with self._meta_lock:
            st = self.state
            vols = sum(1 for v in st.visible() if v.kind == state_mod.VOLUME)
            snaps = sum(1 for v in st.visible()
                        if v.kind == state_mod.SNAPSHOT)
            total = self.allocator.total
            free = self.allocator.free_count
            return info.GroupCapacity(
                total=total * cs, free=free * cs,
                allocated=(total - free) * cs,
                provisioned=st.provisioned,
                thick_reserved=st.thick_reserved * cs,
                available_thin=max(0, self._available()) * cs,
                max_over_subscription_ratio=st.policy[
                    'over_subscription_ratio'],
                reserved_percentage=st.policy['reserved_percentage'],
                volumes=vols, snapshots=snaps, cluster_size=cs)

    def _check_thick(self, clusters: int, what: str) -> None:
        """Refuse to reserve ``clusters`` more than the policy allows."""
        st = self.state
        keep = self.allocator.total * st.policy['reserved_percentage'] // 100
        avail = self._available() - keep
        if clusters > avail:
            raise errors.NoSpace(
                '%s needs %d MiB of reserved space; group %s has %d MiB '
                'available (reserved percentage %d%%)'
                % (what, clusters * self.cluster_size >> 20, self.name,
                   max(avail, 0) * self.cluster_size >> 20,
                   st.policy['reserved_percentage']))

    def _check_thin(self, size: int, what: str) -> None:
        """Refuse provisioning beyond the over-subscription ratio."""
        st = self.state
        total = self.allocator.total * self.cluster_size
        usable = total * (100 - st.policy['reserved_percentage']) // 100
        limit = usable * st.policy['over_subscription_ratio']
        if st.provisioned + size > limit:
            raise errors.NoSpace(
                '%s would provision %d MiB in group %s, beyond its limit of '
                '%d MiB (over-subscription ratio %.1f, reserved %d%%)'
                % (what, (st.provisioned + size) >> 20, self.name,
                   int(limit) >> 20, st.policy['over_subscription_ratio'],
                   st.policy['reserved_percentage']))

    def allocate_cluster(self, vol) -> int:
        """A free cluster for a data-path write into ``vol``."""
        for attempt in (0, 1):
            with self._meta_lock:
                thick = not vol.thin and vol.kind == state_mod.VOLUME
                if thick or self._available() > 0:
                    pcl = self.allocator.allocate_one()
                    self._filling.add(pcl)
                    return pcl
                pending = bool(self._frees)
            if not pending or attempt:
                break
            # Clusters freed by records not yet durable: commit, retry.
            self.commit()
        raise errors.NoSpace('volume group %s is full: no space for %s'
                             % (self.name, vol.name))

    def abandon_cluster(self, pcl: int) -> None:
        """Give back a cluster from :meth:`allocate_cluster` that will not
        be published (filling it failed).
        """
        with self._meta_lock:
            self._filling.discard(pcl)
            self.allocator.release([pcl])

    def set_policy(self, over_subscription_ratio: float | None = None,
                   reserved_percentage: int | None = None) -> None:
        self._begin_change()
        with self._meta_lock:
            pol = dict(self.state.policy)
            if over_subscription_ratio is not None:
                pol['over_subscription_ratio'] = over_subscription_ratio
            if reserved_percentage is not None:
                pol['reserved_percentage'] = reserved_percentage
            _check_policy(pol['over_subscription_ratio'],
                          pol['reserved_percentage'])
            pol['over_subscription_ratio'] = float(
                pol['over_subscription_ratio'])
            self._apply_live(records.R_POLICY, pol)
        self.commit()

    # -- management operations ------------------------------------------------

    def _check_size(self, size) -> int:
        if not isinstance(size, int) or isinstance(size, bool) or \
                size <= 0 or size % layout.SECTOR:
            raise errors.InvalidSize(
                'size %r must be a positive multiple of %d bytes'
                % (size, layout.SECTOR))
        if size > (1 << 60):
            raise errors.InvalidSize('size %d is too large' % size)
        return size

    def _check_new(self, name: str, ident: str | None):
        names.check_name(name)
        ident = names.check_id(ident) if ident is not None else names.new_id()
        st = self.state
        if name in st.by_name:
            raise errors.AlreadyExists('%s already exists in group %s'
                                       % (name, self.name), name=name)
        if ident in st.by_id:
            raise errors.AlreadyExists('id %s already exists in group %s'
                                       % (ident, self.name), id=ident)
        return ident

    def _allocate_zeroed(self, count: int):
        """Allocate ``count`` clusters and zero them; returns the runs."""
        runs = self.allocator.allocate(count)
        try:
            for start, n in runs:
                self._zero_run(start, n)
        except BaseException:
            self.allocator.release_runs(runs)
            raise
        return runs

    def _zero_run(self, start: int, count: int) -> None:
        cs = self.cluster_size
        pcl = start
        end = start + count
        while pcl < end:
            dev, off = self.locate(pcl)
            # Stay inside one PV.
            pv = next(p for p in self._pvs
                      if p.base <= pcl < p.base + p.clusters)
            n = min(end, pv.base + pv.clusters) - pcl
            dev.zero(off, n * cs)
            pcl += n

    @staticmethod
    def _extents(first_lcl: int, runs):
        out = []
        lcl = first_lcl
        for start, n in runs:
            out.append([lcl, start, n])
            lcl += n
        return out

    def create_volume(self, name: str, size: int, thin: bool = True,
                      volume_id: str | None = None) -> info.VolumeInfo:
        """Create a thin volume, or a thick one with all its space."""
        self._begin_change()
        size = self._check_size(size)
        with self._meta_lock:
            vid_id = self._check_new(name, volume_id)
            ncl = self.state.nclusters(size)
            self._check_thin(size, 'volume %s' % name)
            runs = []
            if not thin:
                self._check_thick(ncl, 'thick volume %s' % name)
                runs = self._allocate_zeroed(ncl)
            vid = self.state.next_vid
            self._apply_live(records.R_CREATE, {
                'vid': vid, 'id': vid_id, 'name': name, 'size': size,
                'thin': bool(thin), 'created': time.time(),
                'extents': self._extents(0, runs)})
            vol = self.state.volumes[vid]
        self.commit()
        return self.get(vol.id)

    def clone(self, snapshot: str, name: str, size: int | None = None,
              thin: bool = True,
              volume_id: str | None = None) -> info.VolumeInfo:
        """A writable volume that reads ``snapshot`` until written."""
        self._begin_change()
        with self._meta_lock:
            snap = self._lookup(snapshot, state_mod.SNAPSHOT)
            size = snap.size if size is None else self._check_size(size)
            if size < snap.size:
                raise errors.InvalidSize(
                    'a clone of %s must be at least %d bytes'
                    % (snap.name, snap.size))
            vid_id = self._check_new(name, volume_id)
            self._check_thin(size, 'clone %s' % name)
            runs = []
            if not thin:
                self._check_thick(self.state.nclusters(size),
                                  'thick clone %s' % name)
            first_new = self.state.nclusters(snap.size)
            tail = self.state.nclusters(size) - first_new
            if not thin and tail > 0:
                # Beyond the snapshot's end there is nothing to share.
                runs = self._allocate_zeroed(tail)
            vid = self.state.next_vid
            self._apply_live(records.R_CREATE, {
                'vid': vid, 'id': vid_id, 'name': name, 'size': size,
                'thin': bool(thin), 'created': time.time(),
                'parent': snap.vid,
                'extents': self._extents(first_new, runs)})
            vol = self.state.volumes[vid]
        self.commit()
        return self.get(vol.id)

    def clone_volume(self, source: str, name: str, size: int | None = None,
                     thin: bool = True,
                     volume_id: str | None = None) -> info.VolumeInfo:
        """A writable copy of volume ``source`` as it is now.

        Cinder's create_cloned_volume. Metadata only and O(1) whatever the
        size, sharing every cluster: the source's map becomes a *hidden*
        snapshot (no name, not listed, never counted) whose two children
        are the source and the new clone, and each of them copies a
        cluster on its first write to it, as after a snapshot. When one of
        them is deleted (or flattened, or reverted) the hidden snapshot
        has one child left and is merged into it, so no space is held for
        a snapshot nobody can see. Snapshots the source already has stay
        deletable.

        Everything acknowledged to ``source`` before the call is in the
        clone. ``size`` (default: the source's) may be larger: the clone
        reads zeros beyond the source's end. A thick source reserves its
        full size again (its clusters are now shared), and a thick clone
        reserves its own; both must fit, or the call is refused with
        ``NoSpace`` and nothing changes.
        """
        self._begin_change()
        if size is not None:
            size = self._check_size(size)
        with self._meta_lock:
            vol = self._lookup(source, state_mod.VOLUME)
            clone_id = self._check_new(name, volume_id)
        # Everything acknowledged so far belongs to the copy.
        with self.gate(vol).exclusive():
            with self._meta_lock:
                if vol.deleted:
                    raise errors.VolumeNotFound('%s was deleted' % source)
                st = self.state
                clone_id = self._check_new(name, clone_id)
                if size is None:
                    size = vol.size
                elif size < vol.size:
                    raise errors.InvalidSize(
                        'a clone of %s must be at least %d bytes'
                        % (vol.name, vol.size))
                self._check_thin(size, 'clone %s' % name)
                # Reserve for both in one check, so that together they
                # cannot take more than there is.
                need = 0 if vol.thin else vol.owned
                if not thin:
                    need += st.nclusters(size)
                if need:
                    self._check_thick(need, 'clone %s of %s volume %s'
                                      % (name, 'thin' if vol.thin
                                         else 'thick', vol.name))
                snap_id = names.new_id()
                while snap_id in st.by_id or snap_id == clone_id:
                    snap_id = names.new_id()
                first_new = st.nclusters(vol.size)
                tail = st.nclusters(size) - first_new
                runs = []
                if not thin and tail > 0:
                    # Beyond the source's end there is nothing to share.
                    runs = self._allocate_zeroed(tail)
                snap_vid = st.next_vid
                vid = snap_vid + 1
                self._apply_live(records.R_CLONE_VOLUME, {
                    'source': vol.vid,
                    'snapshot': {'vid': snap_vid, 'id': snap_id,
                                 'name': 'clone-source-' + clone_id},
                    'vid': vid, 'id': clone_id, 'name': name, 'size': size,
                    'thin': bool(thin), 'created': time.time(),
                    'extents': self._extents(first_new, runs)})
                clone = st.volumes[vid]
        self.commit()
        return self.get(clone.id)

    def delete_volume(self, ref: str) -> None:
        self._begin_change()
        with self._meta_lock:
            vol = self._lookup(ref, state_mod.VOLUME)
        # A hidden parent (after clone_volume) merges into its other child.
        with self._closed_gates(lambda: [vol] +
                                self._heirs(vol.parent, vol)):
            if vol.deleted:
                raise errors.VolumeNotFound('%s was deleted' % ref)
            self._apply_live(records.R_DELETE, {'vid': vol.vid})
        self.commit()

    def create_snapshot(self, volume: str, name: str,
                        snapshot_id: str | None = None) -> info.VolumeInfo:
        """A read-only point-in-time copy of ``volume`` (metadata only)."""
        self._begin_change()
        with self._meta_lock:
            vol = self._lookup(volume, state_mod.VOLUME)
            snap_id = self._check_new(name, snapshot_id)
        # Everything acknowledged so far belongs to the snapshot.
        with self.gate(vol).exclusive():
            with self._meta_lock:
                if vol.deleted:
                    raise errors.VolumeNotFound('%s was deleted' % volume)
                snap_id = self._check_new(name, snap_id)
                if not vol.thin:
                    # The volume's reservation grows back to its full size.
                    self._check_thick(vol.owned, 'snapshot %s of thick '
                                      'volume %s' % (name, vol.name))
                vid = self.state.next_vid
                self._apply_live(records.R_SNAPSHOT, {
                    'vid': vid, 'id': snap_id, 'name': name,
                    'origin': vol.vid, 'created': time.time()})
                snap = self.state.volumes[vid]
        self.commit()
        return self.get(snap.id)

    def delete_snapshot(self, ref: str) -> None:
        """Delete a snapshot. Its name goes at once; its clusters are merged
        into its only child, or, while it has several (clones made from
        it, or a volume reverted to it), kept, hidden, until it has one
        left (state.py): snapshots, clones and volumes are independent, as
        Cinder has them.
        """
        self._begin_change()
        with self._meta_lock:
            snap = self._lookup(ref, state_mod.SNAPSHOT)

        def touched():
            # The snapshot itself (exported read-only, say) and the volume
            # its map (or, once it is dropped, a hidden parent's) may be
            # merged into must have no I/O in flight.
            out = [snap] + [c for c in snap.children
                            if c.kind == state_mod.VOLUME]
            if not snap.children:
                out += self._heirs(snap.parent, snap)
            return out

        with self._closed_gates(touched):
            if snap.deleted:
                raise errors.SnapshotNotFound('%s was deleted' % ref)
            self._apply_live(records.R_DELETE_SNAPSHOT, {'vid': snap.vid})
        self.commit()

    def revert(self, volume: str, snapshot: str) -> info.VolumeInfo:
        """Make ``volume`` what it was at ``snapshot`` (size included)."""
        self._begin_change()
        with self._meta_lock:
            vol = self._lookup(volume, state_mod.VOLUME)
            snap = self._lookup(snapshot, state_mod.SNAPSHOT)
            if snap.origin_vid != vol.vid:
                raise errors.InvalidArgument(
                    '%s is not a snapshot of %s' % (snap.name, vol.name))
        with self._closed_gates(lambda: [vol] +
                                self._heirs(vol.parent, vol)):
            if vol.deleted or snap.deleted:
                raise errors.VolumeNotFound('%s or %s was deleted'
                                            % (volume, snapshot))
            # Reverting to a snapshot larger than the volume is now
            # (after an earlier revert) provisions more.
            if snap.size > vol.size:
                self._check_thin(snap.size - vol.size, 'reverting %s'
                                 % vol.name)
                if not vol.thin:
                    st = self.state
                    self._check_thick(
                        st.nclusters(snap.size) - st.nclusters(vol.size),
                        'reverting thick volume %s' % vol.name)
            self._apply_live(records.R_REVERT,
                             {'vid': vol.vid, 'snapshot': snap.vid})
        self.commit()
        return self.get(vol.id)

    def extend(self, volume: str, new_size: int) -> info.VolumeInfo:
        """Grow a volume, online: I/O may continue."""
        self._begin_change()
        new_size = self._check_size(new_size)
        with self._meta_lock:
            vol = self._lookup(volume, state_mod.VOLUME)
        with self.gate(vol).exclusive():
            with self._meta_lock:
                if vol.deleted:
                    raise errors.VolumeNotFound('%s was deleted' % volume)
                if new_size < vol.size:
                    raise errors.InvalidSize(
                        'cannot shrink %s from %d to %d bytes'
                        % (vol.name, vol.size, new_size))
                if new_size > vol.size:
                    st = self.state
                    self._check_thin(new_size - vol.size, 'extending %s'
                                     % vol.name)
                    first_new = st.nclusters(vol.size)
                    grow = st.nclusters(new_size) - first_new
                    runs = []
                    if not vol.thin and grow:
                        self._check_thick(grow, 'extending thick volume %s'
                                          % vol.name)
                        runs = self._allocate_zeroed(grow)
                    self._apply_live(records.R_EXTEND, {
                        'vid': vol.vid, 'size': new_size,
                        'extents': self._extents(first_new, runs)})
        self.commit()
        return self.get(vol.id)

    def set_provisioning(self, ref: str, thin: bool) -> info.VolumeInfo:
        """Make a volume thin or thick, in place; metadata only.

        Thick reserves every cluster the volume does not own yet, so its
        writes can never fail for want of space; the clusters themselves
        are allocated on first write, as a thick clone's are. Thin gives
        the reservation back.
        """
        self._begin_change()
        if not isinstance(thin, bool):
            raise errors.InvalidArgument('thin must be True or False, not %r'
                                         % (thin,))
        with self._meta_lock:
            vol = self._lookup(ref, state_mod.VOLUME)
        # Writes in flight change what the volume owns, and so what a
        # thick volume still reserves.
        with self.gate(vol).exclusive():
            with self._meta_lock:
                if vol.deleted:
                    raise errors.VolumeNotFound('%s was deleted' % ref)
                if vol.thin != thin:
                    if not thin:
                        self._check_thick(
                            self.state.nclusters(vol.size) - vol.owned,
                            'making %s thick' % vol.name)
                    self._apply_live(records.R_SET_PROVISIONING,
                                     {'vid': vol.vid, 'thin': thin})
        self.commit()
        return self.get(vol.id)

    def rename(self, ref: str, new_name: str) -> info.VolumeInfo:
        self._begin_change()
        with self._meta_lock:
            vol = self._lookup(ref)
            names.check_name(new_name)
            if new_name != vol.name:
                if new_name in self.state.by_name:
                    raise errors.AlreadyExists(
                        '%s already exists in group %s'
                        % (new_name, self.name))
                self._apply_live(records.R_RENAME,
                                 {'vid': vol.vid, 'name': new_name})
        self.commit()
        return self.get(vol.id)

    def flatten(self, volume: str, progress=None) -> info.VolumeInfo:
        """Copy in all shared data so ``volume`` no longer needs a parent.

        Long-running; I/O continues. ``progress(done, total)`` is called as
        clusters are processed. A crash midway keeps what was copied and
        the parent; run it again to finish.
        """
        self._check_usable(write=True)
        with self._meta_lock:
            vol = self._lookup(volume, state_mod.VOLUME)
            independent = vol.parent is None
        if independent:
            self.commit()        # every management call is a barrier
            return self.get(vol.id)
        with self._meta_lock:
            ncl = self.state.nclusters(vol.size)
            need = sum(1 for lcl in range(ncl)
                       if vol.map.get(lcl) == UNMAPPED and
                       self.state.resolve(vol, lcl) >= 0)
            if vol.thin and need > self._available():
                raise errors.NoSpace(
                    'flattening %s needs %d MiB; group %s has %d MiB '
                    'available' % (vol.name, need * self.cluster_size >> 20,
                                   self.name, max(0, self._available()) *
                                   self.cluster_size >> 20))
        gate = self.gate(vol)
        copied = 0
        for lcl in range(ncl):
            gate.enter()
            try:
                if vol.deleted:
                    raise errors.VolumeNotFound('%s was deleted' % volume)
                copied += self._copy_up(vol, lcl)
            finally:
                gate.leave()
            if progress is not None and (lcl % 256 == 255 or
                                         lcl == ncl - 1):
                progress(lcl + 1, ncl)
        # What was copied stays (durable at the next commit) if this is
        # refused; running flatten again finishes.
        self._begin_change()
        while True:
            # Cutting the link may merge a hidden parent (clone_volume)
            # into its other child: that volume's gate is closed too.
            with self._meta_lock:
                want = {vol, *self._heirs(vol.parent, vol)}
            with _exclusive_all([self.gate(v) for v in want]):
                if vol.deleted:
                    raise errors.VolumeNotFound('%s was deleted' % volume)
                # Anything a concurrent merge re-parented is copied here
                # (not under the metadata lock: copying may commit).
                for lcl in range(self.state.nclusters(vol.size)):
                    self._copy_up(vol, lcl)
                with self._meta_lock:
                    if not set(self._heirs(vol.parent, vol)) <= want:
                        continue        # the forest changed: again
                    if vol.parent is not None:
                        self._apply_live(records.R_FLATTEN_DONE,
                                         {'vid': vol.vid})
            break
        self.commit()
        return self.get(vol.id)

    def _copy_up(self, vol, lcl: int) -> int:
        with self.alloc_lock(vol):
            if vol.map.get(lcl) != UNMAPPED:
                return 0
            src = self.state.resolve(vol, lcl)
            if src < 0:
                return 0
            pcl = self.allocate_cluster(vol)
            try:
                sdev, soff = self.locate(src)
                ddev, doff = self.locate(pcl)
                ddev.pwrite(sdev.pread(self.cluster_size, soff), doff)
            except BaseException:
                self.abandon_cluster(pcl)
                raise
            self.publish(vol, lcl, pcl)
            return 1

    def add_pv(self, path: str, size: int | None = None) -> None:
        """Grow the group with another physical volume."""
        self._check_usable(write=True)
        with self._commit_lock:
            existed = os.path.exists(path)
            dev = devices.Device.open(path, create_size=size)
            labelled = listed = False
            try:
                try:
                    lab = layout.Label.decode(dev.pread(layout.LABEL_SIZE, 0),
                                              path)
                except errors.MetadataError:
                    lab = None
                if lab is not None:
                    mine = lab.group_uuid == self.uuid
                    if not mine or any(p.uuid == lab.pv_uuid
                                       for p in self._pvs):
                        raise errors.AlreadyExists(
                            '%s already belongs to a volume group' % path,
                            path=path)
                base = sum(p.clusters for p in self._pvs)
                pv = self._format_pv(dev, len(self._pvs), 0, True, base)
                labelled = True
                # The superblock before the group's memory: refused for
                # want of space, it leaves the group as it was.
                try:
                    self._write_superblock(pvs=self._pvs + [pv])
                except errors.NoSpace:
                    raise
                except errors.EngineError as exc:
                    # The superblock in use may list the new PV now.
                    listed = True
                    self._fail(exc)
                    raise
            except BaseException:
                if labelled and not listed and existed:
                    _wipe_label(dev)
                dev.close()
                if not existed and not listed:
                    os.unlink(path)
                raise
            self._watch(dev)
            with self._meta_lock:
                self._pvs.append(pv)
                self.allocator.grow(pv.clusters)

    # -- data path and checks -------------------------------------------------

    def open_volume(self, ref: str):
        """A handle for I/O on a volume or (read-only) a snapshot."""
        from storage_engine.volstore import volume as volume_mod
        self._check_usable()
        with self._meta_lock:
            vol = self._lookup(ref)
        return volume_mod.VolumeHandle(self, vol)

    def check(self):
        """Consistency check of the open group, online: I/O and
        management operations go on while it runs (see check.py).
        """
        from storage_engine.volstore import check as check_mod
        self._check_usable()
        return check_mod.check_open_group(self)


def _check_policy(ratio, reserved) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or \
            not math.isfinite(ratio) or ratio < 1.0:
        raise errors.InvalidArgument('over-subscription ratio %r must be a '
                                     'finite number >= 1.0' % (ratio,))
    if isinstance(reserved, bool) or not isinstance(reserved, int) or \
            not 0 <= reserved < 100:
        raise errors.InvalidArgument('reserved percentage %r must be an '
                                     'integer in 0..99' % (reserved,))


def _wipe_label(dev) -> None:
    """Best effort, while a failed create unwinds.

    The error the caller sees is the one that made the create fail.
    """
    try:
        dev.pwrite(bytes(layout.LABEL_SIZE), 0)
        dev.sync()
    except errors.EngineError:
        pass


class _exclusive_all:
    """Close several gates exclusively, in a fixed order (no deadlock)."""

    def __init__(self, gates):
        self._gates = sorted(set(gates), key=id)
        self._cms = []

    def __enter__(self):
        for g in self._gates:
            cm = g.exclusive()
            cm.__enter__()
            self._cms.append(cm)

    def __exit__(self, *exc):
        while self._cms:
            self._cms.pop().__exit__(None, None, None)
