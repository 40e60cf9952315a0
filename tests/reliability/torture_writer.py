"""The child of the crash torture: a random workload that gets SIGKILLed.

Usage: python -m tests.reliability.torture_writer PV0 SEED TOKEN_BASE
                                                  [--die-in-recovery AT]

It opens the group (recovering it, if the last child died), then runs
random operations forever. Each operation is logged to stdout *before* it
starts (``B {json}``) and *after* it returns (``E {json}``) as one short
line; the parent reads the log after killing us and knows, for each
operation, whether it was acknowledged or in flight. ``R {json}`` says the
group is open.

With ``--die-in-recovery AT`` it SIGKILLs itself inside the recovery the
open makes, at a point chosen by the parent, instead of waiting for the
parent's kill: recovery (replaying the journal, writing a checkpoint of
the result) takes a millisecond or two, and a kill timed from outside
almost never lands in it. ``AT`` is ``replay:R``, once the R-th journal
record is replayed (nothing written yet), or ``write:K``, once the
recovery has made K writes or syncs to the PVs (its data sync, the
checkpoint, its sync, the superblock, its sync; 0 is before the first,
past the last is just before the open returns). It logs ``K {json}``
first; a K line means the kill landed inside recovery.

Sector contents identify their write: every 512-byte sector written holds
``(token, sector)`` repeated, with a token unique across the whole run.
"""

import json
import os
import random
import signal
import struct
import sys

from storage_engine import devices
from storage_engine import errors
from storage_engine.volstore import journal as journal_mod
from storage_engine.volstore import VolumeGroup

SECTOR = 512
VOLUME_SIZE = 1 << 20
MAX_VOLUMES = 6
MAX_SNAPSHOTS = 8
MAX_WRITE_SECTORS = 48
_PAIR = struct.Struct('<QQ')


def sector_bytes(token: int, sector: int) -> bytes:
    return _PAIR.pack(token, sector) * (SECTOR // _PAIR.size)


def payload(token: int, first: int, count: int) -> bytes:
    return b''.join(sector_bytes(token, first + i) for i in range(count))


def log(kind: str, body: dict) -> None:
    line = ('%s %s\n' % (kind, json.dumps(body, separators=(',', ':'))))
    os.write(1, line.encode())


def die_in_recovery(at: str) -> None:
    """Make the next open SIGKILL this process inside its recovery, at
    ``at`` (see the module docstring).

    The hooks wrap what recovery is made of, journal replay and device
    writes, rather than any private step of it, so they keep landing
    where they should if recovery is reorganised; if it no longer replays
    or writes, the open returns, the writer logs ``R`` and not ``K``, and
    the parent's count says so.
    """
    kind, _sep, number = at.partition(':')
    number = int(number)
    if kind not in ('replay', 'write') or number < 0 or \
            (kind == 'replay' and number == 0):
        raise SystemExit('bad --die-in-recovery %r' % at)
    seen = {'records': 0, 'writes': 0, 'opening': False}

    def die(where):
        log('K', {'at': at, 'where': where, 'records': seen['records'],
                  'writes': seen['writes']})
        os.kill(os.getpid(), signal.SIGKILL)

    real_replay = journal_mod.Journal.replay

    def replay(self, *args, **kwargs):
        for record in real_replay(self, *args, **kwargs):
            seen['records'] += 1
            if kind == 'replay' and seen['records'] == number:
                die('replay')
            yield record
        if kind == 'write' and number == 0 and seen['records']:
            die('replayed')

    def counted(real):
        def call(self, *args, **kwargs):
            result = real(self, *args, **kwargs)
            if seen['opening'] and seen['records']:
                seen['writes'] += 1
                if kind == 'write' and seen['writes'] == number:
                    die('write')
            return result
        return call

    real_open = VolumeGroup.open.__func__

    def open_(cls, *args, **kwargs):
        seen['opening'] = True
        vg = real_open(cls, *args, **kwargs)
        seen['opening'] = False
        if seen['records']:
            die('opened')           # fewer writes than asked for
        return vg

    journal_mod.Journal.replay = replay
    for name in ('pwrite', 'zero', 'sync'):
        setattr(devices.Device, name, counted(getattr(devices.Device, name)))
    VolumeGroup.open = classmethod(open_)


def main() -> int:
    pv0, seed, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if sys.argv[4:5] == ['--die-in-recovery']:
        die_in_recovery(sys.argv[5])
    rng = random.Random(seed)
    vg = VolumeGroup.open(pv0)
    log('R', {'replayed': vg.replayed})
    counter = 0
    while True:
        counter += 1
        body = next_op(vg, rng, str(seed), counter, token)
        if body is None:
            continue
        token = body.get('token', token)
        log('B', body)
        try:
            run_op(vg, body)
        except errors.EngineError as e:
            log('E', {'seq': counter, 'error': e.code})
        else:
            log('E', {'seq': counter})


def next_op(vg, rng, tag: str, counter: int, token: int):
    """A random operation on ``vg`` as a JSON-able dict (None: skip)."""
    vols = [v.name for v in vg.volumes()]
    snaps = [s.name for s in vg.snapshots()]
    op = _choose(rng, vols, snaps)
    body = {'op': op, 'seq': counter}
    if op == 'write':
        name = rng.choice(vols)
        size = vg.get(name).size // SECTOR
        count = min(rng.randint(1, MAX_WRITE_SECTORS), size)
        first = rng.randrange(0, size - count + 1)
        body.update(vol=name, first=first, count=count, token=token + 1,
                    fua=rng.random() < 0.1)
    elif op in ('discard', 'zero'):
        name = rng.choice(vols)
        size = vg.get(name).size // SECTOR
        count = min(rng.choice([rng.randint(1, 64), 128, 256]), size)
        first = rng.randrange(0, size - count + 1)
        if rng.random() < 0.5:
            first -= first % 128        # whole clusters: unmapping path
        body.update(vol=name, first=first, count=count,
                    unmap=rng.random() < 0.5)
    elif op == 'create':
        body.update(name='v%s-%d' % (tag, counter), thin=rng.random() < 0.7)
    elif op in ('delete', 'flatten'):
        body.update(vol=rng.choice(vols))
    elif op == 'extend':
        name = rng.choice(vols)
        body.update(vol=name, size=vg.get(name).size +
                    rng.choice([SECTOR, 64 * 1024, 100 * SECTOR]))
    elif op == 'snapshot':
        body.update(vol=rng.choice(vols), name='s%s-%d' % (tag, counter))
    elif op == 'clone':
        body.update(snap=rng.choice(snaps), name='c%s-%d' % (tag, counter),
                    thin=rng.random() < 0.7)
    elif op == 'clone_volume':
        name = rng.choice(vols)
        body.update(vol=name, name='k%s-%d' % (tag, counter),
                    size=vg.get(name).size + rng.choice([0, 0, 64 * 1024]),
                    thin=rng.random() < 0.7)
    elif op == 'delete_snapshot':
        body.update(snap=rng.choice(snaps))
    elif op == 'revert':
        name = rng.choice(vols)
        own = [s.name for s in vg.snapshots(name)]
        if not own:
            return None
        body.update(vol=name, snap=rng.choice(own))
    return body


def _choose(rng, vols, snaps) -> str:
    if not vols:
        return 'create'
    ops = ['write'] * 40 + ['flush'] * 8 + ['discard'] * 4 + ['zero'] * 3
    ops += ['snapshot'] * 3 + ['extend'] * 2 + ['flatten'] * 1
    ops += ['revert'] * 2
    if len(vols) < MAX_VOLUMES:
        ops += ['create'] * 3 + ['clone_volume'] * 2
    if len(vols) > 1:
        ops += ['delete'] * 2
    if snaps:
        ops += ['delete_snapshot'] * (4 if len(snaps) >= MAX_SNAPSHOTS else 2)
        if len(vols) < MAX_VOLUMES:
            ops += ['clone'] * 2
    return rng.choice(ops)


def run_op(vg, b) -> None:
    op = b['op']
    if op == 'write':
        vg.open_volume(b['vol']).write(
            b['first'] * SECTOR, payload(b['token'], b['first'], b['count']),
            fua=b['fua'])
    elif op == 'flush':
        vg.flush()
    elif op == 'discard':
        h = vg.open_volume(b['vol'])
        if b['unmap']:
            h.discard(b['first'] * SECTOR, b['count'] * SECTOR)
        else:
            h.write_zeroes(b['first'] * SECTOR, b['count'] * SECTOR,
                           may_unmap=False)
    elif op == 'zero':
        vg.open_volume(b['vol']).write_zeroes(
            b['first'] * SECTOR, b['count'] * SECTOR, may_unmap=b['unmap'])
    elif op == 'create':
        vg.create_volume(b['name'], VOLUME_SIZE, thin=b['thin'])
    elif op == 'delete':
        vg.delete_volume(b['vol'])
    elif op == 'flatten':
        vg.flatten(b['vol'])
    elif op == 'extend':
        vg.extend(b['vol'], b['size'])
    elif op == 'snapshot':
        vg.create_snapshot(b['vol'], b['name'])
    elif op == 'clone':
        vg.clone(b['snap'], b['name'], thin=b['thin'])
    elif op == 'clone_volume':
        vg.clone_volume(b['vol'], b['name'], size=b['size'], thin=b['thin'])
    elif op == 'delete_snapshot':
        vg.delete_snapshot(b['snap'])
    elif op == 'revert':
        vg.revert(b['vol'], b['snap'])


if __name__ == '__main__':
    sys.exit(main())
