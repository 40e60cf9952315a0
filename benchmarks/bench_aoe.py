#!/usr/bin/env python3
"""Our AoE target against vblade, on the same veth pair, file and initiator.

    python benchmarks/bench_aoe.py [--quick] [--rounds N] [--mtu M] [--json F]

Two network namespaces joined by a veth pair are created for the run and
removed after it (no frame leaves them). The target, ours
(benchmarks/aoe_serve.py) or vblade, runs in namespace A serving one
pre-written 256 MiB file; the initiator, our blocking AoE client
(storage_engine.aoe.client), runs in namespace B. Both targets get exactly
the same requests, so the ratio ours/vblade compares the targets:

* QD1: one frame in flight (a 1 KiB read or write at MTU 1500), i.e. the
  round-trip latency of the target;
* pipelined: 64 KiB reads and writes with the target's buffer count of
  frames in flight (16 for both).

Rounds alternate the two targets and medians are kept (this machine is
shared and noisy). The initiator is Python, so absolute figures are low for
both; the ratio is what the benchmark is for.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from storage_engine.aoe import client as aoe_client  # noqa: E402
from tests.fixtures import netns  # noqa: E402

MiB = 1 << 20
SIZE = 256 * MiB
SPAN = 64 * MiB         # the range the workloads touch


def workloads(seconds):
    def qd1(c, write):
        c.window = 1
        n, pos, buf = 0, 0, os.urandom(c.sectors_per_frame * 512)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(200):
                if write:
                    c.write(pos, buf)
                else:
                    c.read(pos, len(buf))
                pos = (pos + 7 * len(buf)) % SPAN
                n += 1
        return n / seconds, 'IOPS'

    def piped(c, write):
        c.window = c.buffer_count
        n, pos, buf = 0, 0, os.urandom(64 * 1024)
        start = time.monotonic()
        end = start + seconds
        while time.monotonic() < end:
            if write:
                c.write(pos, buf)
            else:
                c.read(pos, len(buf))
            pos = (pos + len(buf)) % SPAN
            n += len(buf)
        return n / MiB / (time.monotonic() - start), 'MiB/s'

    return [('QD1 1-frame read', lambda c: qd1(c, False)),
            ('QD1 1-frame write', lambda c: qd1(c, True)),
            ('pipelined 64 KiB read', lambda c: piped(c, False)),
            ('pipelined 64 KiB write', lambda c: piped(c, True))]


class Target:
    def __init__(self, name, pair, shelf, path):
        self.name, self.pair, self.shelf = name, pair, shelf
        if name == 'ours':
            argv = [sys.executable, os.path.join(HERE, 'aoe_serve.py'),
                    pair.if_a, str(shelf), '1', path, pair.mac_b,
                    '--buffers', '16']
            self.proc = pair.popen(pair.ns_a, *argv, stdout=subprocess.PIPE,
                                   text=True,
                                   env=dict(os.environ, PYTHONPATH=ROOT))
            assert self.proc.stdout.readline().strip() == 'READY'
        else:
            # vblade's default buffer count is 16, as ours
            self.proc = pair.popen(pair.ns_a, 'vblade', str(shelf), '1',
                                   pair.if_a, path,
                                   stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)

    def client(self):
        # Polled: the target is ready when it answers discovery.
        deadline = time.monotonic() + 20
        while True:
            try:
                return aoe_client.AoEClient(self.pair.if_b, self.shelf, 1,
                                            netns=self.pair.ns_b, timeout=1)
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
        return None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--mtu', type=int, default=1500)
    parser.add_argument('--json')
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 3.0
    rounds = 1 if args.quick else args.rounds
    results = {}
    with tempfile.TemporaryDirectory(prefix='aoe-bench-') as tmp, \
            netns.VethPair(mtu=args.mtu) as pair:
        path = os.path.join(tmp, 'disk.img')
        with open(path, 'wb') as f:
            for _ in range(SIZE // MiB):
                f.write(os.urandom(MiB))
            f.flush()
            os.fsync(f.fileno())
        for r in range(rounds):
            for shelf, name in enumerate(('ours', 'vblade')
                                         if r % 2 == 0 else
                                         ('vblade', 'ours')):
                target = Target(name, pair, 10 + shelf, path)
                try:
                    with target.client() as c:
                        for label, run in workloads(seconds):
                            value, unit = run(c)
                            results.setdefault(label, {}).setdefault(
                                name, []).append(value)
                            results[label]['unit'] = unit
                finally:
                    target.stop()
    print('AoE target benchmark: MTU %d, %d round(s) of %.0f s each, '
          'initiator: storage_engine.aoe.client' % (args.mtu, rounds,
                                                    seconds))
    print('%-24s %12s %12s %8s' % ('workload', 'ours', 'vblade',
                                   'ratio'))
    table = []
    for label, row in results.items():
        ours = statistics.median(row['ours'])
        peer = statistics.median(row['vblade'])
        table.append({'workload': label, 'unit': row['unit'], 'ours': ours,
                      'vblade': peer, 'ratio': ours / peer,
                      'samples': {k: row[k] for k in ('ours', 'vblade')}})
        print('%-24s %8.0f %-3s %8.0f %-3s %7.2fx' % (
            label, ours, row['unit'][:5], peer, row['unit'][:5],
            ours / peer))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(table, f, indent=2)


if __name__ == '__main__':
    main()
