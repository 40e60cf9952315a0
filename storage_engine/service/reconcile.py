"""Finishing or undoing what an interruption left, on a running node.

Every change of a :class:`~.node.Node` claims its metadata-store keys,
changes a volume group, then marks its record done (see node.py). An
interruption between the steps leaves a record ``creating`` or
``deleting``, a name or an address claimed by nobody, an export recorded
but not served, or a job recorded but not running. Two interruptions
exist, and one reconciliation answers both:

* a crash: :meth:`Reconciler.run` at start, before anything is served;
* the metadata store failing under an operation (etcd stalled or down, an
  SQLite file locked past its timeout): the operation fails with a clear
  error, the store reports the failure here, and the node reconciles by
  itself as soon as the store answers again, with no restart
  (:meth:`Reconciler.watch`). A request the store gave up on may still be
  applied when the store wakes up (a stopped etcd reads its socket
  buffers when it continues), so the pass runs after the store answers,
  and again every ``interval`` seconds as a safety net.

While the node serves, each object is reconciled under its own lock, the
one its operations hold from their first step to their last: a record
found ``creating`` under that lock is an interrupted create, never one in
flight. The node also reconciles one object on the spot when a request
meets it half done (:meth:`Reconciler.object`), so a repeated create
completes the first and a delete finishes the one interrupted.

What reconciling does, by what the store and the groups hold:

* ``creating`` and the group has it: finished (``available``); the group
  lacks it: undone (record and name dropped);
* ``deleting``: the delete is finished;
* the group holds an object the store does not know: adopted (made
  offline, or a store restored from an older backup);
* a name claimed for an object that does not bear it: dropped;
* an export: ``deleting`` is finished; one recorded but not served is
  served; one served with no record is withdrawn; an address (AoE slot)
  claimed by no record is given back;
* a job recorded but not running is resumed; one whose volume is gone is
  dropped.
"""

import contextlib
import threading
import time

from oslo_log import log as logging

from storage_engine import errors
from storage_engine import metastore

LOG = logging.getLogger(__name__)

# Seconds between two probes of a store that does not answer.
MIN_BACKOFF = 0.5
MAX_BACKOFF = 10.0


class WatchedStore:
    """A metadata store that tells ``on_failure`` when a call fails because
    the store could not be reached or answered nonsense (the operation
    calling it may have been interrupted half way).
    """

    FAILURES = (metastore.StoreUnavailable, metastore.StoreError)

    def __init__(self, store, on_failure):
        self._store = store
        self._on_failure = on_failure

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr) or name.startswith('_'):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except self.FAILURES:
                self._on_failure()
                raise
        return call


class Reconciler:
    """Reconciles one node's store records with its groups and exports."""

    def __init__(self, node, interval: float = 300.0):
        self.node = node
        self.interval = interval
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._running = 0
        self.passes = 0
        self.last_pass_at = None

    # -- one object -----------------------------------------------------------

    def object(self, ident: str) -> None:
        """Reconcile volume or snapshot ``ident``. The caller holds its
        lock.
        """
        node = self.node
        try:
            rec, _rev = node.store.get(node._vkey(ident))
        except metastore.NotFound:
            rec = None
        found = node._present_one(ident)
        if rec is None:
            if found is not None:
                self._adopt(*found)
            return
        if rec.get('node') != node.name:
            return
        self._settle_object(ident, rec, found)

    def _settled(self, rec: dict | None, found) -> bool:
        """Whether an object listed as ``rec`` with group view ``found``
        needs nothing.
        """
        if rec is None or found is None:
            return False
        pool, info = found
        return rec.get('state') == self.node.AVAILABLE and \
            rec.get('name') == info.name and rec.get('pool') == pool

    def _settle_object(self, ident: str, rec: dict, found) -> None:
        node = self.node
        state = rec.get('state')
        if state == node.DELETING:
            LOG.info('finishing the delete of %s %s', rec['kind'], ident)
            if rec.get('pool') in node.pools:
                try:
                    node._finish_delete(rec['pool'], ident, rec['name'],
                                        rec['kind'])
                except errors.NoSpace as exc:
                    # The pool is out of space: a later pass finishes it.
                    LOG.warning('%s %s stays deleting: %s', rec['kind'],
                                ident, exc)
            return
        if found is None:
            if state == node.CREATING:
                LOG.info('undoing the unfinished create of %s %s',
                         rec.get('kind'), ident)
                node._drop_name(rec.get('name'), ident)
                node._drop_keys(node._vkey(ident))
            else:
                LOG.error('%s %s (%s) is recorded in pool %s but the pool '
                          'does not hold it', rec.get('kind'), ident,
                          rec.get('name'), rec.get('pool'))
            return
        pool, info = found
        changes = {}
        if state == node.CREATING:
            changes['state'] = node.AVAILABLE
        if rec.get('name') != info.name:
            # A rename that was interrupted after the group's part.
            changes['name'] = info.name
        if rec.get('pool') != pool:
            changes['pool'] = pool
        if changes:
            LOG.info('%s %s: recorded %s', rec.get('kind'), ident, changes)
            node._settle(ident, **changes)

    def _adopt(self, pool: str, info) -> None:
        """Record an object the group holds but the store does not (made
        offline with ``storage-engine vg``, or a store restored from an
        older backup).
        """
        node = self.node
        kind = node.SNAPSHOT if info.kind == node.SNAPSHOT else node.VOLUME
        try:
            node.store.create(node._nkey(info.name),
                              {'id': info.id, 'node': node.name})
        except metastore.KeyExists:
            LOG.error('%s %s (%s) in pool %s is not recorded and its name '
                      'is taken in the metadata store: not adopted', kind,
                      info.name, info.id, pool)
            return
        extra = {'volume_id': info.origin_id} if kind == node.SNAPSHOT \
            else {'source': None}
        node.store.create(node._vkey(info.id), dict(
            extra, node=node.name, kind=kind, name=info.name, pool=pool,
            state=node.AVAILABLE, request=None, incarnation=None))
        LOG.info('adopted %s %s (%s) of pool %s', kind, info.name, info.id,
                 pool)

    def _name(self, name: str) -> None:
        """Drop ``names/<name>`` if this node claimed it for an object that
        does not bear it. The caller holds the claimed id's lock.
        """
        node = self.node
        try:
            claim, rev = node.store.get(node._nkey(name))
        except metastore.NotFound:
            return
        if claim.get('node') != node.name:
            return
        try:
            owner, _rev = node.store.get(node._vkey(claim.get('id')))
        except (metastore.NotFound, errors.InvalidArgument):
            owner = None
        if owner is None or owner.get('name') != name:
            LOG.info('dropping stale name claim %s', name)
            try:
                node.store.delete(node._nkey(name), expect_revision=rev)
            except (metastore.NotFound, metastore.RevisionMismatch):
                pass

    # -- exports --------------------------------------------------------------

    def export(self, ident: str) -> None:
        """Reconcile export ``ident``. The caller holds its lock."""
        node = self.node
        try:
            rec, rev = node.store.get(node._ekey(ident))
        except metastore.NotFound:
            rec = None
        if rec is not None and rec.get('node') != node.name:
            rec = None
        if rec is None:
            if ident in node._handles:
                LOG.info('export %s has no record: withdrawn', ident)
                node._withdraw(ident)
            return
        if rec.get('state') == node.DELETING:
            LOG.info('finishing the removal of export %s', ident)
            node._finish_export_delete(ident, rec, rev)
            return
        if ident in node._handles:
            return
        target = node._mine_one(rec['volume_id'])
        if target is None:
            LOG.warning('export %s names %s, which is gone: dropped',
                        ident, rec['volume_id'])
            node._finish_export_delete(ident, rec, rev)
            return
        LOG.info('serving export %s of %s as recorded', ident,
                 rec['volume_id'])
        node._publish(ident, rec, target)

    def _addresses(self, exporter) -> None:
        """Give back this node's claims of ``exporter``'s numbers that no
        export record holds (a create or delete interrupted between its
        steps).
        """
        node = self.node
        addresses = exporter.addresses
        if addresses is None:
            return
        for key, (claim, _rev) in node.store.list(addresses.prefix).items():
            number = key.rsplit('/', 1)[1]
            if claim.get('node') != node.name:
                continue
            owner = claim.get('export')
            if not number.isdigit() or not isinstance(owner, str):
                continue
            with node._lock(owner):
                try:
                    rec, _rev = node.store.get(node._ekey(owner))
                except (metastore.NotFound, errors.InvalidArgument):
                    rec = None
                if rec is not None and rec.get('node') == node.name and \
                        node._number(exporter, rec) == int(number):
                    continue
                LOG.info('releasing %s, claimed for export %s, which has '
                         'no record', key, owner)
                node._release_number(exporter, int(number), owner)

    # -- jobs -----------------------------------------------------------------

    def _jobs(self) -> None:
        node = self.node
        for ident, (rec, _rev) in node._mine('jobs').items():
            if node._job_known(ident):
                continue
            with node._lock(rec['volume_id']):
                target = node._mine_one(rec['volume_id'])
                if target is None:
                    node._drop_keys(node._jkey(ident))
                    continue
                LOG.info('resuming job %s (%s of %s)', ident, rec['kind'],
                         rec['volume_id'])
                node._start_flatten(ident, rec['volume_id'], target,
                                    rec['created_at'])

    # -- a whole pass ---------------------------------------------------------

    def run(self) -> None:
        """Reconcile every record of this node and everything its groups
        and exporters hold.
        """
        self._running += 1
        try:
            self._run()
        finally:
            self._running -= 1

    def _run(self) -> None:
        # One listing of each kind finds what may need work; each of those
        # is then looked at again under its lock (it may have changed).
        node = self.node
        records = node._mine('volumes')
        present = node._present()
        for ident in sorted(set(records) | set(present)):
            if self._settled(records.get(ident, (None, 0))[0],
                             present.get(ident)):
                continue
            with node._lock(ident), self._one('object %s' % ident):
                self.object(ident)
        records = node._mine('volumes')
        for name, (claim, _rev) in node._mine('names').items():
            owner = claim.get('id')
            if records.get(owner, ({}, 0))[0].get('name') == name:
                continue
            with node._lock(*([owner] if isinstance(owner, str) else [])):
                self._name(name)
        exports = node._mine('exports')
        for ident in sorted(set(exports) | set(node._handles)):
            rec = exports.get(ident, (None, 0))[0]
            if rec is not None and ident in node._handles and \
                    rec.get('state') != node.DELETING:
                continue
            with node._lock(ident), self._one('export %s' % ident):
                self.export(ident)
        for exporter in node.exporters.values():
            self._addresses(exporter)
        self._jobs()
        self.passes += 1
        self.last_pass_at = time.time()

    @contextlib.contextmanager
    def _one(self, what: str):
        """One object's reconciliation: a failure of the store ends the
        pass (it is tried again when the store answers); any other (a pool
        stopped by an I/O error, say) is logged and the pass goes on.
        """
        try:
            yield
        except WatchedStore.FAILURES:
            raise
        except errors.EngineError as exc:
            LOG.warning('%s is left as it is for now: %s', what, exc)

    def status(self) -> dict:
        """For the node's view: ``pending`` while an interruption waits to
        be reconciled (the store has not answered since it failed) or a
        pass runs.
        """
        return {'pending': self._dirty.is_set() or bool(self._running),
                'passes': self.passes, 'last_pass_at': self.last_pass_at}

    # -- watching the store ---------------------------------------------------

    def store_failed(self) -> None:
        """A store call failed: an operation may be half done."""
        self._dirty.set()

    def watch(self) -> None:
        """Reconcile in the background: when the store answers again after
        a failure, and every ``interval`` seconds (0: only after
        failures).
        """
        self._thread = threading.Thread(target=self._watch,
                                        name='reconcile', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        backoff = MIN_BACKOFF
        while not self._stop.is_set():
            failed = self._dirty.wait(self.interval or None)
            if self._stop.is_set():
                return
            try:
                if failed:
                    self._probe()
                    LOG.info('the metadata store answers again: finishing '
                             'or undoing what its failure interrupted')
                # Cleared before the pass: a failure during it asks for
                # another.
                self._dirty.clear()
                begin = time.monotonic()
                self.run()
                if failed:
                    LOG.info('reconciled with the metadata store in %.1f s',
                             time.monotonic() - begin)
                backoff = MIN_BACKOFF
            except errors.EngineError as exc:
                LOG.warning('%s (%s); trying again in %.1f s',
                            'metadata store still failing'
                            if isinstance(exc, WatchedStore.FAILURES)
                            else 'reconciliation pass failed', exc, backoff)
                self._dirty.set()
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception:
                LOG.exception('reconciliation failed; trying again in '
                              '%.1f s', MAX_BACKOFF)
                self._dirty.set()
                if self._stop.wait(MAX_BACKOFF):
                    return

    def _probe(self) -> None:
        node = self.node
        try:
            node.store.get('nodes/%s' % node.name)
        except metastore.NotFound:
            pass
