"""Snapshots, clones, revert and flatten.

Snapshots are point-in-time and read-only; clones share their snapshot's
data until written; deleting a snapshot merges it away without changing
what any other volume or snapshot reads.
"""

import uuid

import pytest

from storage_engine import errors
from tests.unit.volstore.conftest import contents
from tests.unit.volstore.conftest import create_group
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import hidden
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import raises_exactly
from tests.unit.volstore.conftest import read
from tests.unit.volstore.conftest import refused
from tests.unit.volstore.conftest import write

SIZE = MiB          # 16 clusters


@pytest.fixture
def vol(vg):
    """Volume 'v' holding data(1) in its first four clusters."""
    vg.create_volume('v', SIZE)
    write(vg, 'v', 0, data(1, 4 * CS))
    return vg.open_volume('v')


def image(*parts, size=SIZE):
    """Expected content: ``(offset, bytes)`` parts over zeros."""
    out = bytearray(size)
    for offset, payload in parts:
        out[offset:offset + len(payload)] = payload
    return bytes(out)


# -- create_snapshot ----------------------------------------------------------

def test_snapshot_is_point_in_time(vg, vol):
    snap = vg.create_snapshot('v', 's')
    vol.write(0, data(2, CS))
    vol.write(8 * CS, data(3, CS))
    assert read(vg, 's') == image((0, data(1, 4 * CS)))
    assert vol.read(0, SIZE) == image((0, data(1, 4 * CS)),
                                      (0, data(2, CS)),
                                      (8 * CS, data(3, CS)))
    assert (snap.kind, snap.size, snap.read_only) == ('snapshot', SIZE, True)
    assert snap.origin_id == vg.get('v').id
    assert snap.allocated == 4 * CS
    assert vg.get('v').allocated == 2 * CS
    assert vg.check().ok


def test_snapshot_is_read_only(vg, vol):
    vg.create_snapshot('v', 's')
    with refused(vg, errors.ReadOnly, 's'):
        vg.open_volume('s').write(0, data(2, 512))


def test_several_snapshots_each_keep_their_moment(vg, vol, reopen):
    expected = {}
    for i in range(4):
        vol.write(i * CS, data(10 + i, CS))
        vg.create_snapshot('v', 's%d' % i)
        expected['s%d' % i] = vol.read(0, SIZE)
    vol.write(0, data(99, SIZE))
    for name, content in expected.items():
        assert read(vg, name) == content
    assert [s.name for s in vg.snapshots('v')] == ['s0', 's1', 's2', 's3']
    again = reopen(vg)
    for name, content in expected.items():
        assert read(again, name) == content
    assert read(again, 'v') == data(99, SIZE)
    assert again.check().ok


def test_snapshot_with_a_given_id(vg, vol):
    ident = str(uuid.uuid4())
    assert vg.create_snapshot('v', 's', snapshot_id=ident.upper()).id == ident
    assert vg.get(ident).name == 's'


def test_snapshot_of_a_snapshot_is_wrong_kind(vg, vol):
    vg.create_snapshot('v', 's')
    with refused(vg, errors.WrongKind, 's'):
        vg.create_snapshot('s', 's2')


def test_snapshot_of_an_unknown_volume(vg, vol):
    with refused(vg, errors.VolumeNotFound, 'nope'):
        vg.create_snapshot('nope', 's')


def test_snapshot_refuses_a_used_name_or_id(vg, vol):
    snap_id = vg.create_snapshot('v', 's').id
    with refused(vg, errors.AlreadyExists, 's'):
        vg.create_snapshot('v', 's')
    with refused(vg, errors.AlreadyExists, 'v'):
        vg.create_snapshot('v', 'v')
    with refused(vg, errors.AlreadyExists, snap_id):
        vg.create_snapshot('v', 's2', snapshot_id=snap_id)
    with refused(vg, errors.InvalidArgument, 'bogus'):
        vg.create_snapshot('v', 's2', snapshot_id='bogus')


@pytest.mark.parametrize('name', ['', 'a b', 'x' * 129, str(uuid.uuid4())],
                         ids=repr)
def test_snapshot_refuses_a_bad_name(vg, vol, name):
    with refused(vg, errors.InvalidName, repr(name)):
        vg.create_snapshot('v', name)


# -- clone --------------------------------------------------------------------

def test_clone_shares_data_and_diverges_on_write(vg, vol):
    vg.create_snapshot('v', 's')
    info = vg.clone('s', 'c')
    snap_id = vg.get('s').id
    assert (info.kind, info.size, info.thin, info.allocated) == \
        ('volume', SIZE, True, 0)
    assert info.parent_id == info.origin_id == snap_id
    clone = vg.open_volume('c')
    assert clone.read(0, SIZE) == read(vg, 's')
    clone.write(CS, data(2, CS))
    vol.write(2 * CS, data(3, CS))
    assert clone.read(0, SIZE) == image((0, data(1, 4 * CS)),
                                        (CS, data(2, CS)))
    assert vol.read(0, SIZE) == image((0, data(1, 4 * CS)),
                                      (2 * CS, data(3, CS)))
    assert read(vg, 's') == image((0, data(1, 4 * CS)))
    assert vg.get('c').allocated == CS
    assert vg.check().ok


def test_clone_bigger_than_its_snapshot_reads_zeros_beyond(vg, vol, reopen):
    vg.create_snapshot('v', 's')
    for thin in (True, False):
        name = 'c-%s' % ('thin' if thin else 'thick')
        vg.clone('s', name, size=2 * SIZE, thin=thin)
        assert read(vg, name) == image((0, data(1, 4 * CS)), size=2 * SIZE)
        write(vg, name, 2 * SIZE - CS, data(2, CS))
    again = reopen(vg)
    for name in ('c-thin', 'c-thick'):
        assert read(again, name) == image((0, data(1, 4 * CS)),
                                          (2 * SIZE - CS, data(2, CS)),
                                          size=2 * SIZE)


def test_thick_clone_owns_its_tail_and_reserves_the_rest(vg, vol):
    vg.create_snapshot('v', 's')
    info = vg.clone('s', 'c', size=SIZE + 4 * CS, thin=False)
    assert not info.thin
    assert info.allocated == 4 * CS
    assert vg.check().ok


def test_clone_refuses_a_size_below_the_snapshot(vg, vol):
    vg.create_snapshot('v', 's')
    with refused(vg, errors.InvalidSize, 's'):
        vg.clone('s', 'c', size=SIZE - 512)
    with refused(vg, errors.InvalidSize, str(SIZE + 1000)):
        vg.clone('s', 'c', size=SIZE + 1000)


def test_clone_of_a_volume_or_unknown_snapshot(vg, vol):
    vg.create_snapshot('v', 's')
    with refused(vg, errors.WrongKind, 'v'):
        vg.clone('v', 'c')
    with refused(vg, errors.SnapshotNotFound, 'nope'):
        vg.clone('nope', 'c')


def test_clone_refuses_a_used_or_bad_name(vg, vol):
    vg.create_snapshot('v', 's')
    with refused(vg, errors.AlreadyExists, 'v'):
        vg.clone('s', 'v')
    with refused(vg, errors.AlreadyExists, 's'):
        vg.clone('s', 's')
    with refused(vg, errors.InvalidName, "'a b'"):
        vg.clone('s', 'a b')
    ident = vg.get('v').id
    with refused(vg, errors.AlreadyExists, ident):
        vg.clone('s', 'c', volume_id=ident)


def test_snapshots_of_a_clone(vg, vol, reopen):
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    write(vg, 'c', 5 * CS, data(2, CS))
    t1 = vg.create_snapshot('c', 't1')
    assert t1.origin_id == vg.get('c').id
    write(vg, 'c', 0, data(3, CS))
    vg.create_snapshot('c', 't2')
    write(vg, 'c', 6 * CS, data(4, CS))
    base = image((0, data(1, 4 * CS)))
    at_t1 = image((0, data(1, 4 * CS)), (5 * CS, data(2, CS)))
    at_t2 = image((0, data(1, 4 * CS)), (5 * CS, data(2, CS)),
                  (0, data(3, CS)))
    now = image((0, data(1, 4 * CS)), (5 * CS, data(2, CS)),
                (0, data(3, CS)), (6 * CS, data(4, CS)))
    assert [s.name for s in vg.snapshots('c')] == ['t1', 't2']
    assert (read(vg, 's'), read(vg, 't1'), read(vg, 't2'), read(vg, 'c')) \
        == (base, at_t1, at_t2, now)
    again = reopen(vg)
    assert (read(again, 's'), read(again, 't1'), read(again, 't2'),
            read(again, 'c')) == (base, at_t1, at_t2, now)


# -- delete_snapshot ----------------------------------------------------------

def test_deleting_the_middle_snapshot_keeps_every_other_content(
        vg, vol, reopen):
    vg.create_snapshot('v', 's1')
    vol.write(CS, data(2, 2 * CS))
    vg.create_snapshot('v', 's2')
    vol.write(2 * CS, data(3, 4 * CS))
    vg.create_snapshot('v', 's3')
    vol.write(0, data(4, CS))
    before = contents(vg)
    vg.delete_snapshot('s2')
    del before['s2']
    after = contents(vg)
    assert {k: v[0] for k, v in after.items()} == \
        {k: v[0] for k, v in before.items()}
    assert [s.name for s in vg.snapshots()] == ['s1', 's3']
    with raises_exactly(errors.VolumeNotFound, 's2'):
        vg.get('s2')
    assert vg.check().ok
    again = reopen(vg)
    assert {k: v[0] for k, v in contents(again).items()} == \
        {k: v[0] for k, v in before.items()}


@pytest.mark.parametrize('victim', ['s1', 's3'])
def test_deleting_the_oldest_or_newest_snapshot(vg, vol, victim):
    for i in (1, 2, 3):
        vg.create_snapshot('v', 's%d' % i)
        vol.write(i * CS, data(10 + i, CS))
    before = {k: v[0] for k, v in contents(vg).items() if k != victim}
    vg.delete_snapshot(victim)
    assert {k: v[0] for k, v in contents(vg).items()} == before
    assert vg.check().ok


def test_deleting_a_snapshot_gives_back_its_exclusive_space(vg, vol):
    vg.create_snapshot('v', 's')
    vol.write(0, data(2, 4 * CS))      # the snapshot now owns 4 clusters
    vol.flush()
    free = vg.capacity().free
    vg.delete_snapshot('s')
    assert vg.capacity().free == free + 4 * CS
    assert vol.read(0, 4 * CS) == data(2, 4 * CS)


def test_delete_snapshot_by_id_and_name_reuse(vg, vol):
    ident = vg.create_snapshot('v', 's').id
    vg.delete_snapshot(ident)
    assert vg.snapshots() == []
    assert vg.create_snapshot('v', 's').id != ident


def test_delete_snapshot_refuses_unknown_and_volumes(vg, vol):
    vg.create_snapshot('v', 's')
    with refused(vg, errors.SnapshotNotFound, 'nope'):
        vg.delete_snapshot('nope')
    with refused(vg, errors.WrongKind, 'v'):
        vg.delete_snapshot('v')
    ident = str(uuid.uuid4())
    with refused(vg, errors.SnapshotNotFound, ident):
        vg.delete_snapshot(ident)


def test_delete_snapshot_with_a_clone_keeps_the_clone_whole(vg, vol, reopen):
    vg.create_snapshot('v', 's')
    write(vg, 'v', 0, data(3, CS))             # the origin moves on
    vg.clone('s', 'my-clone')
    write(vg, 'my-clone', CS, data(2, CS))
    before = read(vg, 'my-clone')
    vg.delete_snapshot('s')
    # Gone for the user, name and all...
    assert vg.snapshots() == []
    vg.create_snapshot('v', 's')
    vg.delete_snapshot('s')
    # ...but what the clone reads through it is kept, hidden.
    assert read(vg, 'my-clone') == before
    assert vg.check().ok
    again = reopen(vg)
    assert read(again, 'my-clone') == before
    assert read(again, 'v') == image((0, data(3, CS)),
                                     (CS, data(1, 4 * CS)[CS:]))
    assert again.check().ok


def test_a_deleted_snapshot_goes_with_its_last_clone(vg, vol):
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    vg.clone('s', 'd')
    vg.delete_snapshot('s')
    assert hidden(vg) == 1
    vg.delete_volume('c')
    assert hidden(vg) == 1                     # d and v still read it
    vg.flatten('d')
    # v alone reads it: merged into v, nothing hidden left.
    assert hidden(vg) == 0
    assert read(vg, 'v') == read(vg, 'd') == image((0, data(1, 4 * CS)))
    assert vg.check().ok


def test_snapshots_of_clones_delete_in_any_order(vg, vol):
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    vg.create_snapshot('c', 't')
    vg.clone('t', 'cc')
    write(vg, 'cc', 0, data(5, CS))
    expected = {n: read(vg, n) for n in ('v', 'c', 'cc')}
    vg.delete_snapshot('s')
    vg.delete_snapshot('t')
    assert {n: read(vg, n) for n in expected} == expected
    vg.delete_volume('c')
    vg.delete_volume('v')
    assert read(vg, 'cc') == expected['cc']
    vg.delete_volume('cc')
    assert hidden(vg) == 0 and vg.volumes() == []
    assert vg.check().ok


def test_a_volume_deletes_and_its_snapshot_stays(vg, vol):
    vg.create_snapshot('v', 's')
    write(vg, 'v', 0, data(7, CS))
    vg.delete_volume('v')
    (snap,) = vg.snapshots()
    assert snap.origin_id is None
    assert read(vg, 's') == image((0, data(1, 4 * CS)))
    assert vg.check().ok


def test_delete_snapshot_works_once_its_clone_is_deleted(vg, vol):
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    vg.delete_volume('c')
    vg.delete_snapshot('s')
    assert vg.snapshots() == []
    assert vol.read(0, SIZE) == image((0, data(1, 4 * CS)))
    assert vg.check().ok


def test_delete_snapshot_works_once_its_clone_is_flattened(vg, vol, reopen):
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    write(vg, 'c', 6 * CS, data(2, CS))
    vg.flatten('c')
    vg.delete_snapshot('s')
    expected = image((0, data(1, 4 * CS)), (6 * CS, data(2, CS)))
    assert read(vg, 'c') == expected
    assert vg.check().ok
    again = reopen(vg)
    assert read(again, 'c') == expected
    assert read(again, 'v') == image((0, data(1, 4 * CS)))


def test_an_older_snapshot_is_not_held_by_a_newer_snapshot_clone(vg, vol):
    # 'c' is a clone of s2, not of s1: s1 can be merged into s2.
    vg.create_snapshot('v', 's1')
    vol.write(CS, data(2, CS))
    vg.create_snapshot('v', 's2')
    vg.clone('s2', 'c')
    assert vg.get('c').origin_id == vg.get('s2').id
    before = {k: v[0] for k, v in contents(vg).items() if k != 's1'}
    vg.delete_snapshot('s1')
    assert {k: v[0] for k, v in contents(vg).items()} == before
    assert vg.check().ok


def test_deleting_the_clone_snapshot_after_the_clone_snapshot(vg, vol):
    # s <- t <- c: the clone is deleted, then s merges into t.
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    write(vg, 'c', 8 * CS, data(2, CS))
    vg.create_snapshot('c', 't')
    vg.delete_volume('c')
    vg.delete_snapshot('s')
    assert read(vg, 't') == image((0, data(1, 4 * CS)),
                                  (8 * CS, data(2, CS)))
    assert vol.read(0, SIZE) == image((0, data(1, 4 * CS)))
    assert vg.check().ok


# -- deleting a volume with snapshots -----------------------------------------

def test_delete_volume_keeps_its_snapshots_readable(vg, vol, reopen):
    vg.create_snapshot('v', 's1')
    vol.write(CS, data(2, CS))
    vg.create_snapshot('v', 's2')
    s1 = read(vg, 's1')
    s2 = read(vg, 's2')
    vg.delete_volume('v')
    assert [s.name for s in vg.snapshots()] == ['s1', 's2']
    assert (read(vg, 's1'), read(vg, 's2')) == (s1, s2)
    assert vg.get('s1').origin_id is None
    vg.clone('s2', 'c')
    assert read(vg, 'c') == s2
    assert vg.check().ok
    again = reopen(vg)
    assert (read(again, 's1'), read(again, 's2'), read(again, 'c')) == \
        (s1, s2, s2)
    again.delete_volume('c')
    again.delete_snapshot('s2')
    assert read(again, 's1') == s1
    again.delete_snapshot('s1')
    assert again.snapshots() == [] and again.volumes() == []
    # Only the checkpoint is left.
    assert again.capacity().free == again.capacity().total - CS
    assert again.check().ok


# -- revert -------------------------------------------------------------------

def test_revert_brings_back_the_snapshot_content(vg, vol, reopen):
    vg.create_snapshot('v', 's1')
    vol.write(0, data(2, SIZE))
    vg.create_snapshot('v', 's2')
    vol.write(CS, data(3, CS))
    info = vg.revert('v', 's1')
    assert info.size == SIZE
    assert vol.read(0, SIZE) == image((0, data(1, 4 * CS)))
    assert read(vg, 's2') == data(2, SIZE)
    assert read(vg, 's1') == image((0, data(1, 4 * CS)))
    # Writes after the revert leave the snapshot alone.
    vol.write(0, data(4, CS))
    assert read(vg, 's1') == image((0, data(1, 4 * CS)))
    vg.revert('v', 's2')
    assert vol.read(0, SIZE) == data(2, SIZE)
    assert vg.check().ok
    again = reopen(vg)
    assert read(again, 'v') == data(2, SIZE)
    assert read(again, 's1') == image((0, data(1, 4 * CS)))


def test_revert_gives_back_the_reverted_data_space(vg, vol):
    vg.create_snapshot('v', 's')
    vol.write(0, data(2, 8 * CS))
    vol.flush()
    free = vg.capacity().free
    vg.revert('v', 's')
    assert vg.capacity().free == free + 8 * CS
    assert vg.get('v').allocated == 0


def test_revert_after_extend_restores_the_snapshot_size(vg, vol, reopen):
    vg.create_snapshot('v', 's')
    vg.extend('v', 2 * SIZE)
    vol.write(SIZE + CS, data(2, CS))
    info = vg.revert('v', 's')
    assert info.size == SIZE == vol.size
    assert vg.capacity().provisioned == SIZE
    with raises_exactly(errors.OutOfRange, 'v'):
        vol.read(SIZE, 512)
    # Growing again must not bring back what was written past the end.
    vg.extend('v', 2 * SIZE)
    assert vol.read(0, 2 * SIZE) == image((0, data(1, 4 * CS)),
                                          size=2 * SIZE)
    again = reopen(vg)
    assert read(again, 'v') == image((0, data(1, 4 * CS)), size=2 * SIZE)


def test_revert_forward_to_a_later_bigger_snapshot(vg, vol, reopen):
    vg.create_snapshot('v', 'small')
    vg.extend('v', 2 * SIZE)
    vol.write(SIZE + CS, data(2, CS))
    vg.create_snapshot('v', 'big')
    vg.revert('v', 'small')
    assert vol.size == SIZE
    info = vg.revert('v', 'big')
    assert info.size == 2 * SIZE == vol.size
    expected = image((0, data(1, 4 * CS)), (SIZE + CS, data(2, CS)),
                     size=2 * SIZE)
    assert vol.read(0, 2 * SIZE) == expected
    assert vg.capacity().provisioned == 2 * SIZE
    assert vg.check().ok
    assert read(reopen(vg), 'v') == expected


def test_revert_of_a_thick_volume(vg):
    vg.create_volume('t', SIZE, thin=False)
    write(vg, 't', 0, data(1, SIZE))
    vg.create_snapshot('t', 's')
    write(vg, 't', 0, data(2, 4 * CS))
    vg.revert('t', 's')
    assert read(vg, 't') == data(1, SIZE)
    assert not vg.get('t').thin
    write(vg, 't', 0, data(3, CS))
    assert read(vg, 's') == data(1, SIZE)
    assert vg.check().ok


def test_revert_to_a_snapshot_of_another_volume_is_refused(vg, vol):
    vg.create_volume('other', SIZE)
    vg.create_snapshot('other', 'other-snap')
    vg.create_snapshot('v', 's')
    with refused(vg, errors.InvalidArgument, 'other-snap', 'v'):
        vg.revert('v', 'other-snap')


def test_revert_of_a_clone_to_its_origin_snapshot_is_refused(vg, vol):
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    with refused(vg, errors.InvalidArgument, 's', 'c'):
        vg.revert('c', 's')


def test_revert_of_a_clone_to_its_own_snapshot(vg, vol):
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    write(vg, 'c', 3 * CS, data(2, CS))
    vg.create_snapshot('c', 't')
    write(vg, 'c', 0, data(3, SIZE))
    vg.revert('c', 't')
    assert read(vg, 'c') == image((0, data(1, 4 * CS)), (3 * CS, data(2, CS)))
    assert vg.check().ok


def test_revert_refuses_wrong_kinds_and_unknown_names(vg, vol):
    vg.create_volume('w', SIZE)
    vg.create_snapshot('v', 's')
    with refused(vg, errors.WrongKind, 's'):
        vg.revert('s', 's')
    with refused(vg, errors.WrongKind, 'w'):
        vg.revert('v', 'w')
    with refused(vg, errors.VolumeNotFound, 'nope'):
        vg.revert('nope', 's')
    with refused(vg, errors.SnapshotNotFound, 'nope'):
        vg.revert('v', 'nope')


def test_deleting_an_old_snapshot_after_a_revert_keeps_data(vg, vol, reopen):
    # After the revert s1 has two children (s2 and v): deleting it hides
    # it until one of them goes.
    vg.create_snapshot('v', 's1')
    vol.write(CS, data(2, 2 * CS))
    vg.create_snapshot('v', 's2')
    vg.revert('v', 's1')
    vol.write(5 * CS, data(3, CS))
    s2 = image((0, data(1, 4 * CS)), (CS, data(2, 2 * CS)))
    v = image((0, data(1, 4 * CS)), (5 * CS, data(3, CS)))
    s1_id = vg.get('s1').id
    s1_handle = vg.open_volume('s1')
    vg.delete_snapshot('s1')
    assert [s.name for s in vg.snapshots()] == ['s2']
    with raises_exactly(errors.VolumeNotFound, s1_id):
        vg.get(s1_id)
    with raises_exactly(errors.VolumeNotFound, 's1'):
        s1_handle.read(0, 512)
    with raises_exactly(errors.SnapshotNotFound, 's1'):
        vg.delete_snapshot('s1')
    assert (read(vg, 's2'), read(vg, 'v')) == (s2, v)
    assert vg.get('v').parent_id is None
    assert vg.check().ok
    # The name is free again.
    vg.create_snapshot('v', 's1')
    assert read(vg, 's1') == v
    vg.delete_snapshot('s1')
    again = reopen(vg)
    assert (read(again, 's2'), read(again, 'v')) == (s2, v)
    assert again.check().ok
    # Deleting s2 lets the hidden snapshot merge into v.
    again.delete_snapshot('s2')
    assert again.snapshots() == []
    assert read(again, 'v') == v
    assert again.check().ok
    assert again.check().stats['hidden_snapshots'] == 0
    assert again.get('v').allocated == 5 * CS


def test_deleting_the_volume_merges_a_hidden_snapshot(vg, vol):
    vg.create_snapshot('v', 's1')
    vol.write(0, data(2, CS))
    vg.create_snapshot('v', 's2')
    vg.revert('v', 's1')
    vg.delete_snapshot('s1')
    s2 = read(vg, 's2')
    vg.delete_volume('v')
    assert read(vg, 's2') == s2
    report = vg.check()
    assert report.ok and report.stats['hidden_snapshots'] == 0


# -- flatten ------------------------------------------------------------------

def test_flatten_makes_a_clone_independent(vg, vol, reopen):
    vg.extend('v', 20 * MiB)            # 320 clusters
    vol.write(19 * MiB, data(5, CS))
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    write(vg, 'c', CS, data(2, CS))
    expected = read(vg, 'c')
    calls = []
    info = vg.flatten('c', progress=lambda done, total:
                      calls.append((done, total)))
    assert calls == [(256, 320), (320, 320)]
    assert info.parent_id is None
    assert read(vg, 'c') == expected
    # The copied clusters are the clone's own now.
    assert info.allocated == 5 * CS
    vg.delete_snapshot('s')
    assert read(vg, 'c') == expected
    assert vg.check().ok
    again = reopen(vg)
    assert read(again, 'c') == expected
    assert read(again, 'v', 0, 4 * CS) == data(1, 4 * CS)


def test_flatten_without_progress_callback(vg, vol):
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    vg.flatten('c')
    vol.write(0, data(2, SIZE))
    assert read(vg, 'c') == image((0, data(1, 4 * CS)))


def test_flatten_keeps_a_clone_zeroed_range(vg, vol):
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c')
    vg.open_volume('c').discard(0, CS)
    vg.flatten('c')
    vg.delete_snapshot('s')
    assert read(vg, 'c') == image((CS, data(1, 4 * CS)[CS:]))


def test_flatten_of_a_volume_with_its_own_snapshot(vg, vol):
    vg.create_snapshot('v', 's')
    vol.write(CS, data(2, CS))
    vg.flatten('v')
    assert vg.get('v').parent_id is None
    vg.delete_snapshot('s')
    assert vol.read(0, SIZE) == image((0, data(1, 4 * CS)), (CS, data(2, CS)))
    assert vg.check().ok


def test_flatten_of_an_independent_volume_changes_nothing(vg, vol):
    before = contents(vg), vg.capacity()
    calls = []
    assert vg.flatten('v', progress=lambda *a: calls.append(a)).size == SIZE
    assert (contents(vg), vg.capacity()) == before


def test_flatten_refuses_snapshots_and_unknown_volumes(vg, vol):
    vg.create_snapshot('v', 's')
    with refused(vg, errors.WrongKind, 's'):
        vg.flatten('s')
    with refused(vg, errors.VolumeNotFound, 'nope'):
        vg.flatten('nope')


def test_flatten_without_space_is_refused(tmp_path):
    with create_group(tmp_path / 'pv0', size=16 * MiB) as vg:
        vg.create_volume('v', 10 * MiB)
        write(vg, 'v', 0, data(1, 10 * MiB))
        vg.create_snapshot('v', 's')
        vg.clone('s', 'c')
        with refused(vg, errors.NoSpace, 'c', 'vg0'):
            vg.flatten('c')
        assert vg.get('c').parent_id == vg.get('s').id
