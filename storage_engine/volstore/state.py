"""The metadata model of a volume group and the one function that changes it.

Volumes and snapshots are nodes of a forest, as in SPDK's blobstore: each
owns the clusters in its own map and reads everything else through its
parent snapshot. A snapshot takes its origin's map as it is (so taking one
is O(1), whatever the size) and the origin continues with an empty map
whose parent is the new snapshot. A clone is a new volume whose parent is
a snapshot. A clone of a volume is both at once: a hidden snapshot of the
volume, with the volume and the new clone as its two children. Every
physical cluster therefore has exactly one owner, which is what the
consistency check verifies.

:meth:`State.apply` is the only code that changes the model. Live
operations validate, make their choices (ids, clusters, times), encode them
as a journal record and apply that record; crash recovery applies the same
records to the last checkpoint. Both paths run the same code, so they
cannot disagree.

Deleting a snapshot merges its map into its only child (metadata only, no
data copy). A snapshot with several children (clones made from it, or a
volume reverted to it) that is deleted is *hidden*: its name is released
and it is merged or dropped as soon as it has at most one child left (its
clones deleted or flattened). Deleting a volume leaves its snapshots: they
stay, read-only, whatever they hold.
"""

from storage_engine import errors
from storage_engine.volstore import clustermap
from storage_engine.volstore.clustermap import UNMAPPED
from storage_engine.volstore.clustermap import ZERO
from storage_engine.volstore import records

VOLUME = 'volume'
SNAPSHOT = 'snapshot'


class VolumeMeta:
    """One volume or snapshot."""

    __slots__ = ('vid', 'id', 'name', 'kind', 'size', 'thin', 'parent',
                 'origin_vid', 'created', 'hidden', 'map', 'owned',
                 'children', 'deleted', 'gate', 'alloc_lock')

    def __init__(self, vid, id, name, kind, size, thin, created,
                 origin_vid=None):
        self.vid = vid
        self.id = id
        self.name = name
        self.kind = kind
        self.size = size
        self.thin = thin
        self.created = created
        # For a snapshot: the volume it was taken of. For a clone: the
        # snapshot it was made from.
        self.origin_vid = origin_vid
        self.parent = None
        self.hidden = False
        self.map = clustermap.ClusterMap()
        self.owned = 0
        self.children = set()
        # Set when the node leaves the model, so open handles notice.
        self.deleted = False
        # Concurrency helpers of the live group, made on first use.
        self.gate = None
        self.alloc_lock = None

    @property
    def read_only(self) -> bool:
        return self.kind == SNAPSHOT

    def __repr__(self):
        return '<%s %s %r vid=%d>' % (self.kind, self.id, self.name, self.vid)


class State:
    """Volumes, snapshots and group policy, with capacity bookkeeping."""

    def __init__(self, cluster_size: int, on_free=None):
        self.cluster_size = cluster_size
        self.volumes: dict[int, VolumeMeta] = {}
        self.by_name: dict[str, VolumeMeta] = {}
        self.by_id: dict[str, VolumeMeta] = {}
        self.next_vid = 1
        self.policy = {'over_subscription_ratio': 20.0,
                       'reserved_percentage': 0}
        # Clusters that thick volumes may still claim, and the sum of the
        # sizes of the (visible) volumes.
        self.thick_reserved = 0
        self.provisioned = 0
        # Called with each physical cluster a record frees. Live, the group
        # defers its reuse until the record is durable; replay ignores it
        # because free space is derived afterwards.
        self.on_free = on_free or (lambda pcl: None)

    # -- queries --------------------------------------------------------------

    def nclusters(self, size: int) -> int:
        return -(-size // self.cluster_size)

    def get(self, vid: int) -> VolumeMeta:
        try:
            return self.volumes[vid]
        except KeyError:
            raise errors.MetadataError('record names unknown volume %d' % vid)

    def resolve(self, vol: VolumeMeta, lcl: int) -> int:
        """Physical cluster holding ``lcl`` of ``vol``, or < 0 for zeros."""
        v = vol
        while True:
            value = v.map.get(lcl)
            if value != UNMAPPED:
                return value
            v = v.parent
            if v is None or lcl * self.cluster_size >= v.size:
                return ZERO

    def dependents(self, snap: VolumeMeta):
        """Yield every volume that reads through ``snap``."""
        stack = list(snap.children)
        while stack:
            node = stack.pop()
            if node.kind == VOLUME:
                yield node
            else:
                stack.extend(node.children)

    def visible(self):
        return (v for v in self.volumes.values() if not v.hidden)

    # -- the one mutator ------------------------------------------------------

    def apply(self, rtype: int, payload: bytes) -> None:
        if rtype == records.R_MAP:
            for vid, entries in records.decode_map(payload):
                vol = self.get(vid)
                for lcl, value in entries:
                    self.set_entry(vol, lcl, value)
            return
        handler = self._handlers.get(rtype)
        if handler is None:
            raise errors.MetadataError('unknown journal record type %d'
                                       % rtype)
        handler(self, records.decode_json(payload))

    def set_entry(self, vol: VolumeMeta, lcl: int, value: int) -> None:
        old = vol.map.set(lcl, value)
        delta = (value >= 0) - (old >= 0)
        if old >= 0:
            self.on_free(old)
        if delta:
            vol.owned += delta
            if self._is_thick(vol):
                self.thick_reserved -= delta

    # -- bookkeeping ----------------------------------------------------------

    @staticmethod
    def _is_thick(vol: VolumeMeta) -> bool:
        return vol.kind == VOLUME and not vol.thin

    def _account(self, vol: VolumeMeta, sign: int) -> None:
        if vol.kind == VOLUME:
            self.provisioned += sign * vol.size
            if not vol.thin:
                self.thick_reserved += sign * (self.nclusters(vol.size) -
                                               vol.owned)

    def _register(self, vol: VolumeMeta) -> None:
        self.volumes[vol.vid] = vol
        # Hidden snapshots keep their id (ids are never reused) but not
        # their name; lookups skip them.
        self.by_id[vol.id] = vol
        if not vol.hidden:
            self.by_name[vol.name] = vol
        self.next_vid = max(self.next_vid, vol.vid + 1)

    def _unregister(self, vol: VolumeMeta) -> None:
        del self.volumes[vol.vid]
        self._unname(vol)
        if self.by_id.get(vol.id) is vol:
            del self.by_id[vol.id]
        vol.deleted = True

    def _unname(self, vol: VolumeMeta) -> None:
        if self.by_name.get(vol.name) is vol:
            del self.by_name[vol.name]

    def _map_extents(self, vol: VolumeMeta, extents) -> None:
        """Map runs of clusters (thick allocations), as set_entry would."""
        for lcl, pcl, count in extents:
            replaced = vol.map.set_run(lcl, pcl, count)
            for old in replaced:
                self.on_free(old)
            delta = count - len(replaced)
            vol.owned += delta
            if self._is_thick(vol):
                self.thick_reserved -= delta

    def _free_all(self, vol: VolumeMeta) -> None:
        for pcl in vol.map.owned_clusters():
            self.on_free(pcl)
        vol.map = clustermap.ClusterMap()
        vol.owned = 0

    def _drop(self, vol: VolumeMeta) -> None:
        """Remove a node with no children; free what it owns."""
        self._account(vol, -1)
        self._free_all(vol)
        if vol.parent is not None:
            vol.parent.children.discard(vol)
        self._unregister(vol)

    def _merge_into_child(self, snap: VolumeMeta) -> None:
        (child,) = snap.children
        self._account(child, -1)
        limit = self.nclusters(child.size)
        keep_zeros = snap.parent is not None
        # Fill the child's map first, then re-parent it, so a concurrent
        # reader walking the old chain still finds every cluster.
        for lcl, value in list(snap.map.entries()):
            taken = lcl < limit and child.map.get(lcl) == UNMAPPED
            if value >= 0:
                if taken:
                    child.map.set(lcl, value)
                    child.owned += 1
                else:
                    self.on_free(value)
            elif taken and keep_zeros:
                child.map.set(lcl, ZERO)
        snap.map = clustermap.ClusterMap()
        snap.owned = 0
        child.parent = snap.parent
        if snap.parent is not None:
            snap.parent.children.discard(snap)
            snap.parent.children.add(child)
        snap.children = set()
        self._unregister(snap)
        self._account(child, +1)

    def _collect(self, node) -> None:
        """Merge or drop hidden snapshots that no longer need to exist."""
        while node is not None and node.hidden and len(node.children) <= 1:
            parent = node.parent
            if node.children:
                self._merge_into_child(node)
            else:
                self._drop(node)
            node = parent

    # -- handlers, one per record type ----------------------------------------

    def _on_create(self, body) -> None:
        vol = VolumeMeta(body['vid'], body['id'], body['name'], VOLUME,
                         body['size'], body['thin'], body['created'],
                         origin_vid=body.get('parent'))
        parent_vid = body.get('parent')
        if parent_vid is not None:
            vol.parent = self.get(parent_vid)
            vol.parent.children.add(vol)
        self._register(vol)
        # Account first: each mapped cluster then draws on the reservation.
        self._account(vol, +1)
        self._map_extents(vol, body.get('extents', ()))

    def _on_delete(self, body) -> None:
        vol = self.get(body['vid'])
        parent = vol.parent
        self._drop(vol)
        self._collect(parent)

    def _on_snapshot(self, body, hidden: bool = False) -> None:
        origin = self.get(body['origin'])
        self._account(origin, -1)
        snap = VolumeMeta(body['vid'], body['id'], body['name'], SNAPSHOT,
                          origin.size, True, body['created'],
                          origin_vid=origin.vid)
        # A hidden snapshot never takes its name (see _register).
        snap.hidden = hidden
        snap.map, snap.owned = origin.map, origin.owned
        origin.map, origin.owned = clustermap.ClusterMap(), 0
        snap.parent = origin.parent
        if snap.parent is not None:
            snap.parent.children.discard(origin)
            snap.parent.children.add(snap)
        origin.parent = snap
        snap.children = {origin}
        self._register(snap)
        self._account(origin, +1)

    def _on_clone_volume(self, body) -> None:
        """A clone of a volume: snapshot, clone, hide, as one record.

        One record rather than three (R_SNAPSHOT, R_CREATE,
        R_DELETE_SNAPSHOT): a commit of several records can be torn
        between them, and replay would then keep a visible snapshot the
        user never asked for; a record is all or nothing (its CRC).
        The snapshot is hidden from the start, so its name never enters
        the name index, and it stays hidden with its two children (the
        source and the clone) until one of them goes.
        """
        split = body['snapshot']
        self._on_snapshot({'vid': split['vid'], 'id': split['id'],
                           'name': split['name'], 'origin': body['source'],
                           'created': body['created']}, hidden=True)
        create = {k: v for k, v in body.items()
                  if k not in ('snapshot', 'source')}
        create['parent'] = split['vid']
        self._on_create(create)

    def _on_delete_snapshot(self, body) -> None:
        snap = self.get(body['vid'])
        snap.hidden = True
        self._unname(snap)
        self._collect(snap)

    def _on_rename(self, body) -> None:
        vol = self.get(body['vid'])
        self._unname(vol)
        vol.name = body['name']
        self.by_name[vol.name] = vol

    def _on_extend(self, body) -> None:
        vol = self.get(body['vid'])
        self._account(vol, -1)
        vol.size = body['size']
        self._account(vol, +1)
        self._map_extents(vol, body.get('extents', ()))

    def _on_revert(self, body) -> None:
        vol = self.get(body['vid'])
        snap = self.get(body['snapshot'])
        self._account(vol, -1)
        self._free_all(vol)
        old = vol.parent
        if old is not None:
            old.children.discard(vol)
        vol.parent = snap
        snap.children.add(vol)
        vol.size = snap.size
        self._account(vol, +1)
        self._collect(old)

    def _on_flatten_done(self, body) -> None:
        vol = self.get(body['vid'])
        old = vol.parent
        if old is not None:
            old.children.discard(vol)
        vol.parent = None
        self._collect(old)

    def _on_policy(self, body) -> None:
        self.policy.update(body)

    def _on_set_provisioning(self, body) -> None:
        vol = self.get(body['vid'])
        self._account(vol, -1)
        vol.thin = body['thin']
        self._account(vol, +1)

    _handlers = {
        records.R_CREATE: _on_create,
        records.R_DELETE: _on_delete,
        records.R_SNAPSHOT: _on_snapshot,
        records.R_DELETE_SNAPSHOT: _on_delete_snapshot,
        records.R_CLONE_VOLUME: _on_clone_volume,
        records.R_RENAME: _on_rename,
        records.R_EXTEND: _on_extend,
        records.R_REVERT: _on_revert,
        records.R_FLATTEN_DONE: _on_flatten_done,
        records.R_POLICY: _on_policy,
        records.R_SET_PROVISIONING: _on_set_provisioning,
    }
