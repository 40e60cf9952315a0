"""One storage node: its pools, volumes, snapshots, exports and jobs.

:class:`Node` is the service's domain layer. The HTTP API is a thin shell
around it, and it knows nothing of HTTP: methods take plain values, return
plain JSON-ready dicts and raise the engine's errors. Its methods block
(volume-group commits, metadata-store round trips) and are thread-safe; the
API calls them from a thread pool.

Two stores, one order
---------------------
The volume groups are the truth about data: what volumes and snapshots
exist, their sizes and allocation. The metadata store (SQLite or etcd,
shared by every node of a cluster) holds what must be unique across nodes
and what must survive a restart outside the groups:

``volumes/<id>``   a volume or snapshot: its node, pool, kind, name, state,
                   the create request it came from (for idempotency) and
                   its incarnation (storage_engine/incarnation.py)
``names/<name>``   the id holding a name (volume and snapshot names are
                   unique in the cluster)
``exports/<id>``   an export: volume, protocol, admitted hosts, its
                   address (NBD: export name; AoE: shelf and slot), state
                   and incarnation
``jobs/<id>``      a long-running job (flatten), resumed after a restart
``nodes/<node>``   the node's NBD endpoint, ``ports/<host>/<port>`` its port
``aoe/shelves/<shelf>``       the node's AoE shelf (claimed at start)
``aoe/slots/<shelf>/<slot>``  the slot of one AoE export

Every change claims its store keys first (``create`` is atomic across
nodes), then changes the volume group, then marks the record done, and
undoes the claims if the group refuses. A crash, or a metadata store that
fails between the steps, leaves a record in ``creating`` or ``deleting``,
or a name claimed by nobody; the reconciler (reconcile.py) finishes or
undoes each of those by comparing the records with the groups: at start,
before the node serves anything, and while it runs, as soon as the store
answers again. A request that meets an object half done has it
reconciled on the spot, so repeating an interrupted create completes it.

A delete may name the incarnations it is meant for, so a delete that
arrives late never removes a later create of the same id
(storage_engine/incarnation.py).

Exports go the same way: an exporter whose exports need a number of their
own (an AoE slot) has :class:`Addresses`; the number is claimed before the
export's record is written and given back after the record is deleted,
and a claim that no record holds (a crash between the two) is given back
at start.
"""

import concurrent.futures
import contextlib
import dataclasses
import datetime
import threading
import time
import typing

from oslo_log import log as logging

from storage_engine import errors
from storage_engine import incarnation as incarnation_mod
from storage_engine import metastore
from storage_engine import names
from storage_engine.service import pool_health
from storage_engine.service import reconcile

LOG = logging.getLogger(__name__)

VOLUME = 'volume'
SNAPSHOT = 'snapshot'

CREATING = 'creating'
AVAILABLE = 'available'
DELETING = 'deleting'

RUNNING = 'running'
SUCCEEDED = 'succeeded'
FAILED = 'failed'

#: finished jobs kept in memory for GET /jobs
KEEP_FINISHED_JOBS = 100


def iso_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(
        ts, datetime.timezone.utc).isoformat().replace('+00:00', 'Z')


@dataclasses.dataclass(frozen=True)
class Addresses:
    """The numbers one exporter tells its exports apart by (the AoE slots
    of the node's shelf).

    Each export claims one number under ``prefix`` in the metadata store
    (atomic across the nodes sharing it), and its record holds it as
    ``field``. ``name`` says what the numbers are, for messages.
    """

    prefix: str
    numbers: range
    field: str
    name: str


class Exporter(typing.Protocol):
    """What the node needs from an export transport (nbd_exporter.py,
    aoe_exporter.py). Methods are called from the node's worker threads.
    """

    #: the ``protocol`` of the exports it serves: 'nbd', 'aoe'
    protocol: str
    #: the numbers its exports claim in the store, or None
    addresses: Addresses | None

    def check_hosts(self, hosts: list) -> list[str]:
        """``hosts`` checked and normalised (InvalidArgument names the
        first bad one).
        """

    def address(self, ident: str, number: int | None) -> dict:
        """The record fields that address export ``ident``, given the
        number it claimed (None without ``addresses``).
        """

    def publish(self, ident: str, rec: dict, backend,
                description: str) -> None:
        """Serve ``backend`` as the export of record ``rec``, to its
        ``hosts`` only.
        """

    def withdraw(self, ident: str, rec: dict) -> None:
        """Stop serving the export of ``rec`` and cut off its clients."""

    def connection(self, rec: dict) -> dict:
        """How a client reaches the export of ``rec`` (the API's
        ``connection``).
        """

    def connections(self) -> int:
        """Clients connected now."""

    def describe(self) -> dict:
        """The endpoint, for the node's view (``GET /node``)."""


class _KeyedLocks:
    """One lock per id, so two requests about one object run in turn.

    Re-entrant: a request holding an id's lock may meet the object half
    done and reconcile it (which takes the same lock) on the spot.
    """

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}

    @contextlib.contextmanager
    def __call__(self, *keys: str):
        held = []
        try:
            for key in sorted(set(keys)):
                with self._guard:
                    entry = self._locks.setdefault(key,
                                                   [threading.RLock(), 0])
                    entry[1] += 1
                entry[0].acquire()
                held.append(key)
            yield
        finally:
            for key in reversed(held):
                with self._guard:
                    entry = self._locks[key]
                    entry[0].release()
                    entry[1] -= 1
                    if not entry[1]:
                        del self._locks[key]


class _Stopping(Exception):
    """Raised into a job's progress callback when the node stops."""


class _Job:
    def __init__(self, job_id: str, kind: str, volume_id: str,
                 created_at: float):
        self.id = job_id
        self.kind = kind
        self.volume_id = volume_id
        self.state = RUNNING
        self.done = 0
        self.total = 0
        self.error = None
        self.created_at = created_at
        self.finished_at = None

    def view(self) -> dict:
        percent = 100.0 if self.state == SUCCEEDED else (
            round(100.0 * self.done / self.total, 1) if self.total else 0.0)
        return {'id': self.id, 'kind': self.kind,
                'volume_id': self.volume_id, 'state': self.state,
                'progress': {'done': self.done, 'total': self.total,
                             'percent': percent},
                'error': self.error,
                'created_at': iso_time(self.created_at),
                'finished_at': iso_time(self.finished_at)}


class Node:
    """The pools, volumes, snapshots, exports and jobs of one node.

    ``pools`` maps pool names to open :class:`VolumeGroup` objects, which
    the node owns from now on (:meth:`close` closes them). ``health``
    watches them (pool_health.py; it reopens pools if it has an opener).
    ``reconcile_interval``: seconds between two background reconciliation
    passes (0: only after a metadata-store failure), see reconcile.py.
    """

    # Record states, for the reconciler.
    VOLUME = VOLUME
    SNAPSHOT = SNAPSHOT
    CREATING = CREATING
    AVAILABLE = AVAILABLE
    DELETING = DELETING

    def __init__(self, name: str, store: metastore.MetadataStore,
                 pools: dict, default_pool: str, default_thin: bool,
                 exporters: typing.Iterable[Exporter], version: str = '',
                 reconcile_interval: float = 300.0,
                 health: pool_health.PoolHealth | None = None):
        if default_pool not in pools:
            raise errors.InvalidArgument(
                'default pool %s is not one of the pools (%s)'
                % (default_pool, ', '.join(sorted(pools))))
        self.exporters = {e.protocol: e for e in exporters}
        if 'nbd' not in self.exporters:
            raise errors.InvalidArgument('a node always serves NBD')
        self.name = name
        self.reconciler = reconcile.Reconciler(self, reconcile_interval)
        # Every store call that fails tells the reconciler, which finishes
        # or undoes the interrupted operation once the store answers.
        self.store = reconcile.WatchedStore(store,
                                            self.reconciler.store_failed)
        self.pools = dict(pools)
        self.default_pool = default_pool
        self.default_thin = default_thin
        self.version = version
        self.started_at = time.time()
        self._lock = _KeyedLocks()
        self._jobs: dict[str, _Job] = {}
        self._jobs_lock = threading.Lock()
        self._job_threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix='job')
        # Exports served now: {id: (record, volume handle)}.
        self._handles: dict[str, tuple[dict, typing.Any]] = {}
        self._closed = False
        self.health = health or pool_health.PoolHealth()
        for pool_name, vg in sorted(self.pools.items()):
            self.health.watch(pool_name, vg)

    # -- store records --------------------------------------------------------

    @staticmethod
    def _vkey(ident: str) -> str:
        return 'volumes/%s' % ident

    @staticmethod
    def _nkey(name: str) -> str:
        return 'names/%s' % name

    @staticmethod
    def _ekey(ident: str) -> str:
        return 'exports/%s' % ident

    @staticmethod
    def _jkey(ident: str) -> str:
        return 'jobs/%s' % ident

    def _mine(self, prefix: str) -> dict:
        """``{id: (record, revision)}`` of this node's records under
        ``prefix``.
        """
        out = {}
        for key, (rec, rev) in self.store.list(prefix).items():
            if rec.get('node') == self.name:
                out[key.rsplit('/', 1)[1]] = (rec, rev)
        return out

    def _record(self, ident: str, kind: str) -> tuple[dict, int]:
        """The record of this node's volume or snapshot ``ident``.

        A record half done (``creating``, ``deleting``) is an operation
        that was interrupted, unless one is running now: under the
        object's lock it is finished or undone on the spot, and the
        outcome answers.
        """
        ident = names.check_id(ident)
        cls = errors.SnapshotNotFound if kind == SNAPSHOT \
            else errors.VolumeNotFound
        for attempt in (0, 1):
            try:
                rec, rev = self.store.get(self._vkey(ident))
            except metastore.NotFound:
                raise cls('%s %s not found' % (kind, ident),
                          id=ident) from None
            if rec.get('node') != self.name:
                raise cls('%s %s is on node %s, not on %s'
                          % (kind, ident, rec.get('node'), self.name),
                          id=ident, node=rec.get('node'))
            if rec.get('kind') != kind:
                raise errors.WrongKind('%s is a %s, not a %s'
                                       % (ident, rec.get('kind'), kind),
                                       id=ident)
            if rec.get('state') == AVAILABLE:
                return rec, rev
            if not attempt:
                with self._lock(ident):
                    self.reconciler.object(ident)
        raise errors.Busy('%s %s is %s' % (kind, ident, rec.get('state')),
                          id=ident, state=rec.get('state'))

    def _present_one(self, ident: str):
        """``(pool, VolumeInfo)`` of the group object ``ident``, or None."""
        for pool, vg in self.pools.items():
            try:
                info = vg.get(ident)
            except errors.NotFound:
                continue
            if info.id == ident:
                return pool, info
        return None

    def _pool(self, name: str | None):
        name = self.default_pool if name is None else name
        try:
            return name, self.pools[name]
        except KeyError:
            raise errors.NotFound('pool %s not found on node %s'
                                  % (name, self.name), pool=name) from None

    def _drop_keys(self, *keys: str) -> None:
        """Delete store keys during an undo; one that is gone is fine."""
        for key in keys:
            try:
                self.store.delete(key)
            except metastore.NotFound:
                pass

    def _undo(self, *keys: str) -> None:
        """Drop the keys of an operation that failed, keeping its error:
        if the store fails too, the reconciler drops them when it is back.
        """
        try:
            self._drop_keys(*keys)
        except errors.EngineError as exc:
            LOG.warning('could not undo %s (%s); the node undoes it when '
                        'the metadata store answers', ', '.join(keys), exc)

    @contextlib.contextmanager
    def _recording(self, what: str):
        """Say what happens to ``what`` when the store fails under it."""
        try:
            yield
        except (metastore.StoreUnavailable, metastore.StoreError) as exc:
            raise errors.Unavailable(
                '%s was interrupted: the metadata store failed (%s). The '
                'node finishes or undoes it when the store answers again; '
                'repeating the same request completes it' % (what, exc),
                reason=exc.code) from exc

    def _claim(self, kind: str, ident: str, name: str, request: dict,
               extra: dict, incarnation: str | None):
        """Claim ``volumes/<id>`` and ``names/<name>`` for a new object.

        Returns None when they are claimed, or the existing object's view
        when this exact create was made before (an idempotent replay,
        which makes the object the replay's incarnation). A create that
        was interrupted is finished or undone first, so repeating it
        completes it. The caller holds ``ident``'s lock.
        """
        rec = dict(extra, node=self.name, kind=kind, name=name,
                   state=CREATING, request=request, incarnation=incarnation)
        for attempt in (0, 1):
            try:
                self.store.create(self._vkey(ident), rec)
                break
            except metastore.KeyExists:
                try:
                    old, rev = self.store.get(self._vkey(ident))
                except metastore.NotFound:
                    continue        # deleted meanwhile: claim it again
            mine = old.get('node') == self.name
            if mine and old.get('state') in (CREATING, DELETING) and \
                    not attempt:
                self.reconciler.object(ident)
                continue
            if (mine and old.get('kind') == kind
                    and old.get('request') == request
                    and old.get('state') == AVAILABLE):
                if incarnation is not None and \
                        old.get('incarnation') != incarnation:
                    self.store.put(self._vkey(ident),
                                   dict(old, incarnation=incarnation),
                                   expect_revision=rev)
                return (self.volume(ident) if kind == VOLUME
                        else self.snapshot(ident))
            raise errors.AlreadyExists(
                'id %s is already in use by another %s; a create may be '
                'repeated only with the same request' % (ident, kind),
                id=ident)
        else:
            raise errors.Busy('id %s is being claimed by another request; '
                              'try again' % ident, id=ident)
        try:
            self.store.create(self._nkey(name),
                              {'id': ident, 'node': self.name})
        except metastore.KeyExists:
            self._undo(self._vkey(ident))
            raise errors.AlreadyExists(
                'a volume or snapshot named %s already exists' % name,
                name=name) from None
        except BaseException:
            self._undo(self._vkey(ident))
            raise
        return None

    def _settle(self, ident: str, **changes) -> None:
        rec, rev = self.store.get(self._vkey(ident))
        rec.update(changes)
        self.store.put(self._vkey(ident), rec, expect_revision=rev)

    # -- views ----------------------------------------------------------------

    def _volume_view(self, pool: str, info, rec: dict | None) -> dict:
        return {'id': info.id, 'name': info.name, 'pool': pool,
                'size': info.size,
                'provisioning': 'thin' if info.thin else 'thick',
                'allocated': info.allocated,
                'source': (rec or {}).get('source'),
                'has_parent': info.has_parent,
                'created_at': iso_time(info.created_at),
                'incarnation': (rec or {}).get('incarnation'),
                'status': AVAILABLE if rec else 'error'}

    def _snapshot_view(self, pool: str, info, rec: dict | None) -> dict:
        return {'id': info.id, 'name': info.name, 'pool': pool,
                'volume_id': info.origin_id, 'size': info.size,
                'created_at': iso_time(info.created_at),
                'incarnation': (rec or {}).get('incarnation'),
                'status': AVAILABLE if rec else 'error'}

    def _find(self, ident: str, kind: str):
        """``(pool, VolumeInfo, record)`` of an available object."""
        rec, _rev = self._record(ident, kind)
        pool, vg = self._pool(rec['pool'])
        return pool, vg.get(names.check_id(ident)), rec

    # -- node and pools -------------------------------------------------------

    def pool(self, name: str) -> dict:
        name, vg = self._pool(name)
        cap = vg.capacity()
        return {'name': name, 'cluster_size': cap.cluster_size,
                'total': cap.total, 'free': cap.free,
                'allocated': cap.allocated, 'provisioned': cap.provisioned,
                'thick_reserved': cap.thick_reserved,
                'available_thin': cap.available_thin,
                'max_over_subscription_ratio':
                    cap.max_over_subscription_ratio,
                'reserved_percentage': cap.reserved_percentage,
                'volumes': cap.volumes, 'snapshots': cap.snapshots,
                'physical_volumes': [
                    {'index': pv.index, 'path': pv.path, 'size': pv.size,
                     'free': pv.free} for pv in vg.physical_volumes()],
                **self.health.view(name)}

    def list_pools(self) -> list[dict]:
        return [self.pool(name) for name in sorted(self.pools)]

    def check_pool(self, name: str) -> dict:
        """The consistency check of pool ``name``'s group, run online:
        I/O and other requests go on (see volstore/check.py).
        """
        name, vg = self._pool(name)
        report = vg.check()
        return {'pool': name, 'group': report.group, 'ok': report.ok,
                'errors': report.errors, 'notes': report.notes,
                'stats': report.stats}

    def reopen_pool(self, name: str) -> dict:
        """Bring a pool stopped by an I/O error back without restarting
        the node: close its group, open it again from disk (replaying its
        journal), and serve its exports from the new group (their clients
        are disconnected, and reconnect). A pool that is not stopped is
        only checked again (out of space, it returns to service if it has
        room). See pool_health.py.
        """
        name, _vg = self._pool(name)
        with self._lock('pool/%s' % name):
            vg = self.pools[name]
            if not self.health.stopped(name):
                self.health.recheck(name)
                return self.pool(name)
            # Its exports, by their records (those a reopen that failed
            # before withdrew too): withdrawn, then served from the new
            # group.
            exports = {ident: rec for ident, (rec, _rev)
                       in self._mine('exports').items()
                       if rec.get('state') != DELETING and
                       self._mine_one(rec['volume_id']) == name}
            for ident in exports:
                self._withdraw(ident)
            self.pools[name] = self.health.reopen(name, vg)
            for ident, rec in sorted(exports.items()):
                try:
                    self._publish(ident, rec, name)
                except errors.EngineError as exc:
                    LOG.error('export %s of %s is not served again after '
                              'reopening pool %s: %s', ident,
                              rec['volume_id'], name, exc)
            return self.pool(name)

    def info(self) -> dict:
        pools = self.list_pools()
        with self._jobs_lock:
            running = sum(1 for j in self._jobs.values()
                          if j.state == RUNNING)
        return {
            'name': self.name, 'version': self.version,
            'uptime': round(time.time() - self.started_at, 3),
            'nbd': self.exporters['nbd'].describe(),
            'aoe': (self.exporters['aoe'].describe()
                    if 'aoe' in self.exporters else None),
            'health': self.health.summary(),
            'stats': {
                'pools': len(pools),
                'volumes': sum(p['volumes'] for p in pools),
                'snapshots': sum(p['snapshots'] for p in pools),
                'exports': len(self._handles),
                'nbd_connections': self.exporters['nbd'].connections(),
                'jobs_running': running,
                'reconcile': dict(self.reconciler.status(),
                                  last_pass_at=iso_time(
                                      self.reconciler.last_pass_at)),
                'capacity': {k: sum(p[k] for p in pools) for k in
                             ('total', 'free', 'allocated', 'provisioned')},
            }}

    # -- volumes --------------------------------------------------------------

    def list_volumes(self, pool: str | None = None,
                     name: str | None = None) -> list[dict]:
        records = self._mine('volumes')
        pools = [self._pool(pool)[0]] if pool is not None else \
            sorted(self.pools)
        out = []
        for p in pools:
            for info in self.pools[p].volumes():
                if name is not None and info.name != name:
                    continue
                rec = records.get(info.id, (None, 0))[0]
                out.append(self._volume_view(p, info, rec))
        return out

    def volume(self, ident: str) -> dict:
        pool, info, rec = self._find(ident, VOLUME)
        return self._volume_view(pool, info, rec)

    def create_volume(self, name: str, size: int, pool: str | None = None,
                      provisioning: str | None = None,
                      source: dict | None = None,
                      ident: str | None = None,
                      incarnation: str | None = None) -> tuple[dict, bool]:
        """Create a volume; returns ``(view, created)``.

        ``source``: ``{'snapshot_id': id}`` or ``{'volume_id': id}`` makes
        a clone, in the source's pool. ``incarnation``: see
        storage_engine/incarnation.py.
        """
        names.check_name(name, 'volume name')
        ident = names.check_id(ident) if ident is not None \
            else names.new_id()
        if incarnation is not None:
            incarnation_mod.check(incarnation)
        if provisioning not in (None, 'thin', 'thick'):
            raise errors.InvalidArgument(
                'provisioning must be thin or thick, not %r'
                % (provisioning,))
        thin = self.default_thin if provisioning is None \
            else provisioning == 'thin'
        src_kind, src_id = self._source(source)
        with self._lock(ident, *([src_id] if src_id else [])):
            if src_id is not None:
                src_rec, _rev = self._record(src_id, src_kind)
                if pool is not None and pool != src_rec['pool']:
                    raise errors.InvalidArgument(
                        'a clone is made in its source\'s pool %s, not %s'
                        % (src_rec['pool'], pool))
                pool = src_rec['pool']
            pool, vg = self._pool(pool)
            request = {'name': name, 'size': size, 'pool': pool,
                       'provisioning': 'thin' if thin else 'thick',
                       'source': source}
            replay = self._claim(VOLUME, ident, name, request,
                                 {'pool': pool, 'source': source},
                                 incarnation)
            if replay is not None:
                return replay, False
            try:
                if src_kind == SNAPSHOT:
                    vg.clone(src_id, name, size=size, thin=thin,
                             volume_id=ident)
                elif src_kind == VOLUME:
                    vg.clone_volume(src_id, name, size=size, thin=thin,
                                    volume_id=ident)
                else:
                    vg.create_volume(name, size, thin=thin, volume_id=ident)
            except BaseException:
                self._undo(self._nkey(name), self._vkey(ident))
                raise
            with self._recording('the create of volume %s' % ident):
                self._settle(ident, state=AVAILABLE)
            LOG.info('created volume %s (%s) in pool %s', name, ident, pool)
            return self.volume(ident), True

    @staticmethod
    def _source(source):
        if source is None:
            return None, None
        if not isinstance(source, dict) or len(source) != 1:
            raise errors.InvalidArgument(
                'source must name one snapshot_id or one volume_id')
        (key, value), = source.items()
        kinds = {'snapshot_id': SNAPSHOT, 'volume_id': VOLUME}
        if key not in kinds:
            raise errors.InvalidArgument(
                'source must name one snapshot_id or one volume_id')
        value = names.check_id(value)
        source[key] = value
        return kinds[key], value

    def update_volume(self, ident: str, name: str | None = None,
                      size: int | None = None,
                      provisioning: str | None = None) -> dict:
        """Rename, extend and/or turn thin or thick; all or nothing."""
        ident = names.check_id(ident)
        if name is not None:
            names.check_name(name, 'volume name')
        if provisioning not in (None, 'thin', 'thick'):
            raise errors.InvalidArgument(
                'provisioning must be thin or thick, not %r'
                % (provisioning,))
        with self._lock(ident):
            pool, info, rec = self._find(ident, VOLUME)
            vg = self.pools[pool]
            if size is not None and size < info.size:
                raise errors.InvalidSize(
                    'cannot shrink %s from %d to %d bytes'
                    % (info.name, info.size, size))
            rename = name is not None and name != info.name
            if rename:
                try:
                    self.store.create(self._nkey(name),
                                      {'id': ident, 'node': self.name})
                except metastore.KeyExists:
                    raise errors.AlreadyExists(
                        'a volume or snapshot named %s already exists'
                        % name, name=name) from None
            thin = None if provisioning is None else provisioning == 'thin'
            convert = thin is not None and thin != info.thin
            grow = size is not None and size != info.size
            # The reversible changes first and the one that is not
            # (extend) last, so a refusal anywhere is undone entirely.
            done = []
            try:
                if rename:
                    vg.rename(ident, name)
                    done.append(lambda: vg.rename(ident, info.name))
                if convert:
                    vg.set_provisioning(ident, thin)
                    done.append(lambda: vg.set_provisioning(ident,
                                                            info.thin))
                if grow:
                    vg.extend(ident, size)
            except BaseException:
                for undo in reversed(done):
                    undo()
                if rename:
                    self._undo(self._nkey(name))
                raise
            if rename:
                with self._recording('the rename of volume %s' % ident):
                    self._settle(ident, name=name)
                    self._drop_keys(self._nkey(info.name))
            return self.volume(ident)

    def delete_volume(self, ident: str,
                      incarnations: list[str] | None = None,
                      remove_exports: bool = False) -> None:
        """Delete a volume: only the incarnations named, if any are (see
        storage_engine/incarnation.py); refused while it is exported unless
        ``remove_exports``, which withdraws its exports first (what a
        detach that never arrived left), and only if the delete applies.
        """
        ident = names.check_id(ident)
        if incarnations is not None:
            incarnations = [incarnation_mod.check(t) for t in incarnations]
        while True:
            exports = sorted(self._exports_of(ident)) if remove_exports \
                else []
            with self._lock(ident, *exports):
                if remove_exports and \
                        sorted(self._exports_of(ident)) != exports:
                    continue            # exported meanwhile: lock those too
                pool, info, rec = self._find(ident, VOLUME)
                incarnation_mod.refuse(VOLUME, ident, rec.get('incarnation'),
                                       incarnations)
                if not remove_exports:
                    self._refuse_if_exported(ident, info.name)
                self._refuse_if_job(ident, info.name)
                # Its snapshots stay (independent, as in Cinder, which
                # refuses itself to delete a volume with snapshots it
                # knows of).
                for export_id in exports:
                    self._remove_export(export_id)
                with self._recording('the delete of volume %s' % ident):
                    self._settle(ident, state=DELETING)
                    self._finish_delete_or_undo(pool, ident, info.name,
                                                VOLUME)
                LOG.info('deleted volume %s (%s)', info.name, ident)
                return

    def _exports_of(self, ident: str) -> list[str]:
        return [e for e, (rec, _r) in self._mine('exports').items()
                if rec.get('volume_id') == ident]

    def _finish_delete(self, pool: str, ident: str, name: str,
                       kind: str) -> None:
        vg = self.pools[pool]
        try:
            if kind == VOLUME:
                vg.delete_volume(ident)
            else:
                vg.delete_snapshot(ident)
        except errors.NotFound:
            pass            # a delete that crashed after the group's part
        self._drop_name(name, ident)
        self._drop_keys(self._vkey(ident))

    def _finish_delete_or_undo(self, pool: str, ident: str, name: str,
                               kind: str) -> None:
        """_finish_delete; a pool out of space refuses it having changed
        nothing (NoSpace), and then the record is available again.
        """
        try:
            self._finish_delete(pool, ident, name, kind)
        except errors.NoSpace:
            self._settle(ident, state=AVAILABLE)
            raise

    def _drop_name(self, name: str, ident: str) -> None:
        try:
            rec, rev = self.store.get(self._nkey(name))
        except metastore.NotFound:
            return
        if rec.get('id') == ident:
            try:
                self.store.delete(self._nkey(name), expect_revision=rev)
            except (metastore.NotFound, metastore.RevisionMismatch):
                pass

    def _refuse_if_exported(self, ident: str, name: str) -> None:
        exports = self._exports_of(ident)
        if exports:
            raise errors.Busy('%s is exported (exports %s); remove the '
                              'exports first' % (name, ', '.join(exports)),
                              exports=exports)

    def _refuse_if_job(self, ident: str, name: str) -> None:
        with self._jobs_lock:
            jobs = [j.id for j in self._jobs.values()
                    if j.volume_id == ident and j.state == RUNNING]
        if jobs:
            raise errors.Busy('%s has a running job (%s)'
                              % (name, ', '.join(jobs)), jobs=jobs)

    def revert_volume(self, ident: str, snapshot_id: str) -> dict:
        ident = names.check_id(ident)
        snapshot_id = names.check_id(snapshot_id)
        with self._lock(ident, snapshot_id):
            pool, info, _rec = self._find(ident, VOLUME)
            spool, snap, _srec = self._find(snapshot_id, SNAPSHOT)
            if spool != pool or snap.origin_id != ident:
                raise errors.InvalidArgument(
                    'snapshot %s is not a snapshot of volume %s'
                    % (snap.name, info.name))
            self._refuse_if_job(ident, info.name)
            self.pools[pool].revert(ident, snapshot_id)
            LOG.info('reverted volume %s to snapshot %s', info.name,
                     snap.name)
            return self.volume(ident)

    # -- jobs -----------------------------------------------------------------

    def flatten_volume(self, ident: str) -> dict:
        """Start (or return the running) flatten job of a volume."""
        ident = names.check_id(ident)
        with self._lock(ident):
            pool, info, _rec = self._find(ident, VOLUME)
            with self._jobs_lock:
                for job in self._jobs.values():
                    if job.volume_id == ident and job.state == RUNNING:
                        return job.view()
            job_id = names.new_id()
            self.store.create(self._jkey(job_id), {
                'node': self.name, 'kind': 'flatten', 'volume_id': ident,
                'created_at': time.time()})
            return self._start_flatten(job_id, ident, pool, time.time())

    def _start_flatten(self, job_id: str, ident: str, pool: str,
                       created_at: float) -> dict:
        job = _Job(job_id, 'flatten', ident, created_at)
        with self._jobs_lock:
            self._jobs[job_id] = job
        self._job_threads.submit(self._run_flatten, job, pool)
        return job.view()

    def _run_flatten(self, job: _Job, pool: str) -> None:
        def progress(done, total):
            job.done, job.total = done, total
            if self._closed:
                raise _Stopping()

        try:
            self.pools[pool].flatten(job.volume_id, progress=progress)
            job.state = SUCCEEDED
            LOG.info('flattened volume %s', job.volume_id)
        except _Stopping:
            # Flatten keeps what it copied; the restarted node resumes.
            LOG.info('job %s stops with the node at %d/%d', job.id,
                     job.done, job.total)
            return
        except Exception as exc:
            job.state = FAILED
            if isinstance(exc, errors.EngineError):
                job.error = {'code': exc.code, 'message': exc.message}
            else:
                LOG.exception('flatten of %s failed', job.volume_id)
                job.error = {'code': 'internal_error', 'message': str(exc)}
            LOG.warning('flatten of volume %s failed: %s', job.volume_id,
                        job.error['message'])
        job.finished_at = time.time()
        # The job is finished: a restart must not run it again.
        try:
            self._drop_keys(self._jkey(job.id))
        except errors.EngineError as exc:
            LOG.warning('could not drop the record of job %s: %s', job.id,
                        exc)
        with self._jobs_lock:
            done = [j for j in self._jobs.values() if j.state != RUNNING]
            for old in sorted(done, key=lambda j: j.finished_at)[
                    :max(0, len(done) - KEEP_FINISHED_JOBS)]:
                del self._jobs[old.id]

    def list_jobs(self) -> list[dict]:
        with self._jobs_lock:
            return [j.view() for j in sorted(self._jobs.values(),
                                             key=lambda j: j.created_at)]

    def job(self, ident: str) -> dict:
        ident = names.check_id(ident)
        with self._jobs_lock:
            job = self._jobs.get(ident)
            if job is None:
                raise errors.NotFound('job %s not found' % ident, id=ident)
            return job.view()

    # -- snapshots ------------------------------------------------------------

    def list_snapshots(self, volume_id: str | None = None,
                       name: str | None = None) -> list[dict]:
        records = self._mine('volumes')
        if volume_id is not None:
            volume_id = names.check_id(volume_id)
        out = []
        for p in sorted(self.pools):
            for info in self.pools[p].snapshots():
                if volume_id is not None and info.origin_id != volume_id:
                    continue
                if name is not None and info.name != name:
                    continue
                rec = records.get(info.id, (None, 0))[0]
                out.append(self._snapshot_view(p, info, rec))
        return out

    def snapshot(self, ident: str) -> dict:
        pool, info, rec = self._find(ident, SNAPSHOT)
        return self._snapshot_view(pool, info, rec)

    def create_snapshot(self, volume_id: str, name: str,
                        ident: str | None = None,
                        incarnation: str | None = None
                        ) -> tuple[dict, bool]:
        names.check_name(name, 'snapshot name')
        volume_id = names.check_id(volume_id)
        ident = names.check_id(ident) if ident is not None \
            else names.new_id()
        if incarnation is not None:
            incarnation_mod.check(incarnation)
        with self._lock(ident, volume_id):
            pool, _info, _rec = self._find(volume_id, VOLUME)
            request = {'name': name, 'volume_id': volume_id}
            replay = self._claim(SNAPSHOT, ident, name, request,
                                 {'pool': pool, 'volume_id': volume_id},
                                 incarnation)
            if replay is not None:
                return replay, False
            try:
                self.pools[pool].create_snapshot(volume_id, name,
                                                 snapshot_id=ident)
            except BaseException:
                self._undo(self._nkey(name), self._vkey(ident))
                raise
            with self._recording('the create of snapshot %s' % ident):
                self._settle(ident, state=AVAILABLE)
            LOG.info('created snapshot %s (%s) of volume %s', name, ident,
                     volume_id)
            return self.snapshot(ident), True

    def delete_snapshot(self, ident: str,
                        incarnations: list[str] | None = None) -> None:
        """Delete a snapshot (only the incarnations named, if any are)."""
        ident = names.check_id(ident)
        if incarnations is not None:
            incarnations = [incarnation_mod.check(t) for t in incarnations]
        with self._lock(ident):
            pool, info, rec = self._find(ident, SNAPSHOT)
            incarnation_mod.refuse(SNAPSHOT, ident, rec.get('incarnation'),
                                   incarnations)
            self._refuse_if_exported(ident, info.name)
            # Clones made from it keep reading what it holds (the group
            # keeps it, hidden, while they do).
            with self._recording('the delete of snapshot %s' % ident):
                self._settle(ident, state=DELETING)
                self._finish_delete_or_undo(pool, ident, info.name,
                                            SNAPSHOT)
            LOG.info('deleted snapshot %s (%s)', info.name, ident)

    # -- exports --------------------------------------------------------------

    @staticmethod
    def _protocol(rec: dict) -> str:
        return rec.get('protocol', 'nbd')

    def _export_view(self, ident: str, rec: dict) -> dict:
        exporter = self.exporters[self._protocol(rec)]
        return {'id': ident, 'volume_id': rec['volume_id'],
                'protocol': self._protocol(rec), 'hosts': rec['hosts'],
                'read_only': rec['read_only'],
                'connection': exporter.connection(rec),
                'incarnation': rec.get('incarnation'),
                'created_at': iso_time(rec['created_at'])}

    def list_exports(self, volume_id: str | None = None) -> list[dict]:
        if volume_id is not None:
            volume_id = names.check_id(volume_id)
        mine = self._mine('exports')
        return [self._export_view(i, rec) for i, (rec, _r) in
                sorted(mine.items(), key=lambda kv: kv[1][0]['created_at'])
                if volume_id is None or rec['volume_id'] == volume_id]

    def export(self, ident: str) -> dict:
        ident = names.check_id(ident)
        rec, _rev = self._export_record(ident)
        return self._export_view(ident, rec)

    def _export_record(self, ident: str) -> tuple[dict, int]:
        """This node's export ``ident``; one whose removal was interrupted
        is finished on the spot, and is then not found.
        """
        for attempt in (0, 1):
            try:
                rec, rev = self.store.get(self._ekey(ident))
            except metastore.NotFound:
                rec = None
            if rec is None or rec.get('node') != self.name:
                raise errors.NotFound('export %s not found on node %s'
                                      % (ident, self.name), id=ident)
            if rec.get('state') != DELETING:
                return rec, rev
            if not attempt:
                with self._lock(ident):
                    self.reconciler.export(ident)
        raise errors.Busy('export %s is being removed' % ident, id=ident)

    def _exporter(self, protocol) -> Exporter:
        try:
            return self.exporters[protocol]
        except (KeyError, TypeError):
            raise errors.InvalidArgument(
                'protocol %r is not served by node %s (it serves %s)'
                % (protocol, self.name, ', '.join(sorted(self.exporters))),
                protocol=protocol) from None

    @staticmethod
    def _check_hosts(exporter: Exporter, hosts) -> list[str]:
        if not isinstance(hosts, list) or not hosts:
            raise errors.InvalidArgument(
                'hosts must be a non-empty list of the hosts admitted')
        return exporter.check_hosts(hosts)

    def _replay_export(self, ident: str, request: dict,
                       incarnation: str | None) -> dict | None:
        """The view of export ``ident`` if this exact create was made
        before (which makes it the replay's incarnation), None if the id
        is free; AlreadyExists if it is taken. The caller holds the lock.
        """
        try:
            old, rev = self.store.get(self._ekey(ident))
        except metastore.NotFound:
            return None
        if old.get('node') == self.name and old.get('state') == DELETING:
            # A removal that was interrupted: finish it, then make anew.
            self.reconciler.export(ident)
            return self._replay_export(ident, request, incarnation)
        if old.get('node') == self.name and old.get('request') == request:
            if incarnation is not None and \
                    old.get('incarnation') != incarnation:
                old['incarnation'] = incarnation
                self.store.put(self._ekey(ident), old, expect_revision=rev)
            if ident not in self._handles:
                # Recorded by a create the store failed under: serve it.
                self.reconciler.export(ident)
            return self._export_view(ident, old)
        raise errors.AlreadyExists(
            'export id %s is already in use by another export' % ident,
            id=ident)

    def _claim_number(self, exporter: Exporter, ident: str) -> int | None:
        """Claim the number of a new export of ``exporter``, if it needs
        one.
        """
        addresses = exporter.addresses
        if addresses is None:
            return None
        try:
            return self.store.allocate(addresses.prefix, addresses.numbers,
                                       {'node': self.name, 'export': ident})
        except metastore.Exhausted:
            raise errors.NoSpace(
                'node %s has no free address for another %s export: all %d '
                '%s are in use; remove an export first'
                % (self.name, exporter.protocol, len(addresses.numbers),
                   addresses.name), protocol=exporter.protocol) from None

    def _release_number(self, exporter: Exporter, number: int | None,
                        ident: str) -> None:
        """Give back the number export ``ident`` claimed (if it is still
        its claim: a number given back is never taken from another).
        """
        addresses = exporter.addresses
        if addresses is None or number is None:
            return
        key = '%s/%d' % (addresses.prefix, number)
        try:
            claim, rev = self.store.get(key)
            if claim.get('node') == self.name and \
                    claim.get('export') == ident:
                self.store.delete(key, expect_revision=rev)
        except (metastore.NotFound, metastore.RevisionMismatch):
            pass

    def create_export(self, volume_id: str, hosts: list,
                      protocol: str = 'nbd', read_only: bool = False,
                      ident: str | None = None,
                      incarnation: str | None = None) -> tuple[dict, bool]:
        volume_id = names.check_id(volume_id)
        ident = names.check_id(ident) if ident is not None \
            else names.new_id()
        if incarnation is not None:
            incarnation_mod.check(incarnation)
        exporter = self._exporter(protocol)
        hosts = self._check_hosts(exporter, hosts)
        with self._lock(ident, volume_id):
            try:
                rec, _rev = self.store.get(self._vkey(volume_id))
                kind = rec.get('kind')
            except metastore.NotFound:
                kind = VOLUME
            pool, info, _vrec = self._find(volume_id, kind)
            read_only = bool(read_only) or kind == SNAPSHOT
            request = {'volume_id': volume_id, 'hosts': hosts,
                       'protocol': protocol, 'read_only': read_only}
            replay = self._replay_export(ident, request, incarnation)
            if replay is not None:
                return replay, False
            # The address first, then the record that holds it: a crash
            # between the two leaves a claim no record holds, which the
            # next start gives back.
            number = self._claim_number(exporter, ident)
            try:
                rec = dict(request, node=self.name, request=request,
                           state=AVAILABLE, incarnation=incarnation,
                           created_at=time.time(),
                           **exporter.address(ident, number))
                try:
                    with self._recording('the export of %s as %s'
                                         % (volume_id, ident)):
                        self.store.create(self._ekey(ident), rec)
                except metastore.KeyExists:
                    # Another node made an export with this id meanwhile
                    # (one node's creates of one id run in turn).
                    raise errors.AlreadyExists(
                        'export id %s is already in use by another export'
                        % ident, id=ident) from None
                try:
                    self._publish(ident, rec, pool)
                except BaseException:
                    self._undo(self._ekey(ident))
                    raise
            except BaseException:
                try:
                    self._release_number(exporter, number, ident)
                except errors.EngineError as exc:
                    LOG.warning('could not give back the address of export '
                                '%s (%s); the node does when the metadata '
                                'store answers', ident, exc)
                raise
            LOG.info('exported %s %s as %s over %s to %s', kind, info.name,
                     ident, protocol, ', '.join(hosts))
            return self._export_view(ident, rec), True

    def _publish(self, ident: str, rec: dict, pool: str) -> None:
        handle = self.pools[pool].open_volume(rec['volume_id'])
        self.exporters[self._protocol(rec)].publish(
            ident, rec, handle, '%s %s' % (rec['volume_id'], handle.name))
        self._handles[ident] = (rec, handle)

    def _withdraw(self, ident: str) -> None:
        """Stop serving export ``ident`` (if it is served)."""
        served = self._handles.pop(ident, None)
        if served is not None:
            rec = served[0]
            self.exporters[self._protocol(rec)].withdraw(ident, rec)

    def delete_export(self, ident: str,
                      incarnations: list[str] | None = None) -> None:
        """Remove an export (only the incarnations named, if any are)."""
        ident = names.check_id(ident)
        if incarnations is not None:
            incarnations = [incarnation_mod.check(t) for t in incarnations]
        with self._lock(ident):
            rec, _rev = self._export_record(ident)
            incarnation_mod.refuse('export', ident, rec.get('incarnation'),
                                   incarnations)
            self._remove_export(ident)

    def _remove_export(self, ident: str) -> None:
        """Mark export ``ident`` being removed, then remove it. The caller
        holds its lock.
        """
        rec, rev = self._export_record(ident)
        with self._recording('the removal of export %s' % ident):
            # Marked first: if the store fails later, the reconciler
            # finishes the removal instead of serving the export again.
            rev = self.store.put(self._ekey(ident),
                                 dict(rec, state=DELETING),
                                 expect_revision=rev)
            self._finish_export_delete(ident, rec, rev)
        LOG.info('removed export %s of %s', ident, rec['volume_id'])

    def _finish_export_delete(self, ident: str, rec: dict, rev: int) -> None:
        exporter = self.exporters.get(self._protocol(rec))
        self._withdraw(ident)
        try:
            self.store.delete(self._ekey(ident), expect_revision=rev)
        except metastore.NotFound:
            pass
        # After the record: an interruption in between leaves a claim no
        # record holds, which the reconciler gives back.
        if exporter is not None:
            self._release_number(exporter, self._number(exporter, rec),
                                 ident)

    @staticmethod
    def _number(exporter: Exporter, rec: dict) -> int | None:
        if exporter.addresses is None:
            return None
        return rec.get(exporter.addresses.field)

    def _check_restorable(self, exports: dict) -> None:
        """Refuse to start if an export cannot be served as recorded: its
        protocol is not configured, or its address is not this node's now.
        Serving it elsewhere would silently break the hosts attached.
        """
        for ident, (rec, _rev) in sorted(exports.items()):
            protocol = self._protocol(rec)
            exporter = self.exporters.get(protocol)
            if exporter is None:
                raise errors.InvalidArgument(
                    'node %s has %s exports (%s) but does not serve %s: '
                    'configure it again (for aoe: [aoe] interface), then '
                    'remove those exports if they are no longer wanted'
                    % (self.name, protocol, ident, protocol),
                    protocol=protocol, id=ident)
            now = exporter.address(ident, self._number(exporter, rec))
            then = {k: rec.get(k) for k in now}
            if now != then:
                raise errors.InvalidArgument(
                    'export %s of node %s is addressed %s, which the node '
                    'does not serve now (%s): restore the configuration '
                    'it had' % (ident, self.name, then, now), id=ident)

    # -- start and stop -------------------------------------------------------

    def start(self) -> None:
        """Reconcile the store with the groups, restore the exports and
        resume the jobs (reconcile.py), then keep reconciling in the
        background. Runs before the node serves anything.
        """
        self._check_restorable(self._mine('exports'))
        self.reconciler.run()
        self.reconciler.watch()

    def _present(self) -> dict:
        """``{id: (pool, VolumeInfo)}`` of everything the groups hold."""
        present = {}
        for pool, vg in self.pools.items():
            for info in vg.volumes() + vg.snapshots():
                present[info.id] = (pool, info)
        return present

    def _mine_one(self, ident: str) -> str | None:
        """The pool of this node's available object ``ident``, or None."""
        try:
            rec, _rev = self.store.get(self._vkey(ident))
        except metastore.NotFound:
            return None
        if rec.get('node') != self.name or rec.get('state') != AVAILABLE:
            return None
        return rec['pool']

    def _job_known(self, ident: str) -> bool:
        with self._jobs_lock:
            return ident in self._jobs

    def close(self) -> None:
        """Stop jobs, close the groups (each writes a checkpoint)."""
        if self._closed:
            return
        self._closed = True
        self.reconciler.stop()
        self.health.close()
        # Running jobs stop at their next progress report; the groups
        # close only after them.
        self._job_threads.shutdown(wait=True, cancel_futures=True)
        for name, vg in self.pools.items():
            try:
                vg.close()
            except errors.EngineError as exc:
                LOG.error('closing pool %s: %s', name, exc)
