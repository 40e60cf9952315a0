"""A full filesystem under a sparse physical volume.

Each test puts a group's PV0 (a 64 MiB sparse file) on a real tmpfs of a
few MiB, fills that tmpfs, and checks what a user of the group sees: the
write, flush or change that needs space is refused with DeviceFull
(ENOSPC), nothing else changes, reads go on, and once there is room again
the same request succeeds without reopening the group. Crash checks run
the work in a child that dies without closing (conftest.crash_after).

Where a test needs a filesystem that cannot preallocate (so that the
journal ring is allocated only as it is written, and a commit can be cut
short after its first block), it turns Device.preallocate off: the PV is
still a real file on a real full filesystem.
"""

import errno

import pytest

from storage_engine import devices
from storage_engine import errors
from storage_engine.volstore import checkpoint
from storage_engine.volstore import condition
from storage_engine.volstore import group as group_mod
from storage_engine.volstore import layout
from storage_engine.volstore import VolumeGroup
from tests.fixtures.tmpfs import PAGE
from tests.fixtures.tmpfs import Tmpfs
from tests.unit.volstore.conftest import crash_after
from tests.unit.volstore.conftest import create_group
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import observe
from tests.unit.volstore.conftest import raises_exactly
from tests.unit.volstore.conftest import read
from tests.unit.volstore.conftest import refused
from tests.unit.volstore.conftest import superblock_slots
from tests.unit.volstore.conftest import write

FS_SIZE = 8 * MiB


@pytest.fixture
def fs(tmp_path):
    mount = Tmpfs(tmp_path / 'fs', FS_SIZE)
    yield mount
    mount.unmount()


@pytest.fixture
def pv(fs):
    return fs / 'pv0'


@pytest.fixture
def no_preallocation(monkeypatch):
    """A filesystem without fallocate (the PV's blocks are allocated only
    as they are written).
    """
    monkeypatch.setattr(devices.Device, 'preallocate',
                        lambda self, offset, length: False, raising=False)


def _state(vg) -> str:
    return vg.condition().state


def _flush_until_refused(vg, ref: str, first: int, limit: int = 200):
    """Trim one cluster and flush, again and again, until a flush is
    refused (the journal is full and the checkpoint needs new space).
    Returns the next cluster not trimmed.
    """
    handle = vg.open_volume(ref)
    for lcl in range(first, first + limit):
        handle.discard(lcl * CS, CS)
        try:
            vg.flush()
        except errors.DeviceFull:
            return lcl + 1
    pytest.fail('no flush was refused after %d commits' % limit)


# -- the data path ------------------------------------------------------------

def test_a_first_write_to_a_cluster_fails_with_enospc_and_changes_nothing(
        fs, pv):
    with create_group(pv) as vg:
        vg.create_volume('v', 4 * MiB)
        write(vg, 'v', 0, data(1, CS))
        vg.flush()
        fs.fill()
        before = observe(vg)
        handle = vg.open_volume('v')
        for offset, length in ((CS, CS), (2 * CS + 4096, 4096)):
            with raises_exactly(errors.DeviceFull, fs.path) as info:
                handle.write(offset, data(2, length))
            assert info.value.errno == errno.ENOSPC
            assert info.value.details['path'] == pv
        # The new clusters went back; nothing else moved.
        assert observe(vg) == before
        assert _state(vg) == condition.NO_SPACE
        # What needs no new space goes on.
        assert handle.read(0, CS) == data(1, CS)
        handle.write(0, data(3, CS))
        fs.give_back()
        handle.write(CS, data(2, CS))
        assert vg.recover_space()
        assert _state(vg) == condition.OK
        vg.flush()
    with VolumeGroup.open(pv) as again:
        assert read(again, 'v', 0, 2 * CS) == data(3, CS) + data(2, CS)
        assert again.check().ok


def test_a_write_into_an_owned_cluster_that_needs_new_blocks_is_refused(
        fs, pv):
    with create_group(pv) as vg:
        vg.create_volume('v', MiB)
        handle = vg.open_volume('v')
        # A first write of part of a cluster: the rest is a hole in the
        # PV file.
        handle.write(0, data(1, 4096))
        vg.flush()
        fs.fill()
        with raises_exactly(errors.DeviceFull, fs.path):
            handle.write(8192, data(2, 4096))
        assert handle.read(0, CS) == data(1, 4096) + bytes(CS - 4096)
        assert vg.capacity().allocated == 2 * CS      # checkpoint + v
        fs.give_back()
        handle.write(8192, data(2, 4096))
        assert handle.read(8192, 4096) == data(2, 4096)


def test_zeroing_that_must_allocate_is_refused_with_enospc(fs, pv):
    with create_group(pv) as vg:
        vg.create_volume('v', MiB)
        handle = vg.open_volume('v')
        handle.write(0, data(1, CS))
        fs.fill()
        # NBD's WRITE_ZEROES with NO_HOLE: the range must end up
        # allocated, which here needs blocks.
        with raises_exactly(errors.DeviceFull):
            handle.write_zeroes(CS, CS, may_unmap=False)
        assert handle.allocation(own=True)[0].length == CS
        # Unmapping needs no space.
        handle.write_zeroes(0, CS, may_unmap=True)
        assert handle.read(0, 2 * CS) == bytes(2 * CS)


# -- commits ------------------------------------------------------------------

def test_a_flush_that_cannot_be_written_claims_nothing_and_a_later_one_does(
        fs, pv):
    create_group(pv).close()

    def work():
        vg = VolumeGroup.open(pv)
        vg.create_volume('v', 8 * MiB)
        write(vg, 'v', 0, data(1, 64 * CS))
        vg.flush()
        fs.fill()
        trimmed = _flush_until_refused(vg, 'v', 0)
        # The refused flush's trim reads as done, and stays pending.
        assert read(vg, 'v', 0, trimmed * CS) == bytes(trimmed * CS)
        assert read(vg, 'v', trimmed * CS, CS) == \
            data(1, 64 * CS)[trimmed * CS:(trimmed + 1) * CS]
        assert _state(vg) == condition.NO_SPACE
        with raises_exactly(errors.DeviceFull):
            vg.flush()
        fs.give_back()
        vg.flush()
        assert vg.recover_space()
        return trimmed, observe(vg, capacity=False)

    trimmed, expected = crash_after(work)
    with VolumeGroup.open(pv) as vg:
        assert observe(vg, capacity=False) == expected
        assert read(vg, 'v', 0, trimmed * CS) == bytes(trimmed * CS)
        assert read(vg, 'v', trimmed * CS, (64 - trimmed) * CS) == \
            data(1, 64 * CS)[trimmed * CS:]
        assert vg.check().ok


def test_writes_whose_forced_commit_is_refused_stand_and_flush_later(
        fs, pv, monkeypatch):
    # Commits forced by many pending mappings come from the data path.
    monkeypatch.setattr(group_mod, 'MAX_PENDING_ENTRIES', 4)
    with create_group(pv) as vg:
        vg.create_volume('v', 8 * MiB)
        write(vg, 'v', 0, data(1, 100 * CS))
        vg.flush()
        fs.fill()
        first = _flush_until_refused(vg, 'v', 0)
        handle = vg.open_volume('v')
        for lcl in range(first, first + 10):
            handle.discard(lcl * CS, CS)            # no error
        # Into clusters the volume owns: they land, but FUA cannot be
        # honoured.
        owned = (first + 20) * CS
        handle.write(owned, data(2, CS), fua=False)
        with raises_exactly(errors.DeviceFull):
            handle.write(owned + CS, data(3, CS), fua=True)
        assert read(vg, 'v', first * CS, 10 * CS) == bytes(10 * CS)
        assert read(vg, 'v', owned, 2 * CS) == data(2, CS) + data(3, CS)
        fs.give_back()
        handle.write(owned + CS, data(3, CS), fua=True)
        expected = observe(vg, capacity=False)
    with VolumeGroup.open(pv) as again:
        assert observe(again, capacity=False) == expected
        assert again.check().ok


def test_a_change_refused_for_want_of_space_is_not_made_then_or_later(
        fs, pv):
    with create_group(pv) as vg:
        vg.create_volume('v', 8 * MiB)
        write(vg, 'v', 0, data(1, 100 * CS))
        vg.flush()
        fs.fill()
        _flush_until_refused(vg, 'v', 0)
        for change in (lambda: vg.create_volume('w', MiB),
                       lambda: vg.create_snapshot('v', 's'),
                       lambda: vg.rename('v', 'v2'),
                       lambda: vg.extend('v', 16 * MiB),
                       lambda: vg.set_policy(reserved_percentage=5)):
            with refused(vg, errors.DeviceFull, 'none was made',
                         fs.path):
                change()
        assert _state(vg) == condition.NO_SPACE
        fs.give_back()
        vg.flush()
        expected = observe(vg)
    with VolumeGroup.open(pv) as again:
        assert observe(again) == expected
        assert [v.name for v in again.volumes()] == ['v']
        assert again.snapshots() == []
        again.create_volume('w', MiB)


def test_a_group_that_crashed_opens_on_a_full_filesystem(fs, pv):
    create_group(pv).close()

    def work():
        vg = VolumeGroup.open(pv)
        vg.create_volume('v', MiB)
        write(vg, 'v', 0, data(1, 4 * CS))
        vg.flush()
        return observe(vg, capacity=False)

    expected = crash_after(work)
    fs.fill()
    with VolumeGroup.open(pv) as vg:
        assert vg.recovered
        assert observe(vg, capacity=False) == expected
        assert _state(vg) == condition.NO_SPACE
        with raises_exactly(errors.DeviceFull):
            vg.flush()
        with raises_exactly(errors.DeviceFull, 'none was made'):
            vg.create_volume('w', MiB)
        fs.give_back()
        vg.flush()
        assert vg.recover_space()
        vg.create_volume('w', MiB)

    def again():
        vg = VolumeGroup.open(pv)
        write(vg, 'w', 0, data(2, CS), fua=True)
        return observe(vg, capacity=False)

    expected = crash_after(again)
    with VolumeGroup.open(pv) as vg:
        assert observe(vg, capacity=False) == expected
        assert vg.check().ok


def test_closing_on_a_full_filesystem_keeps_the_changes_in_the_journal(
        fs, pv):
    vg = create_group(pv)
    vg.create_volume('v', MiB)
    write(vg, 'v', 0, data(1, 4 * CS))
    vg.flush()
    fs.fill()
    vg.open_volume('v').discard(0, CS)
    vg.close()          # no room for its checkpoint
    with VolumeGroup.open(pv) as again:
        assert again.replayed > 0
        assert read(again, 'v', 0, 4 * CS) == bytes(CS) + data(1, 4 * CS)[CS:]
    fs.give_back()
    with VolumeGroup.open(pv) as again:
        assert read(again, 'v', 0, CS) == bytes(CS)
        assert again.check().ok


# -- a commit cut short, superblock slots ------------------------------------

def _cut_short_commit(fs, vg):
    """Leave a commit cut after its first block: a delete that stays
    pending, followed by a mapping record longer than a block.
    """
    fs.fill()
    with raises_exactly(errors.DeviceFull):
        vg.delete_volume('w')          # applied, its commit refused
    assert [v.name for v in vg.volumes()] == ['v']
    handle = vg.open_volume('v')
    handle.discard(0, 400 * 4096)      # 400 clusters hide the snapshot's
    fs.give_back(PAGE)
    with raises_exactly(errors.DeviceFull):
        vg.flush()


def test_a_checkpoint_after_a_cut_short_commit_never_replays_it(
        fs, pv, no_preallocation):
    vg = create_group(pv, cluster_size=4096)
    vg.create_volume('v', 2 * MiB)
    vg.create_volume('w', MiB)
    write(vg, 'v', 0, data(1, 400 * 4096))
    vg.create_snapshot('v', 's')
    _cut_short_commit(fs, vg)
    fs.give_back()
    expected = observe(vg, capacity=False)
    vg.close()                      # a checkpoint
    with VolumeGroup.open(pv) as again:
        assert again.replayed == 0
        assert observe(again, capacity=False) == expected
        assert read(again, 'v', 0, 4096) == bytes(4096)
        assert again.check().ok


def test_a_commit_cut_short_is_written_whole_by_the_next_flush(
        fs, pv, no_preallocation):
    create_group(pv, cluster_size=4096).close()

    def work():
        vg = VolumeGroup.open(pv)
        vg.create_volume('v', 2 * MiB)
        vg.create_volume('w', MiB)
        write(vg, 'v', 0, data(1, 400 * 4096))
        vg.create_snapshot('v', 's')
        vg.flush()
        _cut_short_commit(fs, vg)
        fs.give_back()
        vg.flush()
        return observe(vg, capacity=False)

    expected = crash_after(work)
    with VolumeGroup.open(pv) as vg:
        assert vg.recovered
        assert observe(vg, capacity=False) == expected
        assert [v.name for v in vg.volumes()] == ['v']
        assert vg.check().ok


def test_a_refused_superblock_write_is_retried_in_the_same_slot(fs, pv):
    vg = create_group(pv)
    vg.create_volume('v', MiB)
    write(vg, 'v', 0, data(1, CS))
    vg.flush()
    vg._checkpoint_now()
    slots = superblock_slots(pv)
    (in_use, seq), = [s for s in slots if s[1] == max(x[1] for x in slots)]
    (spare, _old), = [s for s in slots if s[0] != in_use]
    # The spare slot's blocks are gone (a PV copied sparse), and the
    # filesystem has room for the next checkpoint but not for them.
    dev = devices.Device.open(pv)
    try:
        dev.zero(spare, layout.SUPERBLOCK_SIZE)     # a punched hole
    finally:
        dev.close()
    blob = len(checkpoint.dump(vg.state, vg._seed))
    fs.fill()
    fs.give_back(-(-blob // PAGE) * PAGE)
    vg.open_volume('v').discard(0, CS)
    with raises_exactly(errors.DeviceFull):
        vg._checkpoint_now()
    assert dict(superblock_slots(pv)) == {in_use: seq, spare: None}
    fs.give_back()
    vg._checkpoint_now()
    # The new superblock went where the refused one would have; the one
    # in use was never overwritten while the other slot was torn.
    assert dict(superblock_slots(pv)) == {in_use: seq, spare: seq + 1}
    vg.close()
    with VolumeGroup.open(pv) as again:
        assert read(again, 'v', 0, CS) == bytes(CS)


# -- the condition ------------------------------------------------------------

def test_the_condition_changes_once_per_episode_and_says_why(fs, pv):
    seen = []
    with create_group(pv) as vg:
        vg.listen(seen.append)
        vg.create_volume('v', MiB)
        fs.fill()
        handle = vg.open_volume('v')
        for lcl in range(3):
            with raises_exactly(errors.DeviceFull):
                handle.write(lcl * CS, data(lcl, CS))
        assert [c.state for c in seen] == [condition.NO_SPACE]
        assert fs.path in seen[0].reason and seen[0].since is not None
        fs.give_back()
        assert vg.recover_space()
        assert [c.state for c in seen] == [condition.NO_SPACE, condition.OK]
