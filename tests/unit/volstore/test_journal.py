"""The metadata journal, checkpoints, crash recovery and damaged metadata.

A crash is a child process that works on the group and then dies with
``os._exit`` without closing it: no checkpoint, no cleanup, only what the
kernel was given. The parent then opens the group as a restarted service
would. The 256 KiB journal fills after about sixty commits, so wrap-around
and checkpoints happen within a few hundred operations.
"""

import random

from storage_engine import errors
from storage_engine.volstore import check_group
from storage_engine.volstore import layout
from storage_engine.volstore import VolumeGroup
from tests.unit.volstore.conftest import crash_after
from tests.unit.volstore.conftest import create_group
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import digest
from tests.unit.volstore.conftest import JOURNAL
from tests.unit.volstore.conftest import KiB
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import observe
from tests.unit.volstore.conftest import overwrite
from tests.unit.volstore.conftest import raises_exactly
from tests.unit.volstore.conftest import read
from tests.unit.volstore.conftest import superblock_slots
from tests.unit.volstore.conftest import write

VOL = 256 * KiB


class Tracker:
    """Counts checkpoints and journal wraps while operations run.

    Only to prove that a test exercised what it claims: a checkpoint
    rewrites the superblock; a wrap moves the journal head backwards
    without one.
    """

    def __init__(self, vg):
        self.vg = vg
        self.checkpoints = 0
        self.wraps = 0
        # Wraps since the last checkpoint, and steps since the last wrap.
        self.wrapped_since_checkpoint = 0
        self.steps_since_wrap = 0
        self._seq = vg._sb_seq
        self._head = vg.journal.head_pos

    def step(self):
        seq, head = self.vg._sb_seq, self.vg.journal.head_pos
        self.steps_since_wrap += 1
        if seq != self._seq:
            self.checkpoints += 1
            self.wrapped_since_checkpoint = 0
        elif head < self._head:
            self.wraps += 1
            self.wrapped_since_checkpoint += 1
            self.steps_since_wrap = 0
        self._seq, self._head = seq, head


def churn(vg, steps, seed=0, tracker=None, start=0):
    """Many small committed operations of every kind.

    Names carry the step number, so calls with different ``start`` values
    never collide.
    """
    rng = random.Random(seed)
    for i in range(start, start + steps):
        vols = [v.name for v in vg.volumes()]
        snaps = [s.name for s in vg.snapshots()]
        op = i % 8
        if op == 0 or not vols:
            vg.create_volume('v%d' % i, VOL, thin=rng.random() < 0.8)
        elif op == 2 and snaps:
            snap = vg.get(rng.choice(snaps))
            origins = [v.name for v in vg.volumes()
                       if v.id == snap.origin_id]
            if origins:
                vg.revert(origins[0], snap.id)
            else:
                vg.clone(snap.id, 'c%d' % i)
        elif op in (1, 2):
            handle = vg.open_volume(rng.choice(vols))
            handle.write(rng.randrange(VOL // 512) * 512, data(i, 512))
            handle.flush()
        elif op == 3:
            vg.create_snapshot(rng.choice(vols), 's%d' % i)
        elif op == 4 and snaps:
            vg.delete_snapshot(rng.choice(snaps))
        elif op == 5:
            vg.rename(rng.choice(vols), 'r%d' % i)
        elif op == 6 and len(vols) > 4:
            vg.delete_volume(rng.choice(vols))
        elif op == 7 and snaps:
            vg.clone(rng.choice(snaps), 'c%d' % i)
        else:
            handle = vg.open_volume(rng.choice(vols))
            handle.discard(0, CS)
            handle.flush()
        if tracker is not None:
            tracker.step()


def test_many_small_operations_wrap_the_journal_and_survive_reopen(
        vg, reopen):
    tracker = Tracker(vg)
    churn(vg, 250, tracker=tracker)
    assert tracker.checkpoints >= 2 and tracker.wraps >= 2
    assert vg.check().ok
    expected = observe(vg, capacity=False)
    again = reopen(vg)
    assert again.replayed == 0
    assert observe(again, capacity=False) == expected
    assert again.check().ok


# -- crashes ------------------------------------------------------------------

def _open_work_crash(pv0, work):
    vg = VolumeGroup.open(pv0)
    work(vg)
    return observe(vg, capacity=False)


def test_a_crash_after_flush_is_recovered_by_replay(pv0):
    create_group(pv0).close()

    def work(vg):
        vg.create_volume('a', MiB)
        vg.create_volume('b', MiB, thin=False)
        write(vg, 'a', CS, data(1, 3 * CS))
        write(vg, 'b', 0, data(2, CS))
        vg.create_snapshot('a', 's')
        write(vg, 'a', CS, data(3, 512))
        vg.flush()

    expected = crash_after(_open_work_crash, pv0, work)
    with VolumeGroup.open(pv0) as vg:
        assert vg.replayed > 0 and vg.recovered
        assert observe(vg, capacity=False) == expected
        assert read(vg, 's', CS, 3 * CS) == data(1, 3 * CS)
        assert read(vg, 'a', CS, 512) == data(3, 512)
        assert vg.check().ok
    report = check_group(pv0)
    assert report.ok, report.errors
    assert report.stats['journal_records_replayed'] == 0
    with VolumeGroup.open(pv0) as vg:
        assert vg.replayed == 0 and not vg.recovered


def test_check_group_of_a_crashed_group_changes_nothing(pv0):
    create_group(pv0).close()

    def work(vg):
        vg.create_volume('a', MiB)
        write(vg, 'a', 0, data(1, CS), fua=True)

    crash_after(_open_work_crash, pv0, work)
    report = check_group(pv0)
    assert report.ok, report.errors
    replayed = report.stats['journal_records_replayed']
    assert replayed > 0
    assert any('not closed cleanly' in n for n in report.notes)
    # A read-only open replays in memory and leaves the journal alone.
    with VolumeGroup.open(pv0, read_only=True) as ro:
        assert ro.replayed == replayed and not ro.recovered
        assert read(ro, 'a', 0, CS) == data(1, CS)
    with VolumeGroup.open(pv0) as vg:
        assert vg.replayed == replayed
        assert read(vg, 'a', 0, CS) == data(1, CS)


def test_a_fua_write_survives_a_crash_without_flush(pv0):
    create_group(pv0).close()

    def work(vg):
        vg.create_volume('a', MiB)
        handle = vg.open_volume('a')
        handle.write(2 * CS, data(1, CS), fua=True)
        handle.write(5 * CS + 512, data(2, 1024), fua=True)

    crash_after(_open_work_crash, pv0, work)
    with VolumeGroup.open(pv0) as vg:
        assert read(vg, 'a', 2 * CS, CS) == data(1, CS)
        assert read(vg, 'a', 5 * CS, CS) == \
            bytes(512) + data(2, 1024) + bytes(CS - 1536)


def test_management_operations_are_durable_when_they_return(pv0):
    create_group(pv0).close()

    def work(vg):
        vg.create_volume('a', MiB)
        vg.create_volume('b', MiB)
        vg.create_snapshot('a', 's')
        vg.clone('s', 'c', size=2 * MiB)
        vg.rename('b', 'bee')
        vg.extend('a', 3 * MiB)
        vg.delete_volume('bee')
        vg.set_policy(over_subscription_ratio=4.0, reserved_percentage=7)

    expected = crash_after(_open_work_crash, pv0, work)
    with VolumeGroup.open(pv0) as vg:
        assert observe(vg, capacity=False) == expected
        assert [v.name for v in vg.volumes()] == ['a', 'c']
        assert vg.get('a').size == 3 * MiB
        cap = vg.capacity()
        assert (cap.max_over_subscription_ratio, cap.reserved_percentage) \
            == (4.0, 7)


def test_a_crash_replays_snapshots_clones_reverts_and_flattens(pv0):
    create_group(pv0).close()

    def work(vg):
        vg.create_volume('v', MiB)
        write(vg, 'v', 0, data(1, 4 * CS))
        vg.create_snapshot('v', 's1')
        write(vg, 'v', CS, data(2, 2 * CS))
        vg.create_snapshot('v', 's2')
        vg.clone('s2', 'c')
        write(vg, 'c', 8 * CS, data(3, CS))
        vg.create_snapshot('c', 't')
        vg.revert('v', 's1')
        write(vg, 'v', 6 * CS, data(4, CS))
        vg.flatten('c')
        vg.delete_snapshot('s1')            # hidden: s2 and v need it
        vg.delete_volume('v')               # s1 merges into s2
        vg.delete_snapshot('s2')            # s2 merges into t
        vg.open_volume('c').discard(0, 2 * CS)
        vg.create_volume('t2', MiB, thin=False)
        vg.delete_volume('t2')
        vg.extend('c', 2 * MiB)
        vg.flush()

    expected = crash_after(_open_work_crash, pv0, work)
    with VolumeGroup.open(pv0) as vg:
        assert vg.replayed > 0
        assert observe(vg, capacity=False) == expected
        assert [s.name for s in vg.snapshots()] == ['t']
        assert read(vg, 't', 0, 9 * CS) == \
            data(1, CS) + data(2, 2 * CS) + data(1, 4 * CS)[3 * CS:] + \
            bytes(4 * CS) + data(3, CS)
        report = vg.check()
        assert report.ok, report.errors
        assert report.stats['hidden_snapshots'] == 0


def test_a_crash_after_the_journal_wrapped_replays_everything(pv0):
    create_group(pv0).close()

    def work(vg):
        # Crash once the replay has to start before a checkpoint's
        # journal position and go round the end of the ring.
        tracker = Tracker(vg)
        step = 0
        while not (tracker.checkpoints and
                   tracker.wrapped_since_checkpoint and
                   tracker.steps_since_wrap >= 3):
            churn(vg, 1, seed=step, tracker=tracker, start=step)
            step += 1
            assert step < 2000

    expected = crash_after(_open_work_crash, pv0, work)
    with VolumeGroup.open(pv0) as vg:
        assert vg.replayed > 0
        assert observe(vg, capacity=False) == expected
        assert vg.check().ok


def test_a_large_commit_wrapping_the_journal_keeps_earlier_commits(pv0):
    # A 4 KiB cluster size makes a commit of 850 mapping changes cheap:
    # about 13.6 KiB of journal, written in one piece.
    small_commit = 4 * KiB

    def setup():
        vg = create_group(pv0, cluster_size=4 * KiB)
        vg.create_volume('big', 8 * MiB)
        vg.create_volume('a', MiB)
        vg.create_volume('b', MiB)
        vg.close()              # the journal restarts three blocks in

    def work():
        vg = VolumeGroup.open(pv0)
        names = []
        # One block per commit up to three blocks before the ring's end.
        while vg.journal.head_pos != JOURNAL - 3 * small_commit:
            names.append('x%d' % len(names))
            vg.create_volume(names[-1], MiB)
            assert len(names) < 200
        write(vg, 'big', 0, data(1, 850 * 4 * KiB))
        vg.flush()
        return names

    setup()
    names = crash_after(work)
    with VolumeGroup.open(pv0) as vg:
        assert sorted(v.name for v in vg.volumes()) == \
            sorted(['a', 'b', 'big'] + names)
        assert read(vg, 'big', 0, 850 * 4 * KiB) == data(1, 850 * 4 * KiB)
        assert vg.check().ok


def test_a_torn_last_commit_is_ignored(pv0):
    create_group(pv0).close()

    def work():
        vg = VolumeGroup.open(pv0)
        vg.create_volume('a', MiB)
        write(vg, 'a', 0, data(1, CS), fua=True)
        head = vg.journal.head_pos
        vg.create_volume('b', MiB)
        return head

    head = crash_after(work)
    # The crash tore the last commit: its first record is garbage.
    overwrite(pv0, layout.JOURNAL_OFFSET + head, data(9, 512))
    with VolumeGroup.open(pv0) as vg:
        assert vg.replayed > 0
        assert [v.name for v in vg.volumes()] == ['a']
        assert read(vg, 'a', 0, CS) == data(1, CS)
        assert vg.check().ok


def test_a_second_crash_after_recovery(pv0):
    create_group(pv0).close()

    def first(vg):
        vg.create_volume('a', MiB)
        write(vg, 'a', 0, data(1, CS))
        vg.flush()

    def second(vg):
        assert vg.recovered
        vg.create_volume('b', MiB)
        write(vg, 'b', 0, data(2, CS))
        write(vg, 'a', CS, data(3, CS))
        vg.flush()

    crash_after(_open_work_crash, pv0, first)
    expected = crash_after(_open_work_crash, pv0, second)
    with VolumeGroup.open(pv0) as vg:
        assert vg.replayed > 0
        assert observe(vg, capacity=False) == expected
        assert read(vg, 'a', 0, 2 * CS) == data(1, CS) + data(3, CS)
        assert vg.check().ok


def test_a_crash_after_add_pv_keeps_the_new_pv(pv0, tmp_path):
    create_group(pv0).close()
    pv1 = str(tmp_path / 'pv1')

    def work(vg):
        vg.add_pv(pv1, 32 * MiB)
        vg.create_volume('big', 70 * MiB, thin=False)
        write(vg, 'big', 69 * MiB, data(1, MiB))
        vg.flush()

    crash_after(_open_work_crash, pv0, work)
    with VolumeGroup.open(pv0) as vg:
        assert [p.path for p in vg.physical_volumes()][1:] == [pv1]
        assert read(vg, 'big', 69 * MiB, MiB) == data(1, MiB)
        assert vg.check().ok


# -- damaged superblocks and labels -------------------------------------------

def _group_with_data(pv0):
    with create_group(pv0) as vg:
        vg.create_volume('v', MiB)
        write(vg, 'v', 0, data(1, 4 * CS))
        vg.create_snapshot('v', 's')


def test_a_corrupt_superblock_in_use_falls_back_to_the_other(pv0):
    _group_with_data(pv0)
    slots = superblock_slots(pv0)
    in_use = max(slots, key=lambda s: s[1] or 0)[0]
    assert all(seq is not None for _slot, seq in slots)
    overwrite(pv0, in_use + 100, data(5, 512))
    with VolumeGroup.open(pv0) as vg:
        assert [v.name for v in vg.volumes()] == ['v']
        assert [s.name for s in vg.snapshots()] == ['s']
        assert read(vg, 'v', 0, 4 * CS) == data(1, 4 * CS)
        assert vg.check().ok
    assert check_group(pv0).ok


def test_both_superblocks_corrupt_is_a_metadata_error(pv0):
    _group_with_data(pv0)
    for slot, _seq in superblock_slots(pv0):
        overwrite(pv0, slot, data(slot, 512))
    with raises_exactly(errors.MetadataError, pv0, 'superblock'):
        VolumeGroup.open(pv0)
    report = check_group(pv0)
    assert not report.ok
    assert any(pv0 in e for e in report.errors)


def test_a_corrupt_checkpoint_is_reported_by_check_group(pv0):
    _group_with_data(pv0)
    with VolumeGroup.open(pv0, read_only=True) as ro:
        [(start, _count)] = ro._ckpt['runs']
        _dev, offset = ro.locate(start)
    overwrite(pv0, offset + 100, data(3, 64))
    report = check_group(pv0)
    assert not report.ok
    assert any('checkpoint' in e for e in report.errors)
    with raises_exactly(errors.ChecksumMismatch, 'checkpoint'):
        VolumeGroup.open(pv0)


def test_journal_records_of_another_group_are_never_replayed(tmp_path):
    # Two groups on the same kind of device: the journal CRC is seeded
    # with the group's UUID, so one's records never pass as the other's.
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    create_group(two).close()
    create_group(one).close()

    def work():
        vg = VolumeGroup.open(one)
        vg.create_volume('from-one', MiB)

    crash_after(work)
    with open(one, 'rb') as f:
        f.seek(layout.JOURNAL_OFFSET)
        ring = f.read(JOURNAL)
    overwrite(two, layout.JOURNAL_OFFSET, ring)
    with VolumeGroup.open(two) as vg:
        assert vg.replayed == 0
        assert vg.volumes() == []
    with VolumeGroup.open(one) as vg:
        assert [v.name for v in vg.volumes()] == ['from-one']


def test_digest_of_a_recovered_group_is_stable_across_reopens(pv0):
    create_group(pv0).close()

    def work(vg):
        vg.create_volume('v', MiB)
        write(vg, 'v', 0, data(1, MiB))
        vg.flush()

    crash_after(_open_work_crash, pv0, work)
    digests = []
    for _ in range(3):
        with VolumeGroup.open(pv0) as vg:
            digests.append(digest(read(vg, 'v')))
    assert digests == [digest(data(1, MiB))] * 3
