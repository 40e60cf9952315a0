"""Crash torture: SIGKILL a writer at random instants, then check its store.

A child process (torture_writer.py) runs random I/O and management
operations on a volume group and logs each one before and after it runs.
We kill it at a random instant, or a tenth of the time have it kill
itself inside the recovery of the previous kill (at a point we choose:
mid-replay, or after any one of the recovery's writes); then:

* the consistency check must pass, offline (read-only, changing nothing)
  and after a real recovery;
* the set of volumes and snapshots must be what the acknowledged
  operations made (an operation in flight may or may not have happened);
* every sector of every volume must hold either its value at the last
  completed flush (or commit) or a value written since, and every sector
  of every snapshot exactly its point-in-time value. Sectors carry the
  token of the write that produced them, unique in the run, so data of
  another volume, of a deleted volume, torn sectors and garbage are all
  caught.

The default run does 30 kills; ``--long`` does 500 (``--kills N`` any).
How many kills landed inside recovery is counted from the writers' logs
(a ``K`` line), printed and asserted: a kill timed from outside would
almost never land in a recovery of a millisecond or two, and the parent
recovers most crashes itself (a read-write open), leaving the next
writer nothing to recover.
"""

import collections
import copy
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

from storage_engine.volstore import check_group
from storage_engine.volstore import VolumeGroup
from tests.crash import abandon
from tests.reliability import torture_writer as writer

# The share of kills that land inside a recovery.
RECOVERY_KILL_SHARE = 0.1
# Writes and syncs of a recovery (data sync, checkpoint, its sync,
# superblock, its sync): ``write:K`` kills after the K-th (0: before the
# first; the last: all written, the open not returned yet).
RECOVERY_WRITES = 5
# Bounds a writer that neither opens the group nor dies (a bug).
STUCK = 60

SECTOR = writer.SECTOR
ZERO_SECTOR = bytes(SECTOR)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class VolModel:
    """What a volume may hold after a crash, sector by sector."""

    def __init__(self, tokens):
        self.durable = list(tokens)
        self.cur = list(tokens)
        self.pending = {}

    def write(self, first, count, token):
        for s in range(first, first + count):
            self.cur[s] = token
            self.pending.setdefault(s, set()).add(token)

    def allowed(self, s):
        return {self.durable[s]} | self.pending.get(s, set())


class Model:
    def __init__(self):
        self.vols = {}
        self.snaps = {}     # name -> exact tokens

    def flushed(self):
        for v in self.vols.values():
            v.durable = list(v.cur)
            v.pending = {}

    def apply(self, b, completed=True):
        """Apply operation ``b``; ``completed=False``: it was in flight."""
        op = b['op']
        if op == 'write':
            self.vols[b['vol']].write(b['first'], b['count'], b['token'])
            if b['fua'] and completed:
                self.flushed()
            return
        if op in ('discard', 'zero'):
            self.vols[b['vol']].write(b['first'], b['count'], 0)
            return
        if op == 'flush':
            if completed:
                self.flushed()
            return
        # Management operations commit (a flush of everything) when done.
        if op == 'create':
            self.vols[b['name']] = VolModel([0] * (writer.VOLUME_SIZE //
                                                   SECTOR))
        elif op == 'delete':
            del self.vols[b['vol']]
        elif op == 'extend':
            v = self.vols[b['vol']]
            grow = b['size'] // SECTOR - len(v.cur)
            v.cur.extend([0] * grow)
            v.durable.extend([0] * grow)
        elif op == 'snapshot':
            self.snaps[b['name']] = list(self.vols[b['vol']].cur)
        elif op == 'clone':
            self.vols[b['name']] = VolModel(self.snaps[b['snap']])
        elif op == 'clone_volume':
            # Everything acknowledged to the source is in the clone: the
            # clone's commit makes it durable, on both sides.
            tokens = list(self.vols[b['vol']].cur)
            tokens += [0] * (b['size'] // SECTOR - len(tokens))
            self.vols[b['name']] = VolModel(tokens)
        elif op == 'delete_snapshot':
            del self.snaps[b['snap']]
        elif op == 'revert':
            self.vols[b['vol']] = VolModel(self.snaps[b['snap']])
        elif op != 'flatten':
            raise AssertionError('unknown op %s' % op)
        self.flushed()


def _decode(data, what):
    """Tokens of each sector of ``data``; raises on foreign bytes."""
    tokens = []
    for s in range(len(data) // SECTOR):
        sec = data[s * SECTOR:(s + 1) * SECTOR]
        if sec == ZERO_SECTOR:
            tokens.append(0)
            continue
        token, sector = writer._PAIR.unpack_from(sec)
        if sec != writer.sector_bytes(token, sector) or sector != s:
            raise AssertionError('%s sector %d holds bytes no write put '
                                 'there (torn, misplaced or foreign)'
                                 % (what, s))
        tokens.append(token)
    return tokens


def observe(vg):
    vols = {}
    for info in vg.volumes():
        h = vg.open_volume(info.name)
        vols[info.name] = _decode(h.read(0, h.size), info.name)
    snaps = {}
    for info in vg.snapshots():
        h = vg.open_volume(info.name)
        snaps[info.name] = _decode(h.read(0, h.size), info.name)
    return vols, snaps


def mismatch(model, vols, snaps):
    """Why the observation does not fit ``model``, or None if it does."""
    if set(vols) != set(model.vols):
        return 'volumes %s, expected %s' % (sorted(vols), sorted(model.vols))
    if set(snaps) != set(model.snaps):
        return 'snapshots %s, expected %s' % (sorted(snaps),
                                              sorted(model.snaps))
    for name, tokens in vols.items():
        m = model.vols[name]
        if len(tokens) != len(m.cur):
            return '%s has %d sectors, expected %d' % (name, len(tokens),
                                                       len(m.cur))
        for s, t in enumerate(tokens):
            if t not in m.allowed(s):
                return ('%s sector %d holds write %d; allowed %s (a lost '
                        'acknowledged write, or data it was not given)'
                        % (name, s, t, sorted(m.allowed(s))))
    for name, tokens in snaps.items():
        if tokens != model.snaps[name]:
            s = next(i for i, (a, b) in enumerate(zip(tokens,
                                                      model.snaps[name]))
                     if a != b) if len(tokens) == len(model.snaps[name]) \
                else -1
            return 'snapshot %s differs from its point in time (sector %d)' \
                % (name, s)
    return None


def collapse(model, vols):
    for name, tokens in vols.items():
        model.vols[name] = VolModel(tokens)


class _Child:
    """The writer process and a thread that drains its log."""

    def __init__(self, pv0, seed, token_base, die_in_recovery=None):
        env = dict(os.environ, PYTHONPATH=ROOT)
        extra = ['--die-in-recovery', die_in_recovery] \
            if die_in_recovery else []
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'tests.reliability.torture_writer', pv0,
             str(seed), str(token_base)] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
        self.lines = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for raw in self.proc.stdout:
            line = raw.decode()
            if not line.endswith('\n'):
                break          # cannot happen: lines are written whole
            self.lines.append(line)
            if line.startswith('R '):
                self.ready.set()

    def exited_or_opened(self, timeout):
        """Poll until the writer has died or opened the group."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and not self.ready.is_set():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def died_in_recovery(self):
        """The ``K`` record of a writer that killed itself in recovery."""
        for line in self.lines:
            if line.startswith('K '):
                return json.loads(line[2:])
        return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join()
        err = self.proc.stderr.read().decode()
        self.proc.stderr.close()
        self.proc.stdout.close()
        return err


DATA_OPS = ('write', 'discard', 'zero', 'flush')


def _ops(lines):
    """``(operation, completed)`` in order, and the one in flight or None.

    A data operation that failed (no space, say) may have written part of
    its range: it counts as not completed, like one in flight. A failed
    management operation changed nothing.
    """
    done, inflight = [], None
    for line in lines:
        kind, body = line[0], json.loads(line[2:])
        if kind == 'B':
            inflight = body
        elif kind == 'E':
            assert inflight is not None and inflight['seq'] == body['seq']
            if 'error' not in body:
                done.append((inflight, True))
            elif inflight['op'] in DATA_OPS:
                done.append((inflight, False))
            inflight = None
    return done, inflight


def candidates_after(model, inflight):
    """Models the store may match given the operation in flight."""
    if inflight is None:
        return [model]
    if inflight['op'] in DATA_OPS:
        model.apply(inflight, completed=False)
        return [model]
    other = copy.deepcopy(model)
    try:
        other.apply(inflight)
    except KeyError:
        return [model]            # it could only have failed
    return [model, other]


def leave_a_record_to_replay(pv0):
    """Commit one record the model does not see (the group's policy, set
    to what it is) and crash: the next open has to recover.
    """
    vg = VolumeGroup.open(pv0)
    vg.set_policy()
    abandon(vg)


def recovery_point(rng, pending):
    """Where in a recovery of ``pending`` records a writer kills itself:
    a third of the time mid-replay, otherwise after one of its writes.
    """
    if rng.random() < 1 / 3:
        return 'replay:%d' % rng.randint(1, pending)
    return 'write:%d' % rng.randint(0, RECOVERY_WRITES)


def test_crash_torture(tmp_path, request):
    kills = request.config.getoption('--kills') or \
        (500 if request.config.getoption('--long') else 30)
    seed = request.config.getoption('--torture-seed')
    if seed is None:
        seed = random.randrange(1 << 32)
    print('\ncrash torture seed %d (--torture-seed to repeat)' % seed)
    rng = random.Random(seed)
    pv0 = str(tmp_path / 'pv0')
    VolumeGroup.create([(pv0, 256 << 20)], cluster_size=64 << 10,
                       journal_size=256 << 10).close()
    model = Model()
    stats = {'ops': 0, 'inflight_mgmt': 0, 'replayed': 0,
             'killed_in_recovery': 0, 'primed': 0}
    # Which kills land in recovery, chosen up front: the kill before each
    # leaves its recovery to the writer (a read-only check here).
    in_recovery = set(rng.sample(range(kills),
                                 max(1, round(kills * RECOVERY_KILL_SHARE))))
    where = collections.Counter()
    pending = 0         # journal records the next open replays
    for i in range(kills):
        point = None
        if i in in_recovery:
            if not pending:
                # The last writer committed nothing after its open (or
                # died after its recovery was written): give it some.
                leave_a_record_to_replay(pv0)
                stats['primed'] += 1
                pending = 1
            point = recovery_point(rng, pending)
        child = _Child(pv0, seed=rng.randrange(1 << 30),
                       token_base=(i + 1) << 32, die_in_recovery=point)
        if point is not None:
            # It kills itself; if it opens the group instead, the count
            # of kills in recovery comes up short.
            if not child.exited_or_opened(STUCK):
                raise AssertionError(
                    'kill %d (seed %d): the writer neither died in recovery '
                    'at %s nor opened the group: %s'
                    % (i, seed, point, child.kill()))
        elif not child.ready.wait(STUCK):
            raise AssertionError('kill %d (seed %d): the writer never opened '
                                 'the group: %s' % (i, seed, child.kill()))
        else:
            time.sleep(rng.uniform(0.0, 0.25))
        err = child.kill()
        assert 'Traceback' not in err, err
        died = child.died_in_recovery()
        if died is not None:
            stats['killed_in_recovery'] += 1
            where['mid-replay' if died['where'] == 'replay' else
                  'after %d writes' % died['writes']] += 1
        done, inflight = _ops(child.lines)
        stats['ops'] += len(done)
        for b, completed in done:
            model.apply(b, completed)
        candidates = candidates_after(model, inflight)
        stats['inflight_mgmt'] += len(candidates) - 1

        # Offline check first: read-only, changes nothing on disk.
        report = check_group(pv0)
        assert report.ok, 'kill %d (seed %d): %s' % (i, seed, report.errors)
        # Then a real recovery, or leave recovery to the next child.
        read_only = rng.random() < 0.3 or i + 1 in in_recovery
        vg = VolumeGroup.open(pv0, read_only=read_only)
        try:
            stats['replayed'] += vg.replayed
            pending = vg.replayed if read_only else 0
            if not read_only:
                report = vg.check()
                assert report.ok, 'kill %d: %s' % (i, report.errors)
            vols, snaps = observe(vg)
        finally:
            vg.close()
        reasons = [mismatch(c, vols, snaps) for c in candidates]
        assert None in reasons, 'kill %d (seed %d, in flight: %s): %s' % (
            i, seed, inflight, reasons)
        model = candidates[reasons.index(None)]
        collapse(model, vols)
    print('\ncrash torture: %d kills, %d acknowledged operations, %d journal '
          'records replayed, %d management operations in flight at a kill, '
          '%d kills during recovery (of %d intended; %d recoveries primed: '
          '%s)' % (kills, stats['ops'], stats['replayed'],
                   stats['inflight_mgmt'], stats['killed_in_recovery'],
                   len(in_recovery), stats['primed'],
                   ', '.join('%s: %d' % kv for kv in sorted(where.items()))))
    assert stats['ops'] > kills, 'the writer hardly ran: %s' % stats
    assert stats['killed_in_recovery'] >= len(in_recovery), \
        'only %d of %d kills landed in recovery' % (
            stats['killed_in_recovery'], len(in_recovery))
