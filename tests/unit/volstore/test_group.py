"""VolumeGroup: creating, opening and closing groups, and managing volumes.

Snapshots, clones, revert and flatten are in test_snapshots.py; the data
path in test_io.py; capacity accounting in test_capacity.py; the journal,
crash recovery and metadata damage in test_journal.py.
"""

import hashlib
import os
import uuid

import pytest

from storage_engine import errors
from storage_engine.volstore import check_group
from storage_engine.volstore import VolumeGroup
from tests.unit.volstore.conftest import create_group
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import JOURNAL
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import observe
from tests.unit.volstore.conftest import PV_CLUSTERS
from tests.unit.volstore.conftest import PV_SIZE
from tests.unit.volstore.conftest import raises_exactly
from tests.unit.volstore.conftest import read
from tests.unit.volstore.conftest import refused
from tests.unit.volstore.conftest import write

BAD_NAMES = [
    '',
    'x' * 129,
    'a b',
    'a/b',
    'a:b',
    '-leading-dash',
    '.leading-dot',
    'trailing-newline\n',
    'tab\there',
    '\u00fcmlaut',
    '12345678-1234-5678-1234-567812345678',
    '12345678123456781234567812345678',
    'ABCDEF01-2345-6789-ABCD-EF0123456789',
    None,
    42,
]

BAD_SIZES = [0, -512, -CS, 1000, 513, CS + 1, float(MiB), True, '1M',
             2 ** 61]


def _file_digest(path) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


# -- VolumeGroup.create -------------------------------------------------------

def test_create_makes_an_empty_group_using_the_whole_pv(pv0):
    with create_group(pv0, name='vgA') as vg:
        cap = vg.capacity()
        group_uuid = vg.uuid
        assert vg.name == 'vgA'
        assert cap.total == PV_CLUSTERS * CS
        assert cap.cluster_size == CS
        assert (cap.volumes, cap.snapshots, cap.provisioned) == (0, 0, 0)
        assert vg.volumes() == [] and vg.snapshots() == []
        [pv] = vg.physical_volumes()
        assert (pv.index, pv.path, pv.size) == (0, pv0, cap.total)
        assert vg.check().ok
    assert os.path.getsize(pv0) == PV_SIZE
    with VolumeGroup.open(pv0) as again:
        assert (again.name, again.uuid) == ('vgA', group_uuid)
        assert again.replayed == 0
        assert again.capacity().total == PV_CLUSTERS * CS


def test_create_uses_an_existing_file_at_its_own_size(tmp_path):
    path = tmp_path / 'existing'
    with open(path, 'wb') as f:
        f.truncate(32 * MiB)
    with VolumeGroup.create([str(path)], cluster_size=CS,
                            journal_size=JOURNAL) as vg:
        assert vg.capacity().total == 31 * MiB


def test_create_spans_several_pvs(tmp_path):
    pvs = [(str(tmp_path / 'pv0'), PV_SIZE), (str(tmp_path / 'pv1'), 32 * MiB)]
    with VolumeGroup.create(pvs, cluster_size=CS,
                            journal_size=JOURNAL) as vg:
        # PV1 has no journal: its data starts after the label, at 1 MiB.
        assert vg.capacity().total == PV_CLUSTERS * CS + 31 * MiB
        assert [(p.index, p.path) for p in vg.physical_volumes()] == \
            [(0, pvs[0][0]), (1, pvs[1][0])]


@pytest.mark.parametrize('kwargs, exc_class, words', [
    ({'cluster_size': 3 * 4096}, errors.InvalidSize, ['power of two']),
    ({'cluster_size': 2048}, errors.InvalidSize, ['power of two']),
    ({'cluster_size': 512 * MiB}, errors.InvalidSize, ['power of two']),
    ({'journal_size': 256 * 1024 + 512}, errors.InvalidSize,
     ['journal size']),
    ({'journal_size': 32 * 1024}, errors.InvalidSize, ['journal size']),
    ({'name': 'bad name'}, errors.InvalidName, ["'bad name'"]),
    ({'name': str(uuid.uuid4())}, errors.InvalidName, ['UUID']),
    ({'over_subscription_ratio': 0.5}, errors.InvalidArgument,
     ['over-subscription ratio', '0.5']),
    ({'over_subscription_ratio': -1}, errors.InvalidArgument,
     ['over-subscription ratio']),
    ({'reserved_percentage': 100}, errors.InvalidArgument,
     ['reserved percentage', '100']),
    ({'reserved_percentage': -1}, errors.InvalidArgument,
     ['reserved percentage']),
], ids=['cluster-not-power-of-2', 'cluster-too-small', 'cluster-too-big',
        'journal-unaligned', 'journal-too-small', 'name-with-space',
        'name-uuid', 'ratio-below-1', 'ratio-negative', 'reserved-100',
        'reserved-negative'])
def test_create_refuses_bad_parameters_and_creates_nothing(
        pv0, kwargs, exc_class, words):
    with raises_exactly(exc_class, *words):
        create_group(pv0, **kwargs)
    assert not os.path.exists(pv0)


def test_create_refuses_an_empty_pv_list():
    with raises_exactly(errors.InvalidArgument, 'physical volume'):
        VolumeGroup.create([], cluster_size=CS, journal_size=JOURNAL)


def test_create_refuses_a_nan_over_subscription_ratio(pv0):
    # NaN compares false with everything: accepted, it would switch the
    # over-subscription limit off.
    with raises_exactly(errors.InvalidArgument, 'over-subscription ratio'):
        create_group(pv0, over_subscription_ratio=float('nan'))
    assert not os.path.exists(pv0)


def test_create_refuses_a_pv_too_small_to_hold_one_cluster(tmp_path):
    path = str(tmp_path / 'small')
    with raises_exactly(errors.InvalidSize, path, 'too small'):
        create_group(path, size=MiB)


def test_refused_create_of_a_too_small_pv_can_be_retried_bigger(tmp_path):
    path = str(tmp_path / 'small')
    with raises_exactly(errors.InvalidSize, path):
        create_group(path, size=MiB)
    # The operator fixes the size and tries again.
    with create_group(path, size=PV_SIZE) as vg:
        assert vg.capacity().total == PV_CLUSTERS * CS


def test_create_refuses_a_pv_of_another_group_and_keeps_it(pv0):
    with create_group(pv0, name='old') as old:
        old.create_volume('keep', MiB)
        write(old, 'keep', 0, data(1, CS))
    before = _file_digest(pv0)
    with raises_exactly(errors.AlreadyExists, pv0, 'force'):
        create_group(pv0, name='new')
    assert _file_digest(pv0) == before
    with VolumeGroup.open(pv0) as old:
        assert old.name == 'old'
        assert [v.name for v in old.volumes()] == ['keep']
        assert read(old, 'keep', 0, CS) == data(1, CS)


def test_create_with_force_overwrites_a_pv_of_another_group(pv0):
    with create_group(pv0, name='old') as old:
        old.create_volume('gone', MiB)
        old_uuid = old.uuid
    with create_group(pv0, name='new', force=True) as new:
        assert new.volumes() == []
    with VolumeGroup.open(pv0) as vg:
        assert (vg.name, vg.volumes()) == ('new', [])
        assert vg.uuid != old_uuid


def test_refused_create_leaves_its_other_pvs_unlabelled(tmp_path):
    taken = str(tmp_path / 'taken')
    create_group(taken).close()
    fresh = str(tmp_path / 'fresh')
    with raises_exactly(errors.AlreadyExists, taken):
        VolumeGroup.create([(fresh, PV_SIZE), taken], cluster_size=CS,
                           journal_size=JOURNAL)
    # Nothing was created, so the fresh PV is usable without force.
    with create_group(fresh) as vg:
        assert vg.volumes() == []


def test_create_refuses_the_pv_of_an_open_group(vg, pv0):
    with raises_exactly(errors.GroupLocked, pv0):
        create_group(pv0, force=True)
    assert vg.check().ok


# -- VolumeGroup.open and close -----------------------------------------------

def test_open_twice_is_refused_while_the_group_is_open(vg, pv0):
    with raises_exactly(errors.GroupLocked, pv0):
        VolumeGroup.open(pv0)
    with raises_exactly(errors.GroupLocked, pv0):
        VolumeGroup.open(pv0, read_only=True)
    vg.close()
    with VolumeGroup.open(pv0) as again:
        assert again.name == 'vg0'


def test_read_only_opens_share_the_group_but_exclude_a_writer(pv0):
    create_group(pv0).close()
    with VolumeGroup.open(pv0, read_only=True) as one, \
            VolumeGroup.open(pv0, read_only=True) as two:
        assert one.uuid == two.uuid
        with raises_exactly(errors.GroupLocked, pv0):
            VolumeGroup.open(pv0)


def test_open_refuses_a_file_that_is_not_a_pv(tmp_path):
    path = str(tmp_path / 'random')
    with open(path, 'wb') as f:
        f.write(data(7, 2 * MiB))
    before = _file_digest(path)
    with raises_exactly(errors.NotAPhysicalVolume, path):
        VolumeGroup.open(path)
    assert _file_digest(path) == before


def test_open_refuses_an_empty_file(tmp_path):
    path = str(tmp_path / 'empty')
    open(path, 'wb').close()
    with raises_exactly(errors.NotAPhysicalVolume, path):
        VolumeGroup.open(path)
    assert os.path.getsize(path) == 0


def test_open_of_a_missing_file_is_not_found(tmp_path):
    path = str(tmp_path / 'missing')
    with raises_exactly(errors.NotFound, path):
        VolumeGroup.open(path)
    assert not os.path.exists(path)


def test_open_refuses_a_directory(tmp_path):
    with raises_exactly(errors.InvalidArgument, str(tmp_path)):
        VolumeGroup.open(str(tmp_path))


def test_open_refuses_a_pv_that_is_not_the_first(tmp_path):
    pv1 = str(tmp_path / 'pv1')
    VolumeGroup.create([(str(tmp_path / 'pv0'), PV_SIZE), (pv1, 32 * MiB)],
                       cluster_size=CS, journal_size=JOURNAL).close()
    with raises_exactly(errors.InvalidArgument, pv1, 'physical volume 1'):
        VolumeGroup.open(pv1)


def test_open_refuses_a_corrupt_label(pv0):
    create_group(pv0).close()
    with open(pv0, 'r+b') as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0xFF]))
    with raises_exactly(errors.ChecksumMismatch, pv0):
        VolumeGroup.open(pv0)


def test_read_only_open_reads_but_refuses_every_change(pv0):
    with create_group(pv0) as vg:
        vg.create_volume('v', MiB)
        write(vg, 'v', 0, data(1, CS))
        vg.create_snapshot('v', 's')
    before = _file_digest(pv0)
    with VolumeGroup.open(pv0, read_only=True) as ro:
        assert ro.read_only
        assert read(ro, 'v', 0, CS) == data(1, CS)
        handle = ro.open_volume('v')
        assert handle.read_only
        seen = observe(ro)
        for change in (lambda: ro.create_volume('w', MiB),
                       lambda: ro.delete_volume('v'),
                       lambda: ro.create_snapshot('v', 's2'),
                       lambda: ro.delete_snapshot('s'),
                       lambda: ro.clone('s', 'c'),
                       lambda: ro.revert('v', 's'),
                       lambda: ro.extend('v', 2 * MiB),
                       lambda: ro.rename('v', 'w'),
                       lambda: ro.flatten('v'),
                       lambda: ro.set_policy(reserved_percentage=5),
                       lambda: ro.add_pv(str(pv0) + '.new', 32 * MiB),
                       lambda: handle.write(0, bytes(512)),
                       lambda: handle.discard(0, CS),
                       lambda: handle.write_zeroes(0, CS)):
            with raises_exactly(errors.ReadOnly, 'read-only'):
                change()
        assert observe(ro) == seen
    assert _file_digest(pv0) == before
    assert not os.path.exists(str(pv0) + '.new')


def test_close_is_idempotent_and_the_group_reopens_cleanly(pv0, reopen):
    vg = create_group(pv0)
    vg.create_volume('v', MiB)
    vg.close()
    vg.close()
    again = reopen()
    assert again.replayed == 0 and not again.recovered
    assert [v.name for v in again.volumes()] == ['v']


def test_context_manager_closes_the_group(pv0):
    with create_group(pv0) as vg:
        vg.create_volume('v', MiB)
    # Closed: the lock is gone and the work was kept.
    with VolumeGroup.open(pv0) as again:
        assert [v.name for v in again.volumes()] == ['v']


def test_everything_is_refused_after_close(pv0):
    vg = create_group(pv0)
    vg.create_volume('v', MiB)
    handle = vg.open_volume('v')
    vg.close()
    for call in (vg.volumes, vg.snapshots, vg.capacity,
                 vg.physical_volumes, vg.check, vg.flush,
                 lambda: vg.get('v'),
                 lambda: vg.open_volume('v'),
                 lambda: vg.create_volume('w', MiB),
                 lambda: vg.delete_volume('v'),
                 lambda: handle.read(0, 512),
                 lambda: handle.write(0, bytes(512)),
                 handle.flush):
        with raises_exactly(errors.GroupClosed, 'vg0'):
            call()


# -- create_volume ------------------------------------------------------------

def test_create_thin_volume(vg):
    info = vg.create_volume('thin', 3 * MiB)
    assert (info.name, info.kind, info.size, info.thin) == \
        ('thin', 'volume', 3 * MiB, True)
    assert (info.allocated, info.read_only) == (0, False)
    assert (info.parent_id, info.origin_id) == (None, None)
    assert str(uuid.UUID(info.id)) == info.id
    assert vg.volumes() == [info]
    assert vg.get('thin') == vg.get(info.id) == vg.get(info.id.upper())
    assert vg.get('thin') == info


def test_create_thick_volume_owns_all_its_clusters(vg):
    info = vg.create_volume('thick', 3 * MiB + 512, thin=False)
    assert not info.thin
    assert info.allocated == (3 * MiB // CS + 1) * CS
    assert vg.check().ok


def test_create_volume_with_a_given_id_keeps_it_canonical(vg):
    ident = str(uuid.uuid4())
    info = vg.create_volume('v', MiB, volume_id=ident.upper())
    assert info.id == ident
    assert vg.get(ident).name == 'v'


def test_volume_ids_are_unique(vg):
    ids = {vg.create_volume('v%d' % i, MiB).id for i in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize('size', BAD_SIZES, ids=repr)
def test_create_volume_refuses_a_bad_size(vg, size):
    with refused(vg, errors.InvalidSize, repr(size)):
        vg.create_volume('v', size)


@pytest.mark.parametrize('name', BAD_NAMES, ids=repr)
def test_create_volume_refuses_a_bad_name(vg, name):
    with refused(vg, errors.InvalidName, repr(name)):
        vg.create_volume(name, MiB)


def test_a_name_of_128_characters_is_accepted(vg):
    name = 'v' * 128
    assert vg.create_volume(name, MiB).name == name


def test_create_volume_refuses_a_duplicate_name(vg):
    vg.create_volume('dup', MiB)
    write(vg, 'dup', 0, data(1, CS))
    with refused(vg, errors.AlreadyExists, 'dup', 'vg0'):
        vg.create_volume('dup', 2 * MiB, thin=False)


def test_create_volume_refuses_the_name_of_a_snapshot(vg):
    vg.create_volume('v', MiB)
    vg.create_snapshot('v', 'snap')
    with refused(vg, errors.AlreadyExists, 'snap'):
        vg.create_volume('snap', MiB)


def test_create_volume_refuses_a_duplicate_id(vg):
    ident = vg.create_volume('a', MiB).id
    with refused(vg, errors.AlreadyExists, ident):
        vg.create_volume('b', MiB, volume_id=ident)
    with refused(vg, errors.AlreadyExists, ident):
        vg.create_volume('b', MiB, volume_id=ident.upper())


def test_create_volume_refuses_the_id_of_a_snapshot(vg):
    vg.create_volume('a', MiB)
    snap_id = vg.create_snapshot('a', 's').id
    with refused(vg, errors.AlreadyExists, snap_id):
        vg.create_volume('b', MiB, volume_id=snap_id)


@pytest.mark.parametrize('ident', ['not-a-uuid', '', '1234'])
def test_create_volume_refuses_a_malformed_id(vg, ident):
    with refused(vg, errors.InvalidArgument, repr(ident)):
        vg.create_volume('v', MiB, volume_id=ident)


# -- get, volumes, snapshots --------------------------------------------------

def test_get_of_an_unknown_name_or_id(vg):
    vg.create_volume('v', MiB)
    with refused(vg, errors.VolumeNotFound, 'nope', 'vg0'):
        vg.get('nope')
    ident = str(uuid.uuid4())
    with refused(vg, errors.VolumeNotFound, ident):
        vg.get(ident)


def test_get_of_something_that_is_not_a_name(vg):
    with refused(vg, errors.InvalidArgument, '42'):
        vg.get(42)


def test_volumes_lists_volumes_by_name_and_no_snapshots(vg):
    for name in ('charlie', 'alpha', 'bravo'):
        vg.create_volume(name, MiB)
    vg.create_snapshot('alpha', 'alpha-snap')
    assert [v.name for v in vg.volumes()] == ['alpha', 'bravo', 'charlie']
    assert all(v.kind == 'volume' for v in vg.volumes())


def test_snapshots_lists_in_creation_order_and_filters_by_volume(vg):
    vg.create_volume('a', MiB)
    vg.create_volume('b', MiB)
    vg.create_snapshot('a', 'z-first')
    vg.create_snapshot('b', 'b-snap')
    vg.create_snapshot('a', 'a-second')
    assert [s.name for s in vg.snapshots()] == \
        ['z-first', 'b-snap', 'a-second']
    assert [s.name for s in vg.snapshots('a')] == ['z-first', 'a-second']
    assert [s.name for s in vg.snapshots(vg.get('b').id)] == ['b-snap']
    assert all(s.kind == 'snapshot' and s.read_only
               for s in vg.snapshots())


def test_snapshots_of_an_unknown_volume_or_of_a_snapshot(vg):
    vg.create_volume('a', MiB)
    vg.create_snapshot('a', 's')
    with refused(vg, errors.VolumeNotFound, 'nope'):
        vg.snapshots('nope')
    with refused(vg, errors.WrongKind, 's'):
        vg.snapshots('s')


# -- delete_volume ------------------------------------------------------------

def test_delete_volume_removes_it_and_frees_its_space(vg):
    free = vg.capacity().free
    vg.create_volume('v', 2 * MiB, thin=False)
    write(vg, 'v', 0, data(1, CS))
    vg.delete_volume('v')
    assert vg.volumes() == []
    with raises_exactly(errors.VolumeNotFound, 'v'):
        vg.get('v')
    assert vg.capacity().free == free
    assert vg.capacity().provisioned == 0
    assert vg.check().ok


def test_delete_volume_by_id(vg):
    ident = vg.create_volume('v', MiB).id
    vg.delete_volume(ident)
    assert vg.volumes() == []


def test_a_deleted_volume_name_is_reused_by_a_new_empty_volume(vg):
    vg.create_volume('v', MiB)
    write(vg, 'v', 0, data(1, MiB))
    old_id = vg.get('v').id
    vg.delete_volume('v')
    info = vg.create_volume('v', MiB)
    assert info.id != old_id
    assert read(vg, 'v') == bytes(MiB)


def test_delete_volume_refuses_unknown_and_snapshots(vg):
    vg.create_volume('v', MiB)
    write(vg, 'v', 0, data(1, CS))
    vg.create_snapshot('v', 's')
    with refused(vg, errors.VolumeNotFound, 'nope'):
        vg.delete_volume('nope')
    with refused(vg, errors.WrongKind, 's', 'snapshot'):
        vg.delete_volume('s')
    with refused(vg, errors.WrongKind, 's'):
        vg.delete_volume(vg.get('s').id)


def test_a_handle_of_a_deleted_volume_stops_working(vg):
    vg.create_volume('v', MiB)
    handle = vg.open_volume('v')
    handle.write(0, data(1, CS))
    vg.delete_volume('v')
    with raises_exactly(errors.VolumeNotFound, 'v'):
        handle.read(0, 512)
    with raises_exactly(errors.VolumeNotFound, 'v'):
        handle.write(0, bytes(512))


def test_delete_volume_survives_reopen(vg, reopen):
    vg.create_volume('a', MiB)
    vg.create_volume('b', MiB)
    write(vg, 'b', 0, data(2, CS))
    vg.delete_volume('a')
    again = reopen(vg)
    assert [v.name for v in again.volumes()] == ['b']
    assert read(again, 'b', 0, CS) == data(2, CS)
    assert again.check().ok


# -- rename -------------------------------------------------------------------

def test_rename_keeps_id_and_data_and_frees_the_old_name(vg, reopen):
    ident = vg.create_volume('old', MiB).id
    write(vg, 'old', CS, data(3, CS))
    info = vg.rename('old', 'new')
    assert (info.id, info.name) == (ident, 'new')
    assert [v.name for v in vg.volumes()] == ['new']
    with raises_exactly(errors.VolumeNotFound, 'old'):
        vg.get('old')
    assert read(vg, 'new', CS, CS) == data(3, CS)
    # The old name is free for another volume.
    vg.create_volume('old', MiB)
    again = reopen(vg)
    assert [v.name for v in again.volumes()] == ['new', 'old']
    assert again.get('new').id == ident
    assert read(again, 'new', CS, CS) == data(3, CS)
    assert read(again, 'old') == bytes(MiB)


def test_rename_by_id_and_of_a_snapshot(vg):
    vg.create_volume('v', MiB)
    write(vg, 'v', 0, data(1, CS))
    snap = vg.create_snapshot('v', 's')
    assert vg.rename(snap.id, 's2').name == 's2'
    assert [s.name for s in vg.snapshots()] == ['s2']
    assert read(vg, 's2', 0, CS) == data(1, CS)


def test_rename_to_the_same_name_changes_nothing(vg):
    vg.create_volume('v', MiB)
    before = observe(vg)
    assert vg.rename('v', 'v').name == 'v'
    assert observe(vg) == before


def test_rename_refuses_an_existing_name(vg):
    vg.create_volume('a', MiB)
    vg.create_volume('b', MiB)
    vg.create_snapshot('b', 's')
    with refused(vg, errors.AlreadyExists, 'b'):
        vg.rename('a', 'b')
    with refused(vg, errors.AlreadyExists, 's'):
        vg.rename('a', 's')


@pytest.mark.parametrize('name', BAD_NAMES, ids=repr)
def test_rename_refuses_a_bad_name(vg, name):
    vg.create_volume('a', MiB)
    with refused(vg, errors.InvalidName, repr(name)):
        vg.rename('a', name)


def test_rename_of_an_unknown_volume(vg):
    with refused(vg, errors.VolumeNotFound, 'nope'):
        vg.rename('nope', 'new')


# -- extend -------------------------------------------------------------------

@pytest.mark.parametrize('thin', [True, False])
def test_extend_grows_and_the_new_space_reads_zeros(vg, thin, reopen):
    vg.create_volume('v', MiB, thin=thin)
    write(vg, 'v', MiB - CS, data(1, CS))
    handle = vg.open_volume('v')
    info = vg.extend('v', 3 * MiB + 512)
    assert info.size == 3 * MiB + 512
    assert handle.size == 3 * MiB + 512
    assert handle.read(MiB - CS, CS) == data(1, CS)
    assert handle.read(MiB, 2 * MiB + 512) == bytes(2 * MiB + 512)
    handle.write(3 * MiB, data(2, 512))
    assert vg.capacity().provisioned == 3 * MiB + 512
    if not thin:
        assert info.allocated == (3 * MiB // CS + 1) * CS
    assert vg.check().ok
    again = reopen(vg)
    assert again.get('v').size == 3 * MiB + 512
    assert read(again, 'v', MiB - CS, CS) == data(1, CS)
    assert read(again, 'v', 3 * MiB, 512) == data(2, 512)


def test_extend_an_unaligned_size_reads_zeros_past_the_old_end(vg):
    vg.create_volume('v', CS + CS // 2)
    write(vg, 'v', 0, data(1, CS + CS // 2))
    vg.extend('v', 2 * CS)
    assert read(vg, 'v') == data(1, CS + CS // 2) + bytes(CS // 2)


def test_extend_to_the_same_size_changes_nothing(vg):
    vg.create_volume('v', MiB)
    before = observe(vg)
    assert vg.extend('v', MiB).size == MiB
    assert observe(vg) == before


def test_extend_refuses_to_shrink(vg):
    vg.create_volume('v', 2 * MiB)
    write(vg, 'v', MiB, data(1, CS))
    with refused(vg, errors.InvalidSize, 'shrink', 'v'):
        vg.extend('v', MiB)


@pytest.mark.parametrize('size', BAD_SIZES, ids=repr)
def test_extend_refuses_a_bad_size(vg, size):
    vg.create_volume('v', 512)
    with refused(vg, errors.InvalidSize, repr(size)):
        vg.extend('v', size)


def test_extend_refuses_snapshots_and_unknown_volumes(vg):
    vg.create_volume('v', MiB)
    vg.create_snapshot('v', 's')
    with refused(vg, errors.WrongKind, 's'):
        vg.extend('s', 2 * MiB)
    with refused(vg, errors.VolumeNotFound, 'nope'):
        vg.extend('nope', 2 * MiB)


# -- add_pv -------------------------------------------------------------------

def test_add_pv_grows_the_group_and_survives_reopen(vg, tmp_path, reopen):
    total = vg.capacity().total
    pv1 = str(tmp_path / 'pv1')
    vg.add_pv(pv1, 32 * MiB)
    assert vg.capacity().total == total + 31 * MiB
    assert vg.capacity().free - 31 * MiB == total - vg.capacity().allocated
    pvs = vg.physical_volumes()
    assert [(p.index, p.path, p.size, p.free) for p in pvs[1:]] == \
        [(1, pv1, 31 * MiB, 31 * MiB)]
    assert vg.check().ok
    again = reopen(vg)
    assert again.capacity().total == total + 31 * MiB
    assert [p.path for p in again.physical_volumes()] == [vg._pvs[0].path,
                                                          pv1]


def test_new_volumes_use_the_added_pv(vg, tmp_path, reopen):
    vg.add_pv(str(tmp_path / 'pv1'), 32 * MiB)
    # Bigger than PV0 alone: it must take clusters of PV1.
    size = (PV_CLUSTERS - 2) * CS + 16 * MiB
    vg.create_volume('big', size, thin=False)
    pv0_info, pv1_info = vg.physical_volumes()
    assert 31 * MiB - pv1_info.free >= size - pv0_info.size
    assert pv0_info.free + pv1_info.free == vg.capacity().free
    payload = data(1, 4 * MiB)
    write(vg, 'big', size - 4 * MiB, payload)
    write(vg, 'big', 0, data(2, CS))
    again = reopen(vg)
    assert read(again, 'big', size - 4 * MiB, 4 * MiB) == payload
    assert read(again, 'big', 0, CS) == data(2, CS)
    assert again.check().ok


def test_thin_writes_spill_onto_the_added_pv(tmp_path, reopen):
    vg = create_group(tmp_path / 'pv0', size=8 * MiB)
    vg.create_volume('v', 64 * MiB)
    vg.add_pv(str(tmp_path / 'pv1'), 16 * MiB)
    payload = data(1, 16 * MiB)
    write(vg, 'v', 0, payload)
    assert vg.physical_volumes()[1].free < 15 * MiB
    vg.flush()
    again = reopen(vg)
    assert read(again, 'v', 0, 16 * MiB) == payload


def test_open_finds_a_moved_pv_through_pv_paths(vg, pv0, tmp_path):
    pv1 = str(tmp_path / 'pv1')
    vg.add_pv(pv1, 32 * MiB)
    vg.create_volume('big', (PV_CLUSTERS + 8) * CS, thin=False)
    write(vg, 'big', PV_CLUSTERS * CS, data(1, 8 * CS))
    vg.close()
    moved = str(tmp_path / 'moved')
    os.rename(pv1, moved)
    with raises_exactly(errors.NotFound, pv1):
        VolumeGroup.open(pv0)
    with VolumeGroup.open(pv0, pv_paths={1: moved}) as again:
        assert read(again, 'big', PV_CLUSTERS * CS, 8 * CS) == data(1, 8 * CS)


def test_open_refuses_a_foreign_pv_at_a_recorded_path(vg, pv0, tmp_path):
    pv1 = str(tmp_path / 'pv1')
    vg.add_pv(pv1, 32 * MiB)
    vg.close()
    os.unlink(pv1)
    create_group(pv1, size=32 * MiB, name='other').close()
    with raises_exactly(errors.MetadataError, pv1, 'vg0'):
        VolumeGroup.open(pv0)


def test_add_pv_refuses_a_pv_of_another_group(vg, tmp_path):
    other = str(tmp_path / 'other')
    create_group(other, size=32 * MiB).close()
    before = _file_digest(other)
    with refused(vg, errors.AlreadyExists, other):
        vg.add_pv(other)
    assert _file_digest(other) == before


def test_add_pv_refuses_a_pv_already_in_the_group(vg, pv0, tmp_path):
    pv1 = str(tmp_path / 'pv1')
    vg.add_pv(pv1, 32 * MiB)
    with refused(vg, errors.AlreadyExists, pv1):
        vg.add_pv(pv1)


def test_add_pv_refuses_a_pv_too_small_for_one_cluster(vg, tmp_path):
    small = str(tmp_path / 'small')
    with refused(vg, errors.InvalidSize, small, 'too small'):
        vg.add_pv(small, 8 * 1024)


def test_refused_add_pv_of_a_too_small_pv_can_be_retried_bigger(
        vg, tmp_path):
    small = str(tmp_path / 'small')
    with raises_exactly(errors.InvalidSize, small):
        vg.add_pv(small, 8 * 1024)
    vg.add_pv(small, 32 * MiB)
    assert vg.physical_volumes()[1].size == 31 * MiB


def test_add_pv_of_a_missing_path_without_size(vg, tmp_path):
    missing = str(tmp_path / 'missing')
    with refused(vg, errors.NotFound, missing):
        vg.add_pv(missing)
    assert not os.path.exists(missing)


# -- set_policy ---------------------------------------------------------------

def test_set_policy_changes_capacity_figures_and_survives_reopen(vg, reopen):
    vg.set_policy(over_subscription_ratio=2.5, reserved_percentage=10)
    cap = vg.capacity()
    assert (cap.max_over_subscription_ratio, cap.reserved_percentage) == \
        (2.5, 10)
    vg.set_policy(reserved_percentage=20)
    assert vg.capacity().max_over_subscription_ratio == 2.5
    assert vg.capacity().reserved_percentage == 20
    again = reopen(vg)
    cap = again.capacity()
    assert (cap.max_over_subscription_ratio, cap.reserved_percentage) == \
        (2.5, 20)


@pytest.mark.parametrize('kwargs, words', [
    ({'over_subscription_ratio': 0.99}, ['over-subscription ratio']),
    ({'over_subscription_ratio': -3}, ['over-subscription ratio', '-3']),
    ({'reserved_percentage': 100}, ['reserved percentage', '100']),
    ({'reserved_percentage': -1}, ['reserved percentage', '-1']),
    ({'reserved_percentage': 12.5}, ['reserved percentage', '12.5']),
    ({'over_subscription_ratio': float('nan')},
     ['over-subscription ratio']),
    ({'over_subscription_ratio': 'lots'}, ['over-subscription ratio']),
], ids=['ratio-below-1', 'ratio-negative', 'reserved-100', 'reserved-negative',
        'reserved-fraction', 'ratio-nan', 'ratio-string'])
def test_set_policy_refuses_bad_values(vg, kwargs, words):
    vg.create_volume('v', MiB)
    with refused(vg, errors.InvalidArgument, *words):
        vg.set_policy(**kwargs)


# -- check and check_group ----------------------------------------------------

def test_check_of_a_busy_group_is_clean(vg):
    vg.create_volume('a', 2 * MiB)
    vg.create_volume('b', MiB, thin=False)
    write(vg, 'a', 0, data(1, MiB))
    vg.create_snapshot('a', 's')
    vg.clone('s', 'c')
    write(vg, 'c', CS, data(2, CS))
    vg.open_volume('a').discard(0, 2 * CS)
    report = vg.check()
    assert report.ok and report.errors == []
    assert (report.stats['volumes'], report.stats['snapshots']) == (3, 1)


def test_check_group_of_a_closed_group_is_clean(vg, pv0):
    vg.create_volume('a', MiB)
    vg.create_snapshot('a', 's')
    vg.close()
    report = check_group(pv0)
    assert report.ok, report.errors
    assert report.group == 'vg0'
    assert report.stats['journal_records_replayed'] == 0
    assert report.notes == []


def test_check_group_of_an_open_group_says_it_is_in_use(vg, pv0):
    # Nothing was checked: no report, an error saying where to check.
    with raises_exactly(errors.GroupInUse, 'vg0', pv0, 'in use',
                        '`storage-engine pool check vg0`'):
        check_group(pv0)


def test_check_group_reports_a_file_that_is_not_a_pv(tmp_path):
    path = str(tmp_path / 'zeros')
    with open(path, 'wb') as f:
        f.truncate(4 * MiB)
    report = check_group(path)
    assert not report.ok
    assert any(path in e for e in report.errors)
