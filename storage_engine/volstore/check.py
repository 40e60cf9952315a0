"""Consistency check of a volume group, offline or while it serves I/O.

``storage-engine vg check`` runs it on a group no process has open
(:func:`check_group`); ``storage-engine pool check`` (the node's
``POST /v1/pools/{pool}/check``) on a group a node is serving
(:func:`check_open_group`, ``VolumeGroup.check``). Both run the same
checks. What they verify:

* checksums: the superblock in use, the checkpoint it points at, and every
  journal record after it, read back from disk (a torn tail after the
  last commit is normal after a crash and reported as information);
  every record the group has committed must be there, or a restart would
  lose it;
* ownership: every physical cluster is owned at most once (by one volume,
  one snapshot or the checkpoint) and lies inside the group;
* no leaks: every cluster the allocator holds is owned, waiting for the
  commit that frees it, or being filled by a write in flight (allocated,
  its mapping not published yet: ``VolumeGroup._filling``). Offline, free
  space is derived from ownership, so a leak cannot exist on disk by
  construction;
* structure: parents exist and are snapshots, no cycles, children lists
  match parents, names and ids unique, owned-cluster counts right, no
  mapping beyond a volume's size.

How it stays out of the way of a busy group
-------------------------------------------
The group's locks are held only to copy what the check needs: the model
(volumes, their maps, the name and id indexes), the allocator's map, the
clusters waiting to be freed and those being filled, and where the
metadata is on disk. Copying is memcpy work, proportional to allocated
clusters; meanwhile writes to clusters a volume already owns go on (they
take neither lock), and first writes, commits and management operations
wait for the copy only. Everything else runs on the copy, under no lock.

On-disk metadata is read under no lock either. The group may write a new
checkpoint meanwhile and then reuse the old one's clusters, or wrap the
journal over records the new checkpoint covers: so both superblock slots
are read before and after, and if either changed the reading starts
again. After a few changes in a row the last try holds the commit lock
while it reads (commits, not I/O, wait for that long).
"""

import dataclasses
import itertools
import time

from storage_engine import devices
from storage_engine import errors
from storage_engine.volstore import allocator as allocator_mod
from storage_engine.volstore import checkpoint
from storage_engine.volstore import clustermap
from storage_engine.volstore import journal as journal_mod
from storage_engine.volstore import layout
from storage_engine.volstore import state as state_mod

# Lock-free readings of the on-disk metadata before one under the commit
# lock (a group writing checkpoints back to back keeps moving it).
DISK_ATTEMPTS = 3


@dataclasses.dataclass
class CheckReport:
    group: str
    errors: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    stats: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_group(pv0_path: str, pv_paths: dict | None = None) -> CheckReport:
    """Check a group that is not open anywhere, changing nothing on disk.

    A group some process holds (a running ``storage-engine serve``)
    raises :class:`errors.GroupInUse`: it is checked online, through that
    process.
    """
    from storage_engine.volstore import group as group_mod
    try:
        vg = group_mod.VolumeGroup.open(pv0_path, pv_paths, read_only=True)
    except errors.GroupLocked as e:
        name = _group_name(pv0_path)
        raise errors.GroupInUse(
            'volume group %s (%s) is in use by a running process '
            '(storage-engine serve?); check it online with '
            '`storage-engine pool check %s`'
            % (name or '?', pv0_path, name or 'NAME'),
            path=pv0_path, group=name) from e
    except errors.MetadataError as e:
        report = CheckReport(pv0_path, errors=[str(e)])
        report.errors.extend(e.details.get('problems', []))
        return report
    try:
        report = check_open_group(vg)
        report.stats['journal_records_replayed'] = vg.replayed
        if vg.replayed:
            report.notes.append(
                '%d journal records after the last checkpoint (the group '
                'was not closed cleanly; the next open makes them a '
                'checkpoint)' % vg.replayed)
        return report
    finally:
        vg.close()


def _group_name(pv0_path: str) -> str | None:
    """The name in PV0's newest superblock, read without its lock (the
    process holding the group only ever writes a slot it does not read).
    """
    try:
        dev = devices.Device.open(pv0_path, read_only=True)
    except errors.EngineError:
        return None
    try:
        best = None
        for slot in layout.SUPERBLOCK_SLOTS:
            got = layout.decode_superblock(
                dev.pread(layout.SUPERBLOCK_SIZE, slot))
            if got and (best is None or got[0] > best[0]):
                best = got
        return best[1].get('name') if best else None
    except errors.EngineError:
        return None
    finally:
        dev.close()


def check_open_group(vg) -> CheckReport:
    """Check ``vg``, which may be serving I/O (see the module docstring)."""
    report = CheckReport(vg.name)
    with vg._commit_lock, vg._meta_lock:
        began = time.monotonic()
        snap = _Snapshot.of(vg)
        held = time.monotonic() - began
    _check_model(snap, report)
    held += _check_disk(vg, snap.disk, report)
    # What first writes, commits and management operations may have
    # waited for the check, at most.
    report.stats['locks_held_us'] = int(held * 1e6)
    return report


# -- the copy -----------------------------------------------------------------

@dataclasses.dataclass
class _Disk:
    """Where the group's metadata is, as the group knows it: what the
    disk must hold once every commit so far is durable.
    """

    uuid: str
    seed: int
    sb_seq: int
    ckpt: dict | None
    journal_offset: int
    journal_size: int
    replay_pos: int
    replay_lsn: int
    next_lsn: int

    @classmethod
    def of(cls, vg) -> '_Disk':
        """The caller holds the commit lock (every change to these is
        made under it, and every commit under it is durable when it
        releases it).
        """
        j = vg.journal
        ckpt = None if vg._ckpt is None else {
            'runs': [tuple(r) for r in vg._ckpt['runs']],
            'length': vg._ckpt['length']}
        return cls(vg.uuid, vg._seed, vg._sb_seq, ckpt, j.offset, j.size,
                   j.start_pos, j.start_lsn, j.next_lsn)


@dataclasses.dataclass
class _Snapshot:
    state: state_mod.State
    used: bytes                 # the allocator's map
    free_count: int
    total: int
    pending: frozenset          # freed by records not yet durable
    filling: frozenset          # being filled by writes in flight
    disk: _Disk

    @classmethod
    def of(cls, vg) -> '_Snapshot':
        """The caller holds the commit lock and the metadata lock."""
        alloc = vg.allocator
        return cls(_copy_state(vg.state), alloc.used_map(), alloc.free_count,
                   alloc.total, frozenset(vg._frees),
                   frozenset(vg._filling), _Disk.of(vg))


def _copy_state(st: state_mod.State) -> state_mod.State:
    """A copy of the model, inconsistencies and all: objects the indexes
    or the links name but the volume table does not are copied as well,
    so the structure check finds on the copy what it would on ``st``.
    """
    out = state_mod.State(st.cluster_size)
    out.next_vid = st.next_vid
    out.policy = dict(st.policy)
    out.thick_reserved = st.thick_reserved
    out.provisioned = st.provisioned
    copies = {}
    todo = list(itertools.chain(st.volumes.values(), st.by_name.values(),
                                st.by_id.values()))
    while todo:
        vol = todo.pop()
        if id(vol) in copies:
            continue
        new = state_mod.VolumeMeta(vol.vid, vol.id, vol.name, vol.kind,
                                   vol.size, vol.thin, vol.created,
                                   origin_vid=vol.origin_vid)
        new.hidden = vol.hidden
        new.owned = vol.owned
        new.deleted = vol.deleted
        # Slicing an array copies it (a memcpy per page).
        new.map.pages = [None if p is None else p[:] for p in vol.map.pages]
        copies[id(vol)] = (vol, new)
        if vol.parent is not None:
            todo.append(vol.parent)
        todo.extend(vol.children)
    for vol, new in copies.values():
        if vol.parent is not None:
            new.parent = copies[id(vol.parent)][1]
        new.children = {copies[id(c)][1] for c in vol.children}
    out.volumes = {vid: copies[id(v)][1] for vid, v in st.volumes.items()}
    out.by_name = {k: copies[id(v)][1] for k, v in st.by_name.items()}
    out.by_id = {k: copies[id(v)][1] for k, v in st.by_id.items()}
    return out


# -- the model ----------------------------------------------------------------

def _check_model(snap: _Snapshot, report: CheckReport) -> None:
    st = snap.state
    _check_structure(st, report)
    ckpt = snap.disk.ckpt
    derived, problems = allocator_mod.derive(
        snap.total, ckpt['runs'] if ckpt else (), st.volumes.values())
    report.errors.extend(problems)
    owned_map = derived.used_map()
    leaked, lost = set(), set()
    for pcl in _differences(snap.used, owned_map):
        (leaked if snap.used[pcl] else lost).add(pcl)
    leaked -= snap.pending | snap.filling
    if leaked:
        report.errors.append(
            '%d clusters allocated but owned by nothing (leaked): %s'
            % (len(leaked), _sample(leaked)))
    if lost:
        report.errors.append(
            '%d clusters owned but marked free (would be handed out '
            'twice): %s' % (len(lost), _sample(lost)))
    for what, clusters in (('waiting to be freed', snap.pending),
                           ('being filled by a write', snap.filling)):
        twice = {pcl for pcl in clusters
                 if pcl < snap.total and owned_map[pcl]}
        if twice:
            report.errors.append(
                '%d clusters %s are owned as well: %s'
                % (len(twice), what, _sample(twice)))
    report.stats.update({
        'volumes': sum(1 for v in st.volumes.values()
                       if v.kind == state_mod.VOLUME),
        'snapshots': sum(1 for v in st.volumes.values()
                         if v.kind == state_mod.SNAPSHOT and
                         not v.hidden),
        'hidden_snapshots': sum(1 for v in st.volumes.values()
                                if v.hidden),
        'clusters_total': snap.total,
        'clusters_used': snap.total - snap.free_count,
        'clusters_pending_free': len(snap.pending),
        'clusters_filling': len(snap.filling),
        'cluster_size': st.cluster_size,
        'thick_reserved_clusters': st.thick_reserved,
    })
    if st.thick_reserved > snap.free_count:
        report.errors.append(
            'thick volumes have %d clusters reserved but only %d are '
            'free' % (st.thick_reserved, snap.free_count))


def _differences(a: bytes, b: bytes):
    """Indexes where ``a`` and ``b`` (of one length) differ; equal chunks
    are compared at C speed and skipped.
    """
    step = 1 << 16
    for start in range(0, len(a), step):
        x, y = a[start:start + step], b[start:start + step]
        if x != y:
            for i, (p, q) in enumerate(zip(x, y)):
                if p != q:
                    yield start + i


def _sample(clusters) -> str:
    return ', '.join(str(c) for c in sorted(clusters)[:10]) + \
        (' ...' if len(clusters) > 10 else '')


def _check_structure(st: state_mod.State, report: CheckReport) -> None:
    err = report.errors.append
    names = {}
    for vol in st.volumes.values():
        where = '%s %s (vid %d)' % (vol.kind, vol.name, vol.vid)
        if not vol.hidden:
            if vol.name in names:
                err('name %s is used by vid %d and vid %d'
                    % (vol.name, names[vol.name], vol.vid))
            names[vol.name] = vol.vid
            if st.by_name.get(vol.name) is not vol:
                err('%s is missing from the name index' % where)
        if st.by_id.get(vol.id) is not vol:
            err('%s is missing from the id index' % where)
        if vol.kind not in (state_mod.VOLUME, state_mod.SNAPSHOT):
            err('%s has unknown kind' % where)
        if vol.size <= 0 or vol.size % 512:
            err('%s has invalid size %d' % (where, vol.size))
        parent = vol.parent
        if parent is not None:
            if st.volumes.get(parent.vid) is not parent:
                err('%s has a parent that is not in the group' % where)
            elif parent.kind != state_mod.SNAPSHOT:
                err('%s has a parent that is not a snapshot' % where)
            elif vol not in parent.children:
                err('%s is not among its parent\'s children' % where)
        for child in vol.children:
            if child.parent is not vol:
                err('%s lists child vid %d whose parent is another'
                    % (where, child.vid))
        if vol.kind == state_mod.VOLUME and vol.children:
            err('%s is a volume with children' % where)
        seen = set()
        node = vol
        while node is not None:
            if node.vid in seen:
                err('%s has a cycle in its parent chain' % where)
                break
            seen.add(node.vid)
            node = node.parent
        limit = st.nclusters(vol.size)
        owned = 0
        for lcl, value in vol.map.entries():
            if value >= 0:
                owned += 1
            elif value != clustermap.ZERO:
                err('%s has invalid map value %d at cluster %d'
                    % (where, value, lcl))
            if lcl >= limit:
                err('%s maps cluster %d beyond its size' % (where, lcl))
        if owned != vol.owned:
            err('%s owns %d clusters but counts %d'
                % (where, owned, vol.owned))
        if vol.hidden and len(vol.children) <= 1:
            err('%s is hidden but was not merged away' % where)


# -- the metadata on disk -----------------------------------------------------

def _check_disk(vg, disk: _Disk, report: CheckReport) -> float:
    """Check the metadata on disk; returns how long it held the commit
    lock (seconds).
    """
    held = 0.0
    report.stats.update(superblock_sequence=disk.sb_seq, checkpoint_bytes=0,
                        journal_records=0)
    for attempt in range(DISK_ATTEMPTS):
        if attempt:
            with vg._commit_lock:
                disk = _Disk.of(vg)
        found = _read_disk(vg, disk)
        if found is not None:
            break
    else:
        # The group keeps writing checkpoints: hold them off this once.
        with vg._commit_lock:
            began = time.monotonic()
            found = _read_disk(vg, _Disk.of(vg))
            held = time.monotonic() - began
        if found is None:
            found = (['the superblock on %s changed while the group held '
                      'off its commits: another process writes to it'
                      % vg._pvs[0].path], {})
    problems, stats = found
    report.errors.extend(problems)
    report.stats.update(stats)
    return held


def _superblock_slots(dev0) -> list[bytes]:
    return [dev0.pread(layout.SUPERBLOCK_SIZE, slot)
            for slot in layout.SUPERBLOCK_SLOTS]


def _read_disk(vg, disk: _Disk):
    """``(problems, stats)`` from the metadata on disk, or None if a
    superblock was written while it was being read (read again).
    """
    dev0 = vg._pvs[0].device
    slots = _superblock_slots(dev0)
    problems = []
    stats = {'superblock_sequence': disk.sb_seq, 'checkpoint_bytes': 0,
             'journal_records': 0}
    best = None
    for raw in slots:
        got = layout.decode_superblock(raw)
        if got and got[1].get('uuid') == disk.uuid and \
                (best is None or got[0] > best[0]):
            best = got
    if best is not None and best[0] > disk.sb_seq:
        return None                 # written since the group told us
    slot = layout.SUPERBLOCK_SLOTS[disk.sb_seq % 2]
    if best is None or best[0] < disk.sb_seq:
        problems.append(
            'superblock %d (slot at offset %d of %s) is unreadable or its '
            'checksum fails: the group would reopen from %s'
            % (disk.sb_seq, slot, dev0.path,
               'superblock %d, an older state' % best[0] if best
               else 'nothing (no valid superblock)'))
    else:
        body = best[1]
        on_disk = body.get('checkpoint')
        if on_disk is not None:
            on_disk = {'runs': [tuple(r) for r in on_disk['runs']],
                       'length': on_disk['length']}
        replay = body.get('replay') or {}
        if on_disk != disk.ckpt or \
                (replay.get('pos'), replay.get('lsn')) != \
                (disk.replay_pos, disk.replay_lsn):
            problems.append(
                'superblock %d on disk names checkpoint %s and journal '
                'start %s/%s; the group uses %s and %s/%s'
                % (disk.sb_seq, on_disk, replay.get('pos'),
                   replay.get('lsn'), disk.ckpt, disk.replay_pos,
                   disk.replay_lsn))
    state = None
    if disk.ckpt is None:
        problems.append('the superblock names no checkpoint')
    else:
        stats['checkpoint_bytes'] = disk.ckpt['length']
        try:
            blob = vg._read_runs(disk.ckpt['runs'], disk.ckpt['length'])
            state = checkpoint.load(blob, vg.cluster_size, disk.seed)
        except errors.MetadataError as e:
            problems.append('checkpoint: %s' % e)
    journal = journal_mod.Journal(dev0, disk.journal_offset,
                                  disk.journal_size, disk.seed)
    records = 0
    try:
        for lsn, rtype, payload in journal.replay(disk.replay_pos,
                                                  disk.replay_lsn):
            records += 1
            if state is not None:
                try:
                    state.apply(rtype, payload)
                except errors.MetadataError as e:
                    problems.append('journal record %d does not replay: '
                                    '%s' % (lsn, e))
                    state = None
        end = journal.next_lsn
    except errors.MetadataError as e:
        problems.append('journal: %s' % e)
        end = None
    stats['journal_records'] = records
    if end is not None and end < disk.next_lsn:
        problems.append(
            'journal records %d to %d were committed but are missing or '
            'corrupt on disk (their checksum or sequence fails at %d): a '
            'restart would lose them'
            % (end, disk.next_lsn - 1, end))
    if _superblock_slots(dev0) != slots:
        return None
    return problems, stats
