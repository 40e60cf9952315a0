"""Consistency check of a volume group (``storage-engine vg check``).

What it verifies:

* checksums: the superblock in use, the checkpoint it points at, and every
  journal record replayed after it (a torn tail after the last commit is
  normal after a crash and reported as information);
* ownership: every physical cluster is owned at most once (by one volume,
  one snapshot or the checkpoint) and lies inside the group;
* no leaks: in an open group, every cluster the allocator holds is owned,
  or waiting for the commit that frees it (offline, free space is derived
  from ownership, so a leak cannot exist on disk by construction);
* structure: parents exist and are snapshots, no cycles, children lists
  match parents, names and ids unique, owned-cluster counts right, no
  mapping beyond a volume's size.

Run it on a quiescent group: clusters being filled by writes in flight
would show up as leaks for that instant.
"""

import dataclasses

from storage_engine import errors
from storage_engine.volstore import clustermap
from storage_engine.volstore import state as state_mod


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
    """Check a group that is not open anywhere, changing nothing on disk."""
    from storage_engine.volstore import group as group_mod
    try:
        vg = group_mod.VolumeGroup.open(pv0_path, pv_paths, read_only=True)
    except errors.GroupLocked as e:
        return CheckReport(pv0_path, errors=[
            '%s; check it through the service that holds it' % e])
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


def check_open_group(vg) -> CheckReport:
    report = CheckReport(vg.name)
    with vg._commit_lock, vg._meta_lock:
        _check_structure(vg.state, report)
        derived, problems = vg._derive_allocator()
        report.errors.extend(problems)
        pending = set(vg._frees)
        live = set(vg.allocator.used_clusters())
        owned = set(derived.used_clusters())
        leaked = live - owned - pending
        lost = owned - live
        if leaked:
            report.errors.append(
                '%d clusters allocated but owned by nothing (leaked): %s'
                % (len(leaked), _sample(leaked)))
        if lost:
            report.errors.append(
                '%d clusters owned but marked free (would be handed out '
                'twice): %s' % (len(lost), _sample(lost)))
        _check_checkpoint(vg, report)
        st = vg.state
        cs = vg.cluster_size
        report.stats.update({
            'volumes': sum(1 for v in st.volumes.values()
                           if v.kind == state_mod.VOLUME),
            'snapshots': sum(1 for v in st.volumes.values()
                             if v.kind == state_mod.SNAPSHOT and
                             not v.hidden),
            'hidden_snapshots': sum(1 for v in st.volumes.values()
                                    if v.hidden),
            'clusters_total': vg.allocator.total,
            'clusters_used': len(live),
            'clusters_pending_free': len(pending),
            'cluster_size': cs,
            'thick_reserved_clusters': st.thick_reserved,
        })
        if st.thick_reserved > vg.allocator.free_count:
            report.errors.append(
                'thick volumes have %d clusters reserved but only %d are '
                'free' % (st.thick_reserved, vg.allocator.free_count))
    return report


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


def _check_checkpoint(vg, report: CheckReport) -> None:
    """Re-read the checkpoint in use and verify its checksum."""
    from storage_engine.volstore import checkpoint
    ckpt = vg._ckpt
    if ckpt is None:
        report.errors.append('the superblock names no checkpoint')
        return
    try:
        blob = vg._read_runs(ckpt['runs'], ckpt['length'])
        checkpoint.load(blob, vg.cluster_size, vg._seed)
    except errors.MetadataError as e:
        report.errors.append('checkpoint: %s' % e)
    report.stats['checkpoint_bytes'] = ckpt['length']
