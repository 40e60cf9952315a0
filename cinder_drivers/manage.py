"""Engine volumes and snapshots brought under Cinder, and let go again.

``cinder manage`` / ``cinder snapshot-manage`` take an engine volume or
snapshot that Cinder does not know (made with the ``storage-engine``
command, or unmanaged earlier) and make it a Cinder one; ``unmanage``
leaves it in the engine. ``manageable-list`` and
``snapshot-manageable-list`` show what may be taken, and why not when it
may not.

A reference is ``{'source-name': <engine name>}`` (looked up in the
backend's pool) or ``{'source-id': <engine id>}``. The engine object keeps
its id, recorded as the Cinder object's ``provider_id``. A managed volume
is renamed after its Cinder volume and grows to the next whole GiB; the
engine cannot rename a snapshot, so a managed snapshot keeps its name. A
snapshot is managed as a snapshot of the Cinder volume it was taken of,
and of no other.

Cinder turns every manageable entry into its ManageableVolume or
ManageableSnapshot object before answering: ``reference``,
``source_reference`` and ``extra_info`` are dicts of strings, ``size`` is
whole GiB and ``cinder_id`` the Cinder object's id.
"""

from oslo_log import log as logging
from oslo_utils import units

from cinder import exception
from cinder.volume import volume_utils

from storage_engine import errors

LOG = logging.getLogger(__name__)


def gib(size_bytes: int) -> int:
    """Whole GiB holding ``size_bytes`` (what Cinder counts)."""
    return -(-size_bytes // units.Gi)


class ManageMixin:
    """The manage and unmanage part of the driver interface.

    For :class:`cinder_drivers.base.EngineDriverBase`, whose ``client``,
    ``pool``, ``_translated``, ``_engine_id`` and ``_snapshot_engine_id``
    it uses.
    """

    # -- volumes --------------------------------------------------------------

    def _find_existing(self, existing_ref) -> dict:
        with self._translated('looking up %s' % (existing_ref,)):
            if 'source-id' in existing_ref:
                try:
                    return self.client.volume(existing_ref['source-id'])
                except (errors.NotFound, errors.InvalidArgument) as exc:
                    reason = str(exc)
            elif 'source-name' in existing_ref:
                found = self.client.volumes(pool=self.pool,
                                            name=existing_ref['source-name'])
                if found:
                    return found[0]
                reason = 'no volume of that name in pool %s' % self.pool
            else:
                reason = 'give source-name or source-id'
        raise exception.ManageExistingInvalidReference(
            existing_ref=existing_ref, reason=reason)

    def manage_existing_get_size(self, volume, existing_ref):
        return gib(self._find_existing(existing_ref)['size'])

    def manage_existing(self, volume, existing_ref):
        found = self._find_existing(existing_ref)
        if found['pool'] != self.pool:
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason='it is in pool %s, not %s' % (found['pool'],
                                                     self.pool))
        with self._translated('managing %s as volume %s'
                              % (found['name'], volume.id)):
            size = gib(found['size']) * units.Gi
            # Cinder counts whole GiB: the volume grows to the next one.
            self.client.update_volume(
                found['id'], name=volume.name,
                size=size if size != found['size'] else None)
        return {'provider_id': found['id']}

    def unmanage(self, volume):
        # The volume stays in the engine under its Cinder name.
        LOG.info('volume %s (%s) is no longer managed by Cinder; it stays '
                 'in pool %s', volume.name, self._engine_id(volume),
                 self.pool)

    def get_manageable_volumes(self, cinder_volumes, marker, limit, offset,
                               sort_keys, sort_dirs):
        # engine id -> Cinder id
        known = {self._engine_id(v): v.id for v in cinder_volumes}
        with self._translated('listing pool %s' % self.pool):
            volumes = self.client.volumes(pool=self.pool)
            exported = {e['volume_id'] for e in self.client.exports()}
        entries = []
        for vol in volumes:
            reason = None
            if vol['id'] in known:
                reason = 'already managed'
            elif vol['id'] in exported:
                reason = 'exported'
            entries.append(_manageable(vol, reason, known, {
                'provisioning': vol['provisioning']}))
        return volume_utils.paginate_entries_list(
            entries, marker, limit, offset, sort_keys, sort_dirs)

    # -- snapshots ------------------------------------------------------------

    def _find_existing_snapshot(self, snapshot, existing_ref) -> dict:
        """The engine snapshot ``existing_ref`` names, in this backend's
        pool and taken of ``snapshot``'s volume.
        """
        reason = None
        with self._translated('looking up snapshot %s' % (existing_ref,)):
            if 'source-id' in existing_ref:
                try:
                    found = self.client.snapshot(existing_ref['source-id'])
                except (errors.NotFound, errors.InvalidArgument) as exc:
                    found, reason = None, str(exc)
            elif 'source-name' in existing_ref:
                found = next(
                    (s for s in self.client.snapshots(
                        name=existing_ref['source-name'])
                     if s['pool'] == self.pool), None)
                if found is None:
                    reason = ('no snapshot of that name in pool %s'
                              % self.pool)
            else:
                found, reason = None, 'give source-name or source-id'
        if found is not None:
            volume_id = self._engine_id(snapshot.volume)
            if found['pool'] != self.pool:
                reason = 'it is in pool %s, not %s' % (found['pool'],
                                                       self.pool)
            elif found['volume_id'] != volume_id:
                reason = ('it is a snapshot of engine volume %s, not of '
                          'volume %s (engine volume %s)'
                          % (found['volume_id'], snapshot.volume_id,
                             volume_id))
        if reason is not None:
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref, reason=reason)
        return found

    def manage_existing_snapshot_get_size(self, snapshot, existing_ref):
        return gib(self._find_existing_snapshot(snapshot,
                                                existing_ref)['size'])

    def manage_existing_snapshot(self, snapshot, existing_ref):
        found = self._find_existing_snapshot(snapshot, existing_ref)
        LOG.info('engine snapshot %s (%s) of volume %s is now Cinder '
                 'snapshot %s; it keeps its name', found['name'],
                 found['id'], snapshot.volume_id, snapshot.id)
        return {'provider_id': found['id']}

    def unmanage_snapshot(self, snapshot):
        LOG.info('snapshot %s (%s) is no longer managed by Cinder; it stays '
                 'in pool %s', snapshot.id,
                 self._snapshot_engine_id(snapshot), self.pool)

    def get_manageable_snapshots(self, cinder_snapshots, marker, limit,
                                 offset, sort_keys, sort_dirs):
        # engine id -> Cinder id
        known = {self._snapshot_engine_id(s): s.id for s in cinder_snapshots}
        with self._translated('listing the snapshots of pool %s'
                              % self.pool):
            names = {v['id']: v['name']
                     for v in self.client.volumes(pool=self.pool)}
            snapshots = [s for s in self.client.snapshots()
                         if s['pool'] == self.pool]
            exported = {e['volume_id'] for e in self.client.exports()}
        entries = []
        for snap in snapshots:
            reason = None
            if snap['id'] in known:
                reason = 'already managed'
            elif snap['volume_id'] not in names:
                # Cinder manages a snapshot as one of a volume of its own.
                reason = 'its volume is gone'
            elif snap['id'] in exported:
                reason = 'exported'
            entries.append(_manageable(
                snap, reason, known, {'created_at': snap['created_at']},
                source_reference={
                    'source-name': names.get(snap['volume_id']),
                    'source-id': snap['volume_id']}))
        return volume_utils.paginate_entries_list(
            entries, marker, limit, offset, sort_keys, sort_dirs)


def _manageable(obj: dict, reason: str | None, known: dict, extra: dict,
                **more) -> dict:
    """One entry of a manageable list, in the form Cinder's objects take
    (``extra_info`` a dict): ``obj`` an engine volume or snapshot,
    ``reason`` why it is not safe to manage (None: it is), ``known``
    engine id -> Cinder id.
    """
    return dict({'reference': {'source-name': obj['name']},
                 'size': gib(obj['size']),
                 'safe_to_manage': reason is None,
                 'reason_not_safe': reason,
                 'cinder_id': known.get(obj['id']),
                 'extra_info': dict(extra, id=obj['id'])}, **more)
