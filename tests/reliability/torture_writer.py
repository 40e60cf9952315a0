"""The child of the crash torture: a random workload that gets SIGKILLed.

Usage: python -m tests.reliability.torture_writer PV0 SEED TOKEN_BASE

It opens the group (recovering it, if the last child died), then runs
random operations forever. Each operation is logged to stdout *before* it
starts (``B {json}``) and *after* it returns (``E {json}``) as one short
line; the parent reads the log after killing us and knows, for each
operation, whether it was acknowledged or in flight.

Sector contents identify their write: every 512-byte sector written holds
``(token, sector)`` repeated, with a token unique across the whole run.
"""

import json
import os
import random
import struct
import sys

from storage_engine import errors
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


def main() -> int:
    pv0, seed, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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
