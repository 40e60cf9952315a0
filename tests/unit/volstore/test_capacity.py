"""Capacity accounting: what the group reports and what it refuses.

``total`` is every data cluster; ``free`` the clusters nobody owns;
``provisioned`` the sum of volume sizes; ``thick_reserved`` what thick
volumes may still claim; ``available_thin`` what thin writes (and new thick
reservations) can still take.
"""

import dataclasses

import pytest

from storage_engine import errors
from storage_engine.volstore import VolumeGroup
from tests.unit.volstore.conftest import create_group
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import PV_CLUSTERS
from tests.unit.volstore.conftest import raises_exactly
from tests.unit.volstore.conftest import read
from tests.unit.volstore.conftest import refused
from tests.unit.volstore.conftest import write


def changed(before, after) -> dict:
    """``{field: after - before}`` of the numeric fields that moved."""
    out = {}
    for field in dataclasses.fields(before):
        old = getattr(before, field.name)
        new = getattr(after, field.name)
        if old != new:
            out[field.name] = new - old
    return out


@pytest.fixture
def small(tmp_path):
    """A 16 MiB group: 240 clusters of 64 KiB."""
    group = create_group(tmp_path / 'small', size=16 * MiB)
    yield group
    group.close()


def test_fresh_group(vg):
    cap = vg.capacity()
    assert cap.total == PV_CLUSTERS * CS
    # One cluster holds the checkpoint.
    assert (cap.free, cap.allocated) == (cap.total - CS, CS)
    assert (cap.provisioned, cap.thick_reserved) == (0, 0)
    assert 0 < cap.available_thin <= cap.free
    assert (cap.max_over_subscription_ratio, cap.reserved_percentage) == \
        (20.0, 0)
    assert (cap.volumes, cap.snapshots, cap.cluster_size) == (0, 0, CS)
    [pv] = vg.physical_volumes()
    assert (pv.size, pv.free) == (cap.total, cap.free)


def test_policy_given_at_creation(pv0):
    with create_group(pv0, over_subscription_ratio=1.5,
                      reserved_percentage=10) as vg:
        cap = vg.capacity()
        assert (cap.max_over_subscription_ratio, cap.reserved_percentage) \
            == (1.5, 10)


def test_thin_volume_lifecycle(vg):
    start = vg.capacity()
    vg.create_volume('v', 4 * MiB)
    created = vg.capacity()
    assert changed(start, created) == {'provisioned': 4 * MiB, 'volumes': 1}
    write(vg, 'v', CS, data(1, 3 * CS))
    written = vg.capacity()
    assert changed(created, written) == {
        'free': -3 * CS, 'allocated': 3 * CS, 'available_thin': -3 * CS}
    assert vg.get('v').allocated == 3 * CS
    vg.create_snapshot('v', 's')
    assert changed(written, vg.capacity()) == {'snapshots': 1}
    vg.delete_snapshot('s')
    vg.delete_volume('v')
    assert vg.capacity() == start


def test_thick_volume_lifecycle(vg):
    start = vg.capacity()
    vg.create_volume('t', 2 * MiB, thin=False)
    created = vg.capacity()
    assert changed(start, created) == {
        'free': -2 * MiB, 'allocated': 2 * MiB,
        'available_thin': -2 * MiB, 'provisioned': 2 * MiB, 'volumes': 1}
    write(vg, 't', 0, data(1, 2 * MiB))
    assert vg.capacity() == created
    # A snapshot takes the clusters; the volume reserves its size again.
    vg.create_snapshot('t', 's')
    snapped = vg.capacity()
    assert changed(created, snapped) == {
        'thick_reserved': 2 * MiB, 'available_thin': -2 * MiB,
        'snapshots': 1}
    write(vg, 't', 0, data(2, CS))
    rewritten = vg.capacity()
    assert changed(snapped, rewritten) == {
        'free': -CS, 'allocated': CS, 'thick_reserved': -CS}
    # Deleting the snapshot hands its clusters back to the volume.
    vg.delete_snapshot('s')
    assert vg.capacity() == created
    assert read(vg, 't', 0, 2 * CS) == data(2, CS) + data(1, 2 * CS)[CS:]
    vg.delete_volume('t')
    assert vg.capacity() == start


def test_clones(vg):
    vg.create_volume('v', MiB)
    write(vg, 'v', 0, data(1, MiB))
    vg.create_snapshot('v', 's')
    before = vg.capacity()
    vg.clone('s', 'thin-clone', size=2 * MiB)
    after_thin = vg.capacity()
    assert changed(before, after_thin) == {'provisioned': 2 * MiB,
                                           'volumes': 1}
    vg.clone('s', 'thick-clone', size=2 * MiB, thin=False)
    after_thick = vg.capacity()
    # The tail beyond the snapshot is allocated; the shared part is
    # reserved for the copies writes will make.
    assert changed(after_thin, after_thick) == {
        'free': -MiB, 'allocated': MiB, 'thick_reserved': MiB,
        'available_thin': -2 * MiB, 'provisioned': 2 * MiB, 'volumes': 1}
    write(vg, 'thick-clone', 0, data(2, CS))
    assert changed(after_thick, vg.capacity()) == {
        'free': -CS, 'allocated': CS, 'thick_reserved': -CS}


def test_flattening_a_thick_clone_turns_its_reservation_into_clusters(vg):
    vg.create_volume('v', MiB)
    write(vg, 'v', 0, data(1, MiB))
    vg.create_snapshot('v', 's')
    vg.clone('s', 'c', thin=False)
    before = vg.capacity()
    assert before.thick_reserved == MiB
    vg.flatten('c')
    assert changed(before, vg.capacity()) == {
        'free': -MiB, 'allocated': MiB, 'thick_reserved': -MiB}
    assert vg.get('c').allocated == MiB
    assert read(vg, 'c') == data(1, MiB)


def test_capacity_survives_reopen(vg, reopen):
    vg.create_volume('thin', 4 * MiB)
    vg.create_volume('thick', 2 * MiB, thin=False)
    write(vg, 'thin', 0, data(1, 5 * CS))
    vg.create_snapshot('thick', 's')
    vg.set_policy(over_subscription_ratio=3.0, reserved_percentage=5)
    vg.flush()
    before = vg.capacity()
    assert reopen(vg).capacity() == before


def test_physical_volume_free_adds_up(vg, tmp_path):
    vg.add_pv(str(tmp_path / 'pv1'), 32 * MiB)
    vg.create_volume('big', (PV_CLUSTERS + 10) * CS, thin=False)
    cap = vg.capacity()
    pvs = vg.physical_volumes()
    assert sum(p.size for p in pvs) == cap.total
    assert sum(p.free for p in pvs) == cap.free


# -- NoSpace ------------------------------------------------------------------

def test_thin_writes_can_use_exactly_available_thin(small):
    vg = small
    avail = vg.capacity().available_thin
    vg.create_volume('v', 64 * MiB)
    handle = vg.open_volume('v')
    handle.write(0, data(1, avail))
    assert vg.capacity().available_thin == 0
    with raises_exactly(errors.NoSpace, 'vg0', 'v'):
        handle.write(avail, data(2, 512))
    assert handle.read(0, avail + 512) == data(1, avail) + bytes(512)
    # A write into an allocated cluster still works.
    handle.write(0, data(3, 512))
    # Freeing space makes writes possible again.
    handle.discard(0, 4 * CS)
    handle.flush()
    assert vg.capacity().available_thin == 4 * CS
    handle.write(avail, data(2, CS))
    assert vg.check().ok


def test_a_full_group_stays_usable_after_reopen(tmp_path):
    path = tmp_path / 'pv0'
    vg = create_group(path, size=16 * MiB)
    vg.create_volume('v', 64 * MiB)
    handle = vg.open_volume('v')
    written = 0
    with pytest.raises(errors.NoSpace):
        while True:
            handle.write(written, data(written, MiB))
            written += MiB
    vg.close()
    with VolumeGroup.open(str(path)) as again:
        assert again.check().ok
        for offset in range(0, written, MiB):
            assert read(again, 'v', offset, MiB) == data(offset, MiB)
        again.delete_volume('v')
        again.create_volume('w', 8 * MiB, thin=False)
        write(again, 'w', 0, data(1, 8 * MiB))
        assert read(again, 'w') == data(1, 8 * MiB)


def test_thick_volume_can_reserve_exactly_available_thin(small):
    avail = small.capacity().available_thin
    with refused(small, errors.NoSpace, 'big', 'vg0'):
        small.create_volume('big', avail + CS, thin=False)
    small.create_volume('big', avail, thin=False)
    assert small.capacity().available_thin == 0
    # Nothing thin can be written any more, but nothing is lost either.
    small.create_volume('thin', MiB)
    with raises_exactly(errors.NoSpace, 'thin'):
        write(small, 'thin', 0, data(1, 512))
    write(small, 'big', avail - MiB, data(2, MiB))
    assert read(small, 'big', avail - MiB, MiB) == data(2, MiB)


def test_thick_creation_beyond_free_space_is_refused(vg):
    vg.create_volume('v', MiB)
    with refused(vg, errors.NoSpace, 'thick volume huge', 'vg0', 'MiB'):
        vg.create_volume('huge', 64 * MiB, thin=False)


def test_thick_extend_beyond_free_space_is_refused(small):
    small.create_volume('t', MiB, thin=False)
    write(small, 't', 0, data(1, MiB))
    with refused(small, errors.NoSpace, 't', 'vg0'):
        small.extend('t', 16 * MiB)


def test_snapshot_of_a_thick_volume_needs_room_for_its_rewrite(small):
    avail = small.capacity().available_thin
    size = (avail // 2 + CS) // CS * CS
    small.create_volume('t', size, thin=False)
    write(small, 't', 0, data(1, CS))
    with refused(small, errors.NoSpace, 'snapshot s', 'thick volume t'):
        small.create_snapshot('t', 's')
    # A thin volume is snapshotted whatever the space.
    small.create_volume('thin', size)
    small.create_snapshot('thin', 's')


def test_thick_clone_beyond_free_space_is_refused(small):
    small.create_volume('v', 16 * MiB)
    small.create_snapshot('v', 's')
    with refused(small, errors.NoSpace, 'thick clone c'):
        small.clone('s', 'c', thin=False)


def test_over_subscription_ratio_limits_provisioning(small):
    vg = small
    vg.set_policy(over_subscription_ratio=1.0)
    total = vg.capacity().total
    vg.create_volume('all', total)
    for call in (lambda: vg.create_volume('more', 512),
                 lambda: vg.extend('all', total + 512)):
        with refused(vg, errors.NoSpace, 'over-subscription ratio 1.0',
                     'vg0'):
            call()
    vg.create_snapshot('all', 's')
    with refused(vg, errors.NoSpace, 'clone c', 'over-subscription'):
        vg.clone('s', 'c')
    vg.set_policy(over_subscription_ratio=2.0)
    vg.create_volume('more', total)
    with refused(vg, errors.NoSpace, 'volume third', 'ratio 2.0'):
        vg.create_volume('third', 512)


def test_thick_volumes_count_against_over_subscription(small):
    vg = small
    vg.set_policy(over_subscription_ratio=1.0)
    vg.create_volume('thick', 8 * MiB, thin=False)
    room = vg.capacity().total - 8 * MiB
    with refused(vg, errors.NoSpace, 'over-subscription'):
        vg.create_volume('thin', room + 512)
    vg.create_volume('thin', room)


def test_reserved_percentage_refuses_thick_creation(vg):
    vg.set_policy(reserved_percentage=50)
    half = vg.capacity().total // 2
    with refused(vg, errors.NoSpace, 'thick volume t', 'reserved '
                 'percentage 50%'):
        vg.create_volume('t', half, thin=False)
    vg.create_volume('t', half - 8 * CS, thin=False)


def test_reserved_percentage_lowers_the_provisioning_limit(vg):
    vg.set_policy(over_subscription_ratio=1.0, reserved_percentage=25)
    total = vg.capacity().total
    with refused(vg, errors.NoSpace, 'reserved 25%'):
        vg.create_volume('v', total * 3 // 4 + CS)
    vg.create_volume('v', total * 3 // 4 // CS * CS)


def test_lowering_the_policy_does_not_touch_existing_volumes(vg):
    vg.create_volume('v', 32 * MiB)
    write(vg, 'v', 0, data(1, MiB))
    vg.set_policy(over_subscription_ratio=1.0, reserved_percentage=90)
    assert read(vg, 'v', 0, MiB) == data(1, MiB)
    write(vg, 'v', MiB, data(2, MiB))
    with refused(vg, errors.NoSpace, 'volume w'):
        vg.create_volume('w', 512)
