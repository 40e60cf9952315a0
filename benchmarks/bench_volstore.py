#!/usr/bin/env python3
"""Benchmarks of the volume store, each against a peer measured in the run.

Usage::

    python benchmarks/bench_volstore.py [--quick | --full] [--json FILE]
                                        [--scratch DIR] [--sections 1,2,3,4]

Sections (see benchmarks/README.md for what each figure means):

1. Opening a group of many thin volumes in a fresh process: time and RSS
   increase, after a clean close and after a SIGKILL (journal replay).
2. Create and delete rates of thin and thick volumes, against
   ``qemu-img create -f qcow2`` + ``rm`` (one process each) and a durable
   file create (sparse file, fsync, rename, fsync of the directory).
3. Memory of the cluster maps per TiB of allocated thin data, and of the
   cluster allocator per TiB of group capacity.
4. Snapshot and clone of a 100 GiB thin volume holding real data, at two
   data sizes, against qcow2 internal snapshots, qcow2 backing-file clones
   and a full ``cp`` of the raw equivalent.

The machine is shared and noisy: ours and the peer run back to back, each
figure is the median of several repeats, and the printed ratio is
ours/peer from the same run. Every scratch file lives in a fresh directory
under ``--scratch`` and is removed at exit, as is every child process.
"""

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from storage_engine.volstore import VolumeGroup  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
CLUSTER = 1 * MiB
# The spread of repeated figures on this shared VM (FIELD_NOTES.md): a
# ratio closer to 1 than this is reported as a tie.
NOISE = 0.15
# Open vStorage's published memory need (FIELD_NOTES.md), context only.
OVS_BYTES_PER_VOLUME = 100 * 1000 * 1000

# Child processes still running; killed at exit whatever happens.
_CHILDREN: list = []


@dataclasses.dataclass
class Profile:
    """The sizes of one run (default, --quick or --full)."""

    name: str
    volumes: int              # section 1: thin volumes in the group
    crash_volumes: int        # section 1: volumes created before SIGKILL
    open_repeats: int
    crash_repeats: int
    ops: int                  # section 2: creates and deletes per round
    rounds: int
    mem_clusters: int         # section 3: clusters allocated (1 MiB each)
    snap_sizes: tuple         # section 4: bytes written, large then small
    snap_repeats: int
    copy_repeats: int


PROFILES = {
    'quick': Profile('quick', volumes=2000, crash_volumes=500,
                     open_repeats=3, crash_repeats=2, ops=100, rounds=3,
                     mem_clusters=16 * 1024, snap_sizes=(1 * GiB, 128 * MiB),
                     snap_repeats=7, copy_repeats=1),
    'default': Profile('default', volumes=10000, crash_volumes=1000,
                       open_repeats=5, crash_repeats=3, ops=300, rounds=3,
                       mem_clusters=64 * 1024,
                       snap_sizes=(10 * GiB, 1 * GiB), snap_repeats=15,
                       copy_repeats=2),
    'full': Profile('full', volumes=10000, crash_volumes=1000,
                    open_repeats=5, crash_repeats=3, ops=300, rounds=3,
                    mem_clusters=1024 * 1024,
                    snap_sizes=(10 * GiB, 1 * GiB), snap_repeats=15,
                    copy_repeats=2),
}


# -- results ------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    """One figure: ours, and optionally a peer's measured in the same run.

    ``unit`` is ``s`` (a time: lower is better), ``/s`` (a rate: higher is
    better), ``B`` (memory: lower is better) or ``x`` (a plain factor).
    """

    section: int
    metric: str
    unit: str
    ours: float | None
    peer_name: str = ''
    peer: float | None = None
    samples: list = dataclasses.field(default_factory=list)
    peer_samples: list = dataclasses.field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.peer or self.unit == 'x':
            return None
        return self.ours / self.peer

    @property
    def better(self) -> str:
        r = self.ratio
        if r is None:
            return ''
        if abs(r - 1.0) <= NOISE:
            return 'tie'
        higher = self.unit == '/s'
        return 'ours' if (r > 1.0) == higher else 'peer'


class Report:
    """Collects rows and notes, prints them as tables, dumps them as JSON."""

    def __init__(self):
        self.rows: list[Row] = []
        self.titles: dict[int, str] = {}
        self.notes: dict[int, list[str]] = {}

    def title(self, section: int, text: str) -> None:
        self.titles[section] = text

    def note(self, section: int, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def add(self, section: int, metric: str, unit: str, ours,
            peer_name: str = '', peer=None) -> Row:
        """Add a row; ``ours`` and ``peer`` are values or sample lists.

        A list is reported as its median; the samples go to the JSON.
        """
        row = Row(section, metric, unit, None, peer_name=peer_name)
        row.ours, row.samples = _summarise(ours)
        row.peer, row.peer_samples = _summarise(peer)
        self.rows.append(row)
        return row

    def print_section(self, section: int, out=sys.stdout) -> None:
        head = '%-44s %11s  %-34s %11s %9s %6s' % (
            'metric', 'ours', 'peer', 'peer value', 'ours/peer', 'better')
        print('\n[%d] %s' % (section, self.titles.get(section, '')),
              file=out)
        print(head, file=out)
        print('-' * len(head), file=out)
        for row in self.rows:
            if row.section != section:
                continue
            ratio = '' if row.ratio is None else '%.3g' % row.ratio
            print('%-44s %11s  %-34s %11s %9s %6s' % (
                row.metric, _fmt(row.ours, row.unit), row.peer_name,
                _fmt(row.peer, row.unit) if row.peer_name else '', ratio,
                row.better), file=out)
        for text in self.notes.get(section, []):
            print('  * ' + text, file=out)
        out.flush()

    def as_json(self) -> list[dict]:
        out = []
        for row in self.rows:
            d = dataclasses.asdict(row)
            d['ratio'] = row.ratio
            d['better'] = row.better
            out.append(d)
        return out


def _summarise(value):
    if value is None:
        return None, []
    if isinstance(value, (list, tuple)):
        return statistics.median(value), list(value)
    return value, [value]


def _fmt(value, unit: str) -> str:
    if value is None:
        return '-'
    if unit == 's':
        if value < 1e-3:
            return '%.0f us' % (value * 1e6)
        if value < 1.0:
            return '%.2f ms' % (value * 1e3)
        return '%.2f s' % value
    if unit == '/s':
        return '%.0f /s' % value
    if unit == 'B':
        for div, name in ((GiB, 'GiB'), (MiB, 'MiB'), (KiB, 'KiB')):
            if abs(value) >= div:
                return '%.2f %s' % (value / div, name)
        return '%.0f B' % value
    if unit == 'x':
        return '%.2fx' % value
    return '%g' % value


# -- helpers ------------------------------------------------------------------

def _rss_bytes(field: str = 'VmRSS') -> int:
    """A field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * KiB
    raise RuntimeError('%s not in /proc/self/status' % field)


def _run(argv: list, timeout: float = 600) -> float:
    """Run a program to completion; return its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, timeout=timeout)
    return time.perf_counter() - t0


def _run_cpu(argv: list, timeout: float = 600) -> tuple[float, float]:
    """Run a program; return its wall time and CPU time (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = _run(argv, timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime +
                  after.ru_stime - before.ru_stime)


def _timed(fn, *args) -> tuple[float, float]:
    """Call ``fn(*args)``; return its wall time and our CPU time in it."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def _child(args: list, timeout: float = 600) -> dict:
    """Run a helper of this script in a fresh interpreter; its JSON."""
    argv = [sys.executable, os.path.abspath(__file__), '--child'] + \
        [str(a) for a in args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE)
    _CHILDREN.append(proc)
    try:
        out, _err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _CHILDREN.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError('child %s failed with status %d'
                           % (args, proc.returncode))
    return json.loads(out.decode().strip().splitlines()[-1])


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fresh_dir(scratch: str, name: str) -> str:
    path = os.path.join(scratch, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def _remove(path: str) -> None:
    """Remove a scratch tree and let the file system settle.

    Freeing many GiB (with the ``discard`` mount option, as here) slows the
    fsyncs that follow for a while; ``sync`` waits for that work, so the
    next measurement does not pay for this one's cleanup.
    """
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def _write_pattern(path: str, size: int, length: int) -> None:
    """A sparse ``size``-byte raw file with ``length`` bytes of 0xab."""
    buf = b'\xab' * MiB
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                 0o600)
    try:
        os.ftruncate(fd, size)
        for off in range(0, length, MiB):
            os.pwrite(fd, buf, off)
        os.fsync(fd)
    finally:
        os.close(fd)


def _qemu_version() -> str:
    try:
        out = subprocess.run(['qemu-img', '--version'], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ''
    return out.splitlines()[0] if out else ''


# -- child helpers (run in a fresh interpreter) -------------------------------

def child_open(pv: str, trace: bool = False) -> dict:
    """Open the group on ``pv``: wall time and memory increase, then close.

    With ``trace``, tracemalloc runs during the open (slower, so its time
    is not reported) and the Python heap it retains is measured exactly:
    RSS moves in pages and reuses freed heap, too coarse below a MiB.
    """
    gc.collect()
    before = _rss_bytes()
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    vg = VolumeGroup.open(pv)
    elapsed = time.perf_counter() - t0
    peak = _rss_bytes('VmHWM')
    gc.collect()
    after = _rss_bytes()
    traced = tracemalloc.get_traced_memory()[0] if trace else None
    tracemalloc.stop()
    st = vg.state
    out = {
        'open_s': elapsed,
        'rss_delta': after - before,
        'peak_delta': peak - before,
        'traced': traced,
        'volumes': len(st.volumes),
        'replayed': vg.replayed,
        'map_bytes': sum(v.map.memory_bytes() for v in st.volumes.values()),
        'allocator_bytes': len(vg.allocator._used),
    }
    vg.close()
    return out


def child_crash(pv: str, count: int) -> None:
    """Create ``count`` volumes, say so, then wait to be SIGKILLed."""
    vg = VolumeGroup.open(pv)
    for i in range(count):
        vg.create_volume('crash%06d' % i, GiB, thin=True)
    sys.stdout.write('ready\n')
    sys.stdout.flush()
    sys.stdin.read()           # never returns: the parent kills us
    vg.close()


def _child_main(args: list) -> int:
    if args[0] == 'open':
        print(json.dumps(child_open(args[1], trace='trace' in args[2:])))
        return 0
    if args[0] == 'crash':
        child_crash(args[1], int(args[2]))
        return 0
    raise SystemExit('unknown child helper %r' % args[0])


# -- section 1: open ----------------------------------------------------------

def bench_open(rep: Report, prof: Profile, scratch: str) -> None:
    """Open time and memory of a group of many thin volumes."""
    n = prof.volumes
    rep.title(1, 'Open a group of %d thin volumes (1 GiB each), fresh '
              'process per open' % n)
    d = _fresh_dir(scratch, 'open')
    pv = os.path.join(d, 'pv0')
    vg = VolumeGroup.create([(pv, 64 * GiB)], name='bench',
                            over_subscription_ratio=1000.0)
    t0 = time.perf_counter()
    for i in range(n):
        vg.create_volume('vol%06d' % i, GiB, thin=True)
    create_s = time.perf_counter() - t0
    vg.close()
    rep.add(1, 'setup: create %d thin vols (one process)' % n, '/s',
            n / create_s)
    runs = [_child(['open', pv]) for _ in range(prof.open_repeats)]
    rss = [r['rss_delta'] for r in runs]
    rep.add(1, 'open after clean close', 's', [r['open_s'] for r in runs])
    rep.add(1, 'RSS increase on open', 'B', rss)
    rep.add(1, '  per volume', 'B', [x / n for x in rss])
    rep.add(1, 'peak RSS increase during open', 'B',
            [r['peak_delta'] for r in runs])
    traced = _child(['open', pv, 'trace'])['traced']
    rep.add(1, 'heap retained by open (tracemalloc)', 'B', traced)
    rep.add(1, '  per volume', 'B', traced / n)
    _remove(d)

    # Crash: a child creates volumes and is killed without close, so the
    # next open replays the journal (and writes a checkpoint).
    m = prof.crash_volumes
    crash_t, crash_rss, clean_t, replayed = [], [], [], []
    for rep_i in range(prof.crash_repeats):
        d = _fresh_dir(scratch, 'crash')
        pv = os.path.join(d, 'pv0')
        VolumeGroup.create([(pv, 64 * GiB)], name='bench').close()
        _crash_child(pv, m)
        r = _child(['open', pv])
        crash_t.append(r['open_s'])
        crash_rss.append(r['rss_delta'])
        replayed.append(r['replayed'])
        clean_t.append(_child(['open', pv])['open_s'])
        _remove(d)
    rep.add(1, 'open after SIGKILL, %d vols (replay)' % m, 's', crash_t)
    rep.add(1, 'clean reopen of that group afterwards', 's', clean_t)
    rep.add(1, 'RSS increase on open after SIGKILL', 'B', crash_rss)
    rep.note(1, 'no peer. RSS rows: VmRSS after open minus before, in a '
             'child that has already imported the engine (peak: VmHWM); '
             'the tracemalloc row is one extra traced open.')
    rep.note(1, 'after SIGKILL the open replayed %s journal records and '
             'wrote a checkpoint; the clean reopen reads that checkpoint.'
             % '/'.join(str(x) for x in sorted(set(replayed))))


def _crash_child(pv: str, count: int) -> None:
    argv = [sys.executable, os.path.abspath(__file__), '--child', 'crash',
            pv, str(count)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    _CHILDREN.append(proc)
    try:
        line = proc.stdout.readline()
        if line.strip() != b'ready':
            raise RuntimeError('crash child did not get ready: %r' % line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        _CHILDREN.remove(proc)


# -- section 2: create / delete rates -----------------------------------------

def bench_rates(rep: Report, prof: Profile, scratch: str) -> None:
    """Create and delete rates of thin and thick 1 GiB volumes."""
    n = prof.ops
    rep.title(2, 'Create / delete rate, 1 GiB volumes, %d creates + %d '
              'deletes per round, median of %d rounds'
              % (n, n, prof.rounds))
    d = _fresh_dir(scratch, 'rates')
    pv = os.path.join(d, 'pv0')
    peer_dir = os.path.join(d, 'files')
    os.makedirs(peer_dir)
    vg = VolumeGroup.create([(pv, 64 * GiB)], name='bench')
    dfd = os.open(peer_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    kinds = {'thin': {}, 'thick': {}}
    try:
        for rnd in range(prof.rounds):
            for kind, res in kinds.items():
                thin = kind == 'thin'
                systems = [
                    ('ours', lambda i, thin=thin, rnd=rnd: _ours_pair(
                        vg, 'r%d-%d' % (rnd, i), thin)),
                    ('qemu', lambda i, thin=thin: _qemu_pair(
                        peer_dir, i, thin)),
                    ('file', lambda i, thin=thin: _file_pair(
                        peer_dir, dfd, i, thin)),
                ]
                # Rotate the order each round: no system always runs
                # first (or last) on a machine whose load drifts.
                shift = rnd % len(systems)
                for name, pair in systems[shift:] + systems[:shift]:
                    c_tot = d_tot = 0.0
                    for i in range(n):
                        c, e = pair(i)
                        c_tot += c
                        d_tot += e
                    res.setdefault(name + '-create', []).append(n / c_tot)
                    res.setdefault(name + '-delete', []).append(n / d_tot)
        spawn = [_run(['true']) for _ in range(20)]
        qver = [_run(['qemu-img', '--version']) for _ in range(20)]
    finally:
        os.close(dfd)
        vg.close()
        _remove(d)
    qemu = {'thin': 'qemu-img create qcow2 / rm (procs)',
            'thick': 'qemu-img create falloc / rm (procs)'}
    for kind, res in kinds.items():
        for op in ('create', 'delete'):
            ours = res['ours-' + op]
            rep.add(2, '%s %s' % (kind, op), '/s', ours, qemu[kind],
                    res['qemu-' + op])
            rep.add(2, '%s %s' % (kind, op), '/s', ours,
                    'durable file (%s)' % ('fallocate' if kind == 'thick'
                                           else 'sparse'),
                    res['file-' + op])
    rep.add(2, 'context: spawn of /bin/true', 's', spawn)
    rep.add(2, 'context: spawn of qemu-img --version', 's', qver)
    rep.note(2, 'ours: VolumeGroup.create_volume / delete_volume in this '
             'process, each committed (fdatasync of the PV, journal write, '
             'fdatasync) before it returns; thick = 1 GiB reserved and '
             'zeroed (hole punch on this file PV).')
    rep.note(2, 'qemu peer: one qemu-img process per create (thick: '
             '-o preallocation=falloc) and one rm process per delete: it '
             'pays a process start each time (see the spawn rows); '
             'qemu-img fdatasyncs the image, not the directory.')
    rep.note(2, 'file peer: open(O_EXCL) + ftruncate (thick: '
             'posix_fallocate) + fsync + rename + fsync(dir); delete = '
             'unlink + fsync(dir): a lower bound for a durable metadata '
             'operation on this disk.')
    rep.note(2, 'each volume is created then deleted at once (the peers\' '
             'thick files really allocate 1 GiB of disk each).')


def _ours_pair(vg, name: str, thin: bool) -> tuple[float, float]:
    t0 = time.perf_counter()
    vg.create_volume(name, GiB, thin=thin)
    t1 = time.perf_counter()
    vg.delete_volume(name)
    return t1 - t0, time.perf_counter() - t1


def _qemu_pair(directory: str, i: int, thin: bool) -> tuple[float, float]:
    path = os.path.join(directory, 'q%d.qcow2' % i)
    argv = ['qemu-img', 'create', '-q', '-f', 'qcow2']
    if not thin:
        argv += ['-o', 'preallocation=falloc']
    create = _run(argv + [path, str(GiB)])
    return create, _run(['rm', '-f', path])


def _file_pair(directory: str, dfd: int, i: int,
               thin: bool) -> tuple[float, float]:
    name = 'f%d.img' % i
    tmp = name + '.tmp'
    t0 = time.perf_counter()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o600, dir_fd=dfd)
    try:
        if thin:
            os.ftruncate(fd, GiB)
        else:
            os.posix_fallocate(fd, 0, GiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    os.fsync(dfd)
    t1 = time.perf_counter()
    os.unlink(name, dir_fd=dfd)
    os.fsync(dfd)
    return t1 - t0, time.perf_counter() - t1


# -- section 3: mapping memory ------------------------------------------------

def bench_memory(rep: Report, prof: Profile, scratch: str) -> None:
    """Memory of the cluster maps per allocated TiB, and of the allocator."""
    n = prof.mem_clusters
    alloc = n * CLUSTER
    rep.title(3, 'Mapping memory: one thin volume, %d clusters of 1 MiB '
              'allocated (%s), one 512-byte write each'
              % (n, _fmt(alloc, 'B')))
    d = _fresh_dir(scratch, 'memory')
    pv = os.path.join(d, 'pv0')
    # Room for the data, the journal, checkpoints and the metadata reserve.
    vg = VolumeGroup.create([(pv, alloc + alloc // 16 + GiB)], name='bench')
    try:
        vg.create_volume('mem', alloc, thin=True)
        h = vg.open_volume('mem')
        sector = b'\x5a' * 512
        gc.collect()
        tracemalloc.start()
        t0 = time.perf_counter()
        for i in range(n):
            h.write(i * CLUSTER, sector)
        h.flush()
        write_s = time.perf_counter() - t0
        gc.collect()
        traced, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        maps = sum(v.map.memory_bytes() for v in vg.state.volumes.values())
        capacity = vg.allocator.total
        alloc_bytes = len(vg.allocator._used)
    finally:
        vg.close()
    opened = [_child(['open', pv]) for _ in range(3)]
    traced_open = _child(['open', pv, 'trace'])['traced']
    _remove(d)
    per_tib = TiB / alloc
    rep.add(3, 'setup: first writes (tracemalloc on)', '/s', n / write_s)
    rep.add(3, 'map memory, memory_bytes()', 'B', maps)
    rep.add(3, '  per TiB allocated', 'B', maps * per_tib)
    rep.add(3, 'retained after flush, tracemalloc', 'B', traced)
    rep.add(3, '  per TiB allocated', 'B', traced * per_tib)
    rep.add(3, 'peak traced during the writes', 'B', traced_peak)
    rep.add(3, 'heap retained by open (fresh, tracemalloc)', 'B',
            traced_open)
    rep.add(3, '  per TiB allocated (whole heap)', 'B',
            traced_open * per_tib)
    rep.add(3, 'RSS increase on open (fresh process)', 'B',
            [r['rss_delta'] for r in opened])
    open_s = [r['open_s'] for r in opened]
    rep.add(3, 'open time of this group', 's', open_s)
    rep.add(3, '  per TiB allocated', 's', [x * per_tib for x in open_s])
    rep.add(3, 'allocator: %d clusters of capacity' % capacity, 'B',
            alloc_bytes)
    rep.add(3, '  per TiB of group capacity', 'B',
            alloc_bytes * TiB / (capacity * CLUSTER))
    ovs_tib = maps * per_tib
    rep.note(3, 'context only, no peer measured: Open vStorage needs >= '
             '100 MB of RAM per volume (FIELD_NOTES.md, published); one '
             'fully allocated 1 TiB volume costs us %s of maps, an empty '
             'thin volume about what section 1 shows per volume.'
             % _fmt(ovs_tib, 'B'))
    rep.note(3, 'extrapolation is linear: maps are 8 KiB pages of 1024 '
             'entries, allocated on first use; the peak during the writes '
             'includes up to 64 Ki pending mapping changes awaiting a '
             'commit.')
    rep.note(3, 'RSS moves in 4 KiB pages and an open reuses the heap '
             'freed after reading the checkpoint, so it is coarse below '
             'a few MiB; the tracemalloc rows are exact for the Python '
             'heap.')


# -- section 4: snapshot and clone --------------------------------------------

def bench_snapshots(rep: Report, prof: Profile, scratch: str) -> None:
    """Snapshot and clone time of a 100 GiB volume at two data sizes.

    Both data sizes exist side by side (two volumes in one group, two
    qcow2 files, two raw files) and every repeat measures both, so the
    disk's noise hits them alike and their ratio shows how the time
    depends on the data.
    """
    sizes = prof.snap_sizes
    vsize = 100 * GiB
    rep.title(4, 'Snapshot and clone of a 100 GiB thin volume holding %s '
              'of written data, median of %d'
              % (' / '.join(_fmt(s, 'B') for s in sizes),
                 prof.snap_repeats))
    d = _fresh_dir(scratch, 'snap')
    vg = VolumeGroup.create([(os.path.join(d, 'pv0'),
                              sum(sizes) + 8 * GiB)], name='bench',
                            over_subscription_ratio=100.0)
    files = {}
    samples = {}
    writes = {}
    copies = {size: [] for size in sizes}
    try:
        for size in sizes:
            files[size] = _snapshot_setup(vg, d, size, vsize, writes)
        os.sync()
        for r in range(prof.snap_repeats):
            # Alternate which size goes first.
            for size in sizes if r % 2 == 0 else sizes[::-1]:
                _snapshot_repeat(vg, files[size], size, r, samples)
        for _ in range(prof.copy_repeats):
            for size in sizes:
                copy = os.path.join(d, 'copy.raw')
                t0 = time.perf_counter()
                _run(['cp', '--sparse=always', '--reflink=never',
                      files[size]['raw'], copy], timeout=1800)
                _fsync_path(copy)
                copies[size].append(time.perf_counter() - t0)
                os.unlink(copy)
    finally:
        vg.close()
        _remove(d)
    for size in sizes:
        label = _fmt(size, 'B')
        got = samples[size]
        rep.add(4, 'snapshot, %s written' % label, 's', got['ours-snapshot'],
                'qemu-img snapshot -c (internal)', got['peer-snapshot'])
        rep.add(4, 'clone, %s written' % label, 's', got['ours-clone'],
                'qemu-img create -b (backing file)', got['peer-clone'])
        rep.add(4, 'clone, %s written' % label, 's', got['ours-clone'],
                'full copy: cp raw + fsync', copies[size])
        rep.add(4, 'delete snapshot (merge), %s' % label, 's',
                got['ours-merge'], 'qemu-img snapshot -d', got['peer-merge'])
        for what, peer in (('snapshot', 'snapshot -c'),
                           ('clone', 'create -b'),
                           ('merge', 'snapshot -d')):
            rep.add(4, '  CPU time of %s, %s'
                    % ('delete' if what == 'merge' else what, label), 's',
                    got['ours-%s-cpu' % what],
                    'CPU: qemu-img %s (+start)' % peer,
                    got['peer-%s-cpu' % what])
        rep.add(4, 'context: write %s + flush (1 run)' % label, 's',
                writes[size][0], 'qemu-io write -P 0xab + flush',
                writes[size][1])
    big, small = sizes
    med = {k: statistics.median(v) for k, v in samples[big].items()}
    low = {k: statistics.median(v) for k, v in samples[small].items()}
    for suffix, kind in (('', 'time'), ('-cpu', 'CPU')):
        for what in ('snapshot', 'clone', 'merge'):
            ours = 'ours-%s%s' % (what, suffix)
            peer = 'peer-%s%s' % (what, suffix)
            rep.add(4, '%s %s, %s / %s'
                    % ('delete' if what == 'merge' else what, kind,
                       _fmt(big, 'B'), _fmt(small, 'B')), 'x',
                    med[ours] / low[ours], 'same for the qcow2 peer',
                    med[peer] / low[peer])
    rep.note(4, 'ours: create_snapshot / clone / delete_snapshot (merge '
             'into the volume) in this process, each committed before it '
             'returns; peer: one qemu-img process per operation (pays a '
             'process start, see section 2).')
    rep.note(4, 'full copy: cp --sparse=always --reflink=never of the raw '
             'equivalent (100 GiB sparse file with the same data), then '
             'fsync of the copy; %d run(s).' % prof.copy_repeats)
    rep.note(4, 'all data is fsynced before any operation is timed, and '
             'both sizes are measured in every repeat, alternately; the '
             'write rows are one run each (context). The last rows divide '
             'the times at the two data sizes: 1.00x means independent of '
             'the data. CPU rows: ours is this process\'s CPU time during '
             'the call, the peer\'s the child\'s (process start '
             'included); they do not wait for the disk, so they show the '
             'dependence on data size without the disk\'s noise.')


def _snapshot_setup(vg, d: str, size: int, vsize: int,
                    writes: dict) -> dict:
    """Our volume, a qcow2 and a raw file, each with ``size`` of data."""
    name = 'vol%d' % (size // MiB)
    files = {'vol': name,
             'qcow': os.path.join(d, '%s.qcow2' % name),
             'clone': os.path.join(d, '%s-clone.qcow2' % name),
             'raw': os.path.join(d, '%s.raw' % name)}
    vg.create_volume(name, vsize, thin=True)
    h = vg.open_volume(name)
    buf = b'\xab' * MiB
    t0 = time.perf_counter()
    for off in range(0, size, MiB):
        h.write(off, buf)
    h.flush()
    ours = time.perf_counter() - t0

    qcow = files['qcow']
    _run(['qemu-img', 'create', '-q', '-f', 'qcow2', qcow, str(vsize)])
    chunk = min(size, 256 * MiB)
    argv = ['qemu-io', '-f', 'qcow2']
    for off in range(0, size, chunk):
        argv += ['-c', 'write -P 0xab %d %d' % (off, chunk)]
    argv += ['-c', 'flush', qcow]
    t0 = time.perf_counter()
    _run(argv, timeout=1800)
    _fsync_path(qcow)
    writes[size] = (ours, time.perf_counter() - t0)
    _write_pattern(files['raw'], vsize, size)
    return files


def _snapshot_repeat(vg, files: dict, size: int, r: int,
                     samples: dict) -> None:
    """One snapshot, clone, clone delete and snapshot delete, each side."""
    got = samples.setdefault(size, {})

    def add(key, value):
        got.setdefault(key, []).append(value)

    vol, qcow, qclone = files['vol'], files['qcow'], files['clone']
    snap = '%s-snap%d' % (vol, r)
    clone = '%s-clone%d' % (vol, r)
    steps = [
        ('ours-snapshot', lambda: _timed(vg.create_snapshot, vol, snap)),
        ('peer-snapshot',
         lambda: _run_cpu(['qemu-img', 'snapshot', '-c', snap, qcow])),
        ('ours-clone', lambda: _timed(vg.clone, snap, clone)),
        ('peer-clone', lambda: _run_cpu(
            ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', qcow, '-F',
             'qcow2', qclone])),
        (None, lambda: (vg.delete_volume(clone), os.unlink(qclone))),
        ('ours-merge', lambda: _timed(vg.delete_snapshot, snap)),
        ('peer-merge',
         lambda: _run_cpu(['qemu-img', 'snapshot', '-d', snap, qcow])),
    ]
    for key, step in steps:
        # Every timed operation starts on a settled file system: the one
        # before it (often the other side's) leaves journal commits and
        # discards behind that would otherwise land in its fsyncs.
        os.sync()
        got_ = step()
        if key is not None:
            add(key, got_[0])
            add(key + '-cpu', got_[1])


# -- main ---------------------------------------------------------------------

SECTIONS = {1: bench_open, 2: bench_rates, 3: bench_memory,
            4: bench_snapshots}


def _disk_needed(prof: Profile, sections) -> int:
    """Scratch bytes the largest section may hold at once, with margin."""
    need = [GiB]
    if 3 in sections:
        need.append(prof.mem_clusters * 4 * KiB + GiB)
    if 4 in sections:
        # Per size our PV, a qcow2 and a raw file; one copy at a time.
        need.append(3 * sum(prof.snap_sizes) + prof.snap_sizes[0] + GiB)
    if 2 in sections:
        need.append(2 * GiB)
    return max(need) * 5 // 4


def _check_tools() -> None:
    missing = [t for t in ('qemu-img', 'qemu-io', 'cp', 'rm', 'true')
               if shutil.which(t) is None]
    if missing:
        raise SystemExit('missing programs: %s (install qemu-utils: '
                         'bindep profile "bench")' % ', '.join(missing))


def _on_signal(signum, _frame):
    raise SystemExit('interrupted by signal %d' % signum)


def _cleanup(scratch: str) -> None:
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shutil.rmtree(scratch, ignore_errors=True)


def parse_args(argv: list) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description='Volume store benchmarks against peers measured in the '
        'same run (see benchmarks/README.md).')
    size = p.add_mutually_exclusive_group()
    size.add_argument('--quick', action='store_true',
                      help='fewer volumes and less data (under 2 minutes)')
    size.add_argument('--full', action='store_true',
                      help='the default run, with 1 TiB allocated in the '
                      'mapping-memory section')
    p.add_argument('--json', metavar='FILE',
                   help='also write every figure and sample to FILE')
    p.add_argument('--scratch', metavar='DIR',
                   default=os.environ.get('VOLSTORE_BENCH_SCRATCH',
                                          '/var/tmp'),
                   help='directory for scratch files (a fresh '
                   'subdirectory is made and removed; needs tens of GiB, '
                   'so not a tmpfs; default $VOLSTORE_BENCH_SCRATCH or '
                   '/var/tmp)')
    p.add_argument('--sections', default='1,2,3,4',
                   help='comma-separated sections to run (default all)')
    p.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list | None = None) -> int:
    """Run the benchmarks; print the tables; 0 on success."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return _child_main(args.child)
    prof = PROFILES['quick' if args.quick else
                    'full' if args.full else 'default']
    sections = sorted({int(s) for s in args.sections.split(',') if s})
    if not set(sections) <= set(SECTIONS):
        raise SystemExit('sections are 1 to 4')
    _check_tools()
    os.makedirs(args.scratch, exist_ok=True)
    need = _disk_needed(prof, sections)
    free = shutil.disk_usage(args.scratch).free
    if free < need:
        raise SystemExit('%s has %s free; this run needs about %s'
                         % (args.scratch, _fmt(free, 'B'),
                            _fmt(need, 'B')))
    scratch = tempfile.mkdtemp(prefix='volstore-bench-', dir=args.scratch)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    rep = Report()
    started = time.perf_counter()
    print('volstore benchmark, profile %s, sections %s' %
          (prof.name, ','.join(map(str, sections))))
    print('host %s, %d CPUs, Python %s, %s' % (
        platform.node(), os.cpu_count() or 0, platform.python_version(),
        _qemu_version()))
    print('scratch %s (removed at exit); ratios are ours/peer measured '
          'back to back in this run; "better" says tie within %d %%'
          % (scratch, NOISE * 100))
    sys.stdout.flush()
    timings = {}
    try:
        for s in sections:
            t0 = time.perf_counter()
            SECTIONS[s](rep, prof, scratch)
            timings[s] = time.perf_counter() - t0
            rep.print_section(s)
            print('  (section %d took %.1f s)' % (s, timings[s]))
    finally:
        _cleanup(scratch)
    total = time.perf_counter() - started
    print('\ntotal runtime %.1f s' % total)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'profile': dataclasses.asdict(prof),
                       'host': platform.node(),
                       'cpus': os.cpu_count(),
                       'python': platform.python_version(),
                       'qemu': _qemu_version(),
                       'section_seconds': timings,
                       'runtime_seconds': total,
                       'rows': rep.as_json()}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
