"""The consistency check of a group that is serving I/O (VolumeGroup.check,
what ``storage-engine pool check`` runs on a node).

It must find nothing wrong with a healthy group however busy it is (a
cluster being filled by a write in flight is no leak), find what is wrong
in memory and on disk, and never make I/O or management operations wait
for more than the copy it takes of the metadata.

Writes in flight are held at a chosen point by wrapping one group method;
nothing here waits for time to pass.
"""

import random
import threading

import pytest

from storage_engine import errors
from storage_engine.volstore import check as check_mod
from storage_engine.volstore import checkpoint
from storage_engine.volstore import journal as journal_mod
from storage_engine.volstore import layout
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import overwrite
from tests.unit.volstore.conftest import read
from tests.unit.volstore.conftest import write

# Only ever reached when the code under test is wrong (something waits
# for the check, or the reverse); then the test fails instead of hanging.
STUCK = 60.0


class HeldWrite:
    """A first write to ``ref`` held after its cluster is allocated and
    filled, before its mapping is published: a write in flight.
    """

    def __init__(self, vg, ref, offset, payload):
        self.reached = threading.Event()
        self.go = threading.Event()
        self.errors = []
        real = vg.publish

        def publish(vol, lcl, value):
            if threading.current_thread() is self.thread:
                self.reached.set()
                self.go.wait()
            real(vol, lcl, value)

        vg.publish = publish
        self.thread = threading.Thread(target=self._write,
                                       args=(vg, ref, offset, payload))
        self.thread.start()
        assert self.reached.wait(STUCK), 'the write never got to publish'

    def _write(self, vg, ref, offset, payload):
        try:
            write(vg, ref, offset, payload)
        except BaseException as e:      # reported by finish()
            self.errors.append(e)

    def finish(self):
        self.go.set()
        self.thread.join(STUCK)
        assert not self.thread.is_alive() and not self.errors, self.errors


def test_a_cluster_being_filled_by_a_write_in_flight_is_no_leak(vg):
    vg.create_volume('a', MiB)
    held = HeldWrite(vg, 'a', CS, data(1, CS))
    try:
        report = vg.check()
        assert report.errors == []
        assert report.stats['clusters_filling'] == 1
    finally:
        held.finish()
    report = vg.check()
    assert report.errors == [] and report.stats['clusters_filling'] == 0
    assert read(vg, 'a', CS, CS) == data(1, CS)


def test_a_leak_is_reported_beside_a_write_in_flight(vg):
    vg.create_volume('a', MiB)
    held = HeldWrite(vg, 'a', 0, data(1, CS))
    try:
        leaked = vg.allocator.allocate_one()    # owned by nothing, ever
        report = vg.check()
    finally:
        held.finish()
    # Exactly the injected cluster, not the one the write is filling.
    assert report.errors == [
        '1 clusters allocated but owned by nothing (leaked): %d' % leaked]


def test_a_failed_first_write_leaves_no_cluster_filling(vg, monkeypatch):
    vg.create_volume('a', MiB)
    dev = vg._pvs[0].device

    def broken(*args):
        raise errors.DeviceError('write error on the PV')

    monkeypatch.setattr(dev, 'pwrite', broken)
    with pytest.raises(errors.DeviceError):
        write(vg, 'a', 0, data(1, CS))
    monkeypatch.undo()
    report = vg.check()
    assert report.errors == []
    assert report.stats['clusters_filling'] == 0


def test_a_busy_group_checks_clean_again_and_again(vg):
    """Writers (first writes, overwrites, discards, flushes) and snapshots
    on every side while the check runs over and over: never a problem,
    and every write reads back.
    """
    names = ['v%d' % i for i in range(4)]
    for name in names:
        vg.create_volume(name, 2 * MiB)
    stop = threading.Event()
    failures = []
    done = {name: 0 for name in names}
    expected = {name: {} for name in names}    # cluster -> seed

    def writer(name, seed):
        rng = random.Random(seed)
        h = vg.open_volume(name)
        try:
            while not stop.is_set():
                lcl = rng.randrange(2 * MiB // CS)
                if rng.random() < 0.15:
                    h.discard(lcl * CS, CS)
                    expected[name][lcl] = None
                else:
                    tag = rng.randrange(1 << 30)
                    h.write(lcl * CS, data(tag, CS))
                    expected[name][lcl] = tag
                if rng.random() < 0.2:
                    h.flush()
                done[name] += 1
        except BaseException as e:
            failures.append(e)

    def snapshotter():
        rng = random.Random(7)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                vg.create_snapshot(rng.choice(names), 's%d' % n)
                if n > 2:
                    vg.delete_snapshot('s%d' % (n - 2))
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=writer, args=(n, i))
               for i, n in enumerate(names)]
    threads.append(threading.Thread(target=snapshotter))
    for t in threads:
        t.start()
    reports = []
    try:
        for _ in range(40):
            reports.append(vg.check())
            if failures:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(STUCK)
    assert not failures, failures
    assert all(not t.is_alive() for t in threads)
    problems = [r.errors for r in reports if r.errors]
    assert problems == []
    assert sum(done.values()) > 0
    assert vg.check().errors == []
    for name, clusters in expected.items():
        for lcl, tag in clusters.items():
            want = bytes(CS) if tag is None else data(tag, CS)
            assert read(vg, name, lcl * CS, CS) == want, (name, lcl)


@pytest.mark.parametrize('phase', ['model', 'disk'])
def test_metadata_changes_do_not_wait_for_the_check(vg, monkeypatch,
                                                    phase):
    """While the check works on its copy of the model (``model``) and
    while it reads the metadata on disk (``disk``), first writes,
    commits and management operations go on.
    """
    vg.create_volume('a', MiB)
    target, name = {'model': (check_mod, '_check_structure'),
                    'disk': (checkpoint, 'load')}[phase]
    real = getattr(target, name)
    inside = threading.Event()
    leave = threading.Event()
    checker = None

    def stalled(*args, **kwargs):
        if threading.current_thread() is checker:
            inside.set()
            leave.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, stalled)
    reports = []
    checker = threading.Thread(target=lambda: reports.append(vg.check()))
    checker.start()
    assert inside.wait(STUCK)
    changes = []

    def change():
        vg.create_volume('b', MiB)
        write(vg, 'b', 0, data(2, CS))          # a first write
        vg.create_snapshot('a', 'sa')
        vg.flush()
        changes.append('done')

    worker = threading.Thread(target=change)
    worker.start()
    worker.join(STUCK)
    waited = worker.is_alive()
    leave.set()
    checker.join(STUCK)
    worker.join(STUCK)
    assert not waited, 'metadata changes waited for the check (%s)' % phase
    assert changes == ['done']
    assert reports and reports[0].errors == []
    assert read(vg, 'b', 0, CS) == data(2, CS)


def test_a_checkpoint_written_while_the_check_reads_the_disk(vg,
                                                             monkeypatch):
    """The check reads the superblock's checkpoint with no lock held; a
    new checkpoint written meanwhile (the old one's clusters then free
    for reuse) makes it read again, not report a problem.
    """
    vg.create_volume('a', MiB)
    write(vg, 'a', 0, data(1, 4 * CS))
    vg.flush()
    first_seq = vg._sb_seq
    real = checkpoint.load
    checker = None
    moved = []

    def load(*args, **kwargs):
        if threading.current_thread() is checker and not moved:
            t = threading.Thread(target=vg._checkpoint_now)
            t.start()
            t.join(STUCK)
            moved.append(not t.is_alive())
            # The freed clusters of the old checkpoint are reused.
            write(vg, 'a', 8 * CS, data(2, 4 * CS))
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, 'load', load)
    reports = []
    checker = threading.Thread(target=lambda: reports.append(vg.check()))
    checker.start()
    checker.join(STUCK)
    assert moved == [True], 'the checkpoint waited for the check'
    assert reports[0].errors == []
    assert reports[0].stats['superblock_sequence'] > first_seq


def _journal_record_payload_offset(vg) -> int:
    """Byte offset in PV0 of the payload of the first journal record
    after the checkpoint.
    """
    return layout.JOURNAL_OFFSET + vg.journal.start_pos + \
        journal_mod.HEADER_SIZE


def test_a_committed_journal_record_corrupt_on_disk_is_reported(vg, pv0):
    vg.create_volume('a', MiB)          # committed: one journal record
    assert vg.check().errors == []
    overwrite(pv0, _journal_record_payload_offset(vg) + 2, b'\xff\x00\xff')
    report = vg.check()
    assert not report.ok
    first = vg.journal.start_lsn
    assert report.errors == [
        'journal records %d to %d were committed but are missing or '
        'corrupt on disk (their checksum or sequence fails at %d): a '
        'restart would lose them' % (first, vg.journal.next_lsn - 1, first)]


def test_a_corrupt_superblock_in_use_on_disk_is_reported(vg, pv0):
    vg.create_volume('a', MiB)
    in_use = layout.SUPERBLOCK_SLOTS[vg._sb_seq % 2]
    overwrite(pv0, in_use + 100, data(5, 512))
    report = vg.check()
    assert len(report.errors) == 1
    assert report.errors[0].startswith(
        'superblock %d (slot at offset %d of %s) is unreadable or its '
        'checksum fails' % (vg._sb_seq, in_use, pv0))


def test_a_cluster_both_owned_and_waiting_to_be_freed_is_reported(vg):
    # In memory only: once the next commit frees it, the allocator would
    # hand out a cluster volume a still maps.
    vg.create_volume('a', MiB)
    write(vg, 'a', 0, data(1, CS))
    pcl = vg.state.by_name['a'].map.get(0)
    vg._frees.append(pcl)
    report = vg.check()
    assert report.errors == [
        '1 clusters waiting to be freed are owned as well: %d' % pcl]
