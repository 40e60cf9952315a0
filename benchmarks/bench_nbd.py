#!/usr/bin/env python3
"""Our NBD server against nbdkit's file plugin and qemu-nbd, with fio.

    python benchmarks/bench_nbd.py [--quick] [--rounds N] [--json FILE]

fio's nbd engine (libnbd) drives each server over TCP on 127.0.0.1. For
each workload the three servers run back to back, in rounds, and the
median IOPS (or MiB/s) of each is kept; the ratios ours/nbdkit and
ours/qemu-nbd compare figures measured minutes apart on the same machine
(this one is shared and noisy: a figure alone means little).

What is served:

* thick: ours is a thick volume of a volume group whose PV is a sparse
  file; the peers serve a raw file of the same size. All three are written
  in full first (allocated, in the page cache), and synced.
* thin first writes: ours is a new thin volume, the peers a new sparse
  file; fio writes every 4 KiB block exactly once (random order, QD32), so
  every write allocates (a cluster for us, file-system blocks for them).

The goals of issue 3: >= 1.0 against nbdkit at 4k QD32 read and write
(thick), >= 0.9 at 1 MiB sequential, >= 0.8 for thin first writes.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1 << 20

WORKLOADS = [
    # name, fio rw, block size, iodepth, unit
    ('4k randread QD1', 'randread', '4k', 1, 'iops'),
    ('4k randread QD32', 'randread', '4k', 32, 'iops'),
    ('4k randwrite QD1', 'randwrite', '4k', 1, 'iops'),
    ('4k randwrite QD32', 'randwrite', '4k', 32, 'iops'),
    ('1M seq read', 'read', '1M', 8, 'MiB/s'),
    ('1M seq write', 'write', '1M', 8, 'MiB/s'),
]


def _free_port():
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _wait_port(port, proc, timeout=30):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError('server exited: %s' % proc.args)
        try:
            socket.create_connection(('127.0.0.1', port), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError('server did not listen on %d' % port)


class Server:
    """A running server process and the URI of its export."""

    def __init__(self, name, argv, port, export, env=None):
        self.name = name
        self.port = port
        self.uri = 'nbd://127.0.0.1:%d/%s' % (port, export)
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE,
                                     start_new_session=True)
        _wait_port(port, self.proc)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_ours(pv0, volume):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=ROOT)
    return Server('ours', [sys.executable, os.path.join(HERE, 'nbd_serve.py'),
                           pv0, str(port), volume], port, volume, env)


def start_nbdkit(path):
    port = _free_port()
    return Server('nbdkit', ['nbdkit', '-f', '-p', str(port), '-i',
                             '127.0.0.1', 'file', 'file=' + path], port, '')


def start_qemu_nbd(path):
    port = _free_port()
    return Server('qemu-nbd', ['qemu-nbd', '-f', 'raw', '-t', '-p',
                               str(port), '-b', '127.0.0.1',
                               '--cache=writeback', '--aio=threads',
                               '--discard=unmap', path], port, '')


def fio(uri, rw, bs, iodepth, size, runtime, extra=()):
    argv = ['fio', '--name=bench', '--ioengine=nbd', '--uri=' + uri,
            '--rw=' + rw, '--bs=' + bs, '--iodepth=%d' % iodepth,
            '--size=%d' % size, '--output-format=json', '--group_reporting']
    if runtime:
        argv += ['--time_based', '--runtime=%d' % runtime, '--ramp_time=1']
    argv += list(extra)
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         timeout=600)
    job = json.loads(out.stdout[out.stdout.index('{'):])['jobs'][0]
    side = job['read'] if 'read' in rw else job['write']
    return side['iops'], side['bw_bytes'] / MiB


def fill(path_or_uri, size):
    """Write every byte (allocates and warms the page cache)."""
    subprocess.run(['fio', '--name=fill', '--ioengine=nbd',
                    '--uri=' + path_or_uri, '--rw=write', '--bs=1M',
                    '--iodepth=8', '--size=%d' % size,
                    '--output-format=terse'], check=True,
                   capture_output=True, timeout=600)


def make_group(scratch, size, thin):
    from storage_engine.volstore import VolumeGroup
    pv0 = os.path.join(scratch, 'pv0-%s' % ('thin' if thin else 'thick'))
    with VolumeGroup.create([(pv0, size + 256 * MiB)]) as vg:
        vg.create_volume('vol', size, thin=thin)
    return pv0


def run_thick(scratch, size, runtime, rounds, results, only=None):
    img = os.path.join(scratch, 'peer.img')
    with open(img, 'wb') as f:
        f.truncate(size)
    pv0 = make_group(scratch, size, thin=False)
    servers = [start_ours(pv0, 'vol'), start_nbdkit(img),
               start_qemu_nbd(img)]
    try:
        for s in servers:
            fill(s.uri, size)
        os.sync()
        for name, rw, bs, qd, unit in WORKLOADS:
            if only and not any(o in name for o in only):
                continue
            samples = {s.name: [] for s in servers}
            for _ in range(rounds):
                for s in servers:
                    iops, mibs = fio(s.uri, rw, bs, qd, size, runtime)
                    samples[s.name].append(iops if unit == 'iops' else mibs)
            results.append((name + ' (thick)', unit, {
                k: statistics.median(v) for k, v in samples.items()}))
            print_row(*results[-1])
    finally:
        for s in servers:
            s.stop()
        os.unlink(img)
        os.unlink(pv0)


def run_thin_first_writes(scratch, size, rounds, results):
    samples = {'ours': [], 'nbdkit': [], 'qemu-nbd': []}
    for _ in range(rounds):
        for who in ('ours', 'nbdkit', 'qemu-nbd'):
            if who == 'ours':
                path = make_group(scratch, size, thin=True)
                server = start_ours(path, 'vol')
            else:
                path = os.path.join(scratch, 'fresh.img')
                with open(path, 'wb') as f:
                    f.truncate(size)
                server = (start_nbdkit if who == 'nbdkit'
                          else start_qemu_nbd)(path)
            try:
                iops, _ = fio(server.uri, 'randwrite', '4k', 32, size, 0)
                samples[who].append(iops)
            finally:
                server.stop()
                os.unlink(path)
    results.append(('4k first writes QD32 (thin)', 'iops', {
        k: statistics.median(v) for k, v in samples.items()}))
    print_row(*results[-1])


def print_header():
    print('%-32s %6s %10s %10s %10s %12s %14s' % (
        'workload', 'unit', 'ours', 'nbdkit', 'qemu-nbd', 'ours/nbdkit',
        'ours/qemu-nbd'))


def print_row(name, unit, fig):
    print('%-32s %6s %10.0f %10.0f %10.0f %12.2f %14.2f' % (
        name, unit, fig['ours'], fig['nbdkit'], fig['qemu-nbd'],
        fig['ours'] / fig['nbdkit'], fig['ours'] / fig['qemu-nbd']),
        flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--rounds', type=int)
    parser.add_argument('--json')
    parser.add_argument('--workloads', help='comma-separated parts of '
                        'workload names to run, e.g. "seq,QD1,thin"')
    parser.add_argument('--scratch', default=os.path.join(ROOT, '..',
                                                          'bench-scratch'))
    args = parser.parse_args()
    for tool in ('fio', 'nbdkit', 'qemu-nbd'):
        if not shutil.which(tool):
            sys.exit('%s is missing: tools/setup-env.sh bench' % tool)
    size = 256 * MiB if args.quick else 1024 * MiB
    runtime = 3 if args.quick else 5
    rounds = args.rounds or (1 if args.quick else 3)
    scratch = os.path.abspath(os.path.join(args.scratch, 'nbd'))
    os.makedirs(scratch, exist_ok=True)
    results = []
    started = time.time()
    print('NBD servers with fio (nbd engine), %d MiB, %d s per run, %d '
          'rounds, medians' % (size // MiB, runtime, rounds))
    print_header()
    only = args.workloads.split(',') if args.workloads else None
    try:
        run_thick(scratch, size, runtime, rounds, results, only)
        if not only or any(o in 'first writes (thin)' for o in only):
            run_thin_first_writes(scratch, 256 * MiB, rounds, results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print('(%.0f s)' % (time.time() - started))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([{'workload': n, 'unit': u, **fig}
                       for n, u, fig in results], f, indent=2)


if __name__ == '__main__':
    main()
