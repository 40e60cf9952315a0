"""Turning a volume thin or thick in place (Cinder's retype).

Thick means the pool has set aside every cluster the volume may still
need, so its writes never fail for want of space; thin gives that back.
The data does not move and reads the same either way.
"""

import pytest

from storage_engine import errors
from storage_engine.volstore import VolumeGroup
from tests.crash import abandon
from tests.unit.volstore.conftest import create_group
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import PV_CLUSTERS
from tests.unit.volstore.conftest import read
from tests.unit.volstore.conftest import refused
from tests.unit.volstore.conftest import write

SIZE = MiB          # 16 clusters
BASE = data(7, 3 * CS)


@pytest.fixture
def thin(vg):
    vg.create_volume('v', SIZE)
    write(vg, 'v', 0, BASE)
    return vg


def test_thin_to_thick_reserves_what_the_volume_does_not_own(thin):
    before = thin.capacity()
    info = thin.set_provisioning('v', thin=False)
    after = thin.capacity()
    assert info.thin is False
    assert thin.get('v').thin is False
    # 16 clusters, 3 written: 13 set aside for it.
    assert after.thick_reserved == before.thick_reserved + 13 * CS
    assert after.available_thin == before.available_thin - 13 * CS
    assert after.free == before.free            # nothing allocated yet
    assert read(thin, 'v', 0, len(BASE)) == BASE
    # Writes draw on the reservation.
    write(thin, 'v', 5 * CS, data(8, CS))
    assert thin.capacity().thick_reserved == after.thick_reserved - CS
    assert thin.check().ok


def test_thick_to_thin_gives_the_reservation_back(vg):
    vg.create_volume('v', SIZE, thin=False)
    before = vg.capacity()
    vg.set_provisioning('v', thin=True)
    after = vg.capacity()
    assert vg.get('v').thin is True
    assert after.thick_reserved == before.thick_reserved
    assert after.free == before.free            # its clusters stay its own
    assert vg.check().ok


def test_thick_after_a_snapshot_reserves_the_rewrite(thin):
    thin.create_snapshot('v', 's')
    before = thin.capacity()
    thin.set_provisioning('v', thin=False)
    # The snapshot owns the written clusters now: all 16 are reserved.
    assert thin.capacity().thick_reserved == before.thick_reserved + 16 * CS
    write(thin, 'v', 0, data(9, CS))
    assert read(thin, 's', 0, len(BASE)) == BASE
    assert thin.check().ok


def test_setting_what_it_already_is_changes_nothing(thin):
    before = thin.capacity()
    thin.set_provisioning('v', thin=True)
    assert thin.capacity() == before


def test_thick_beyond_the_free_space_is_refused(pv0):
    vg = create_group(pv0, over_subscription_ratio=4.0)
    try:
        vg.create_volume('big', (PV_CLUSTERS + 8) * CS)
        with refused(vg, errors.NoSpace, 'big'):
            vg.set_provisioning('big', thin=False)
        assert vg.get('big').thin is True
    finally:
        vg.close()


def test_refusals_change_nothing(thin):
    thin.create_snapshot('v', 's')
    with refused(thin, errors.WrongKind):
        thin.set_provisioning('s', thin=False)
    with refused(thin, errors.VolumeNotFound):
        thin.set_provisioning('nope', thin=False)
    with refused(thin, errors.InvalidArgument):
        thin.set_provisioning('v', thin='thick')


@pytest.mark.parametrize('crash', [True, False], ids=['crash', 'close'])
def test_provisioning_survives_a_crash_or_a_close(pv0, thin, crash):
    thin.set_provisioning('v', thin=False)
    reserved = thin.capacity().thick_reserved
    if crash:
        abandon(thin)
    else:
        thin.close()
    again = VolumeGroup.open(str(pv0))
    try:
        assert again.get('v').thin is False
        assert again.capacity().thick_reserved == reserved
        assert read(again, 'v', 0, len(BASE)) == BASE
        assert again.check().ok
    finally:
        again.close()
