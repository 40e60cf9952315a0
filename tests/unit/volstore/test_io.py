"""VolumeHandle: read, write (FUA), flush, discard, write-zeroes, allocation.

Every byte checked here is read back through the public handle; the
allocation map is checked at cluster granularity against what was written.
"""

import pytest

from storage_engine import errors
from storage_engine.volstore import info
from storage_engine.volstore import VolumeGroup
from tests.unit.volstore.conftest import create_group
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import raises_exactly
from tests.unit.volstore.conftest import read
from tests.unit.volstore.conftest import refused
from tests.unit.volstore.conftest import write

DATA = info.DATA
HOLE = info.HOLE
ZERO = info.ZERO


def extents(*runs):
    """``extents((0, 2, DATA), (2, 3, HOLE))`` in clusters -> Extents."""
    return [info.Extent(start * CS, count * CS, state)
            for start, count, state in runs]


@pytest.fixture
def vol(vg):
    """A 1 MiB (16 cluster) thin volume 'v' and a handle to it."""
    vg.create_volume('v', MiB)
    return vg.open_volume('v')


# -- reads of never-written space ---------------------------------------------

@pytest.mark.parametrize('thin', [True, False])
def test_never_written_space_reads_zeros(vg, thin):
    vg.create_volume('v', 3 * MiB + 512, thin=thin)
    assert read(vg, 'v') == bytes(3 * MiB + 512)
    assert read(vg, 'v', CS - 512, 1024) == bytes(1024)


@pytest.mark.parametrize('thin', [True, False])
def test_reused_space_never_shows_a_former_volume_data(tmp_path, thin):
    # A small group: the second volume has to reuse the first one's
    # clusters.
    with create_group(tmp_path / 'pv0', size=16 * MiB) as vg:
        vg.create_volume('old', 12 * MiB)
        write(vg, 'old', 0, b'\xee' * (12 * MiB))
        vg.delete_volume('old')
        vg.create_volume('new', 12 * MiB, thin=thin)
        handle = vg.open_volume('new')
        for offset in range(0, 12 * MiB, CS):
            handle.write(offset + 1024, b'\x01' * 512)
        expected = (bytes(1024) + b'\x01' * 512 + bytes(CS - 1536)) * \
            (12 * MiB // CS)
        assert handle.read(0, 12 * MiB) == expected


# -- write and read back ------------------------------------------------------

def test_write_reads_back_at_sector_granularity(vol):
    vol.write(512, data(1, 512))
    vol.write(CS - 1024, data(2, 3 * CS))       # spans four clusters
    vol.write(MiB - 512, data(3, 512))          # the last sector
    expected = bytearray(MiB)
    expected[512:1024] = data(1, 512)
    expected[CS - 1024:4 * CS - 1024] = data(2, 3 * CS)
    expected[MiB - 512:] = data(3, 512)
    assert vol.read(0, MiB) == bytes(expected)
    assert vol.read(CS - 512, 1024) == bytes(expected[CS - 512:CS + 512])


def test_partial_overwrite_keeps_the_rest_of_the_cluster(vol):
    vol.write(0, data(1, CS))
    vol.write(4096, data(2, 512))
    expected = bytearray(data(1, CS))
    expected[4096:4608] = data(2, 512)
    assert vol.read(0, CS) == bytes(expected)


def test_write_accepts_any_bytes_like_object(vol):
    vol.write(0, bytearray(data(1, 512)))
    vol.write(512, memoryview(data(2, 1024)))
    assert vol.read(0, 1536) == data(1, 512) + data(2, 1024)


def test_zero_length_io_at_the_end_is_allowed(vol, vg):
    before = vg.capacity()
    assert vol.read(MiB, 0) == b''
    vol.write(MiB, b'')
    assert vg.capacity() == before


def test_handle_describes_its_volume(vg, vol):
    ident = vg.get('v').id
    assert (vol.name, vol.id, vol.size, vol.read_only) == \
        ('v', ident, MiB, False)
    assert vg.open_volume(ident).name == 'v'


def test_open_volume_of_an_unknown_name(vg):
    with refused(vg, errors.VolumeNotFound, 'nope'):
        vg.open_volume('nope')


def test_open_volume_handle_is_a_context_manager(vg, vol):
    # The package docstring shows ``with vg.open_volume('data')``.
    with vg.open_volume('v') as handle:
        handle.write(0, data(1, 512))
    assert vol.read(0, 512) == data(1, 512)


def test_thin_write_allocates_only_the_clusters_written(vg, vol):
    vol.write(CS + 512, data(1, 512))
    vol.write(5 * CS, data(2, 2 * CS))
    assert vg.get('v').allocated == 3 * CS


# -- durability: close, flush, reopen -----------------------------------------

@pytest.mark.parametrize('thin', [True, False])
def test_data_survives_close_and_open(vg, reopen, thin):
    vg.create_volume('w', 2 * MiB, thin=thin)
    payload = data(1, 2 * MiB - 3 * CS)
    write(vg, 'w', CS + 512, payload)
    again = reopen(vg)
    assert read(again, 'w', CS + 512, len(payload)) == payload
    assert read(again, 'w', 0, CS + 512) == bytes(CS + 512)


def test_write_flush_reopen(vg, vol, reopen):
    vol.write(0, data(1, 4 * CS))
    vol.flush()
    vol.write(CS, data(2, 512))
    vol.flush()
    again = reopen(vg)
    expected = bytearray(data(1, 4 * CS))
    expected[CS:CS + 512] = data(2, 512)
    assert read(again, 'v', 0, 4 * CS) == bytes(expected)
    assert again.replayed == 0


def test_flush_of_a_read_only_group_is_harmless(pv0, reopen):
    with create_group(pv0) as vg:
        vg.create_volume('v', MiB)
        write(vg, 'v', 0, data(1, 512))
    ro = reopen(read_only=True)
    handle = ro.open_volume('v')
    # Nothing to make durable; an NBD client flushes read-only exports too.
    handle.flush()
    assert handle.read(0, 512) == data(1, 512)


# -- refused I/O --------------------------------------------------------------

BAD_RANGES = [
    # offset, length, exception
    (1, 512, errors.UnalignedIO),
    (511, 512, errors.UnalignedIO),
    (0, 1, errors.UnalignedIO),
    (512, 1000, errors.UnalignedIO),
    (-512, 512, errors.UnalignedIO),
    (0, -512, errors.UnalignedIO),
    (MiB - 512, 1024, errors.OutOfRange),
    (MiB, 512, errors.OutOfRange),
    (2 * MiB, 512, errors.OutOfRange),
    (0, MiB + 512, errors.OutOfRange),
]


@pytest.mark.parametrize('offset, length, exc_class', BAD_RANGES)
def test_bad_reads_are_refused(vg, vol, offset, length, exc_class):
    vol.write(0, data(1, MiB))
    with refused(vg, exc_class, str(offset)):
        vol.read(offset, length)


@pytest.mark.parametrize('offset, length, exc_class',
                         [r for r in BAD_RANGES if r[1] >= 0])
def test_bad_writes_are_refused_and_write_nothing(vg, vol, offset, length,
                                                  exc_class):
    vol.write(0, data(1, MiB))
    with refused(vg, exc_class, str(offset)):
        vol.write(offset, data(2, length))


@pytest.mark.parametrize('offset, length, exc_class', BAD_RANGES)
def test_bad_discards_are_refused(vg, vol, offset, length, exc_class):
    vol.write(0, data(1, MiB))
    with refused(vg, exc_class, str(offset)):
        vol.discard(offset, length)


@pytest.mark.parametrize('may_unmap', [True, False])
@pytest.mark.parametrize('offset, length, exc_class', BAD_RANGES)
def test_bad_write_zeroes_are_refused(vg, vol, offset, length, exc_class,
                                      may_unmap):
    vol.write(0, data(1, MiB))
    with refused(vg, exc_class, str(offset)):
        vol.write_zeroes(offset, length, may_unmap=may_unmap)


@pytest.mark.parametrize('offset, length, exc_class', BAD_RANGES)
def test_bad_allocation_queries_are_refused(vg, vol, offset, length,
                                            exc_class):
    vol.write(0, data(1, CS))
    with refused(vg, exc_class, str(offset)):
        vol.allocation(offset, length)


def test_out_of_range_names_the_volume(vg, vol):
    with refused(vg, errors.OutOfRange, 'v', str(MiB)):
        vol.write(MiB, data(1, 512))


def test_io_to_a_snapshot_is_read_only(vg, vol):
    vol.write(0, data(1, 2 * CS))
    vg.create_snapshot('v', 'snap')
    snap = vg.open_volume('snap')
    assert snap.read_only
    assert snap.read(0, 2 * CS) == data(1, 2 * CS)
    with refused(vg, errors.ReadOnly, 'snap'):
        snap.write(0, data(2, 512))
    with refused(vg, errors.ReadOnly, 'snap'):
        snap.write(0, data(2, CS), fua=True)
    with refused(vg, errors.ReadOnly, 'snap'):
        snap.discard(0, 2 * CS)
    with refused(vg, errors.ReadOnly, 'snap'):
        snap.write_zeroes(0, CS, may_unmap=False)


# -- FUA ----------------------------------------------------------------------

def test_fua_write_reads_back_and_survives_reopen(vg, vol, reopen):
    # Durability without a flush is proven by a crash in test_journal.py.
    vol.write(CS, data(1, CS), fua=True)
    vol.write(CS + 512, data(2, 512), fua=True)
    expected = data(1, 512) + data(2, 512) + data(1, CS)[1024:]
    assert vol.read(CS, CS) == expected
    assert read(reopen(vg), 'v', CS, CS) == expected


# -- discard ------------------------------------------------------------------

def test_discard_of_whole_clusters_frees_them_and_reads_zeros(vg, vol):
    free = vg.capacity().free
    vol.write(0, data(1, 8 * CS))
    vol.flush()
    assert vg.capacity().free == free - 8 * CS
    vol.discard(2 * CS, 4 * CS)
    assert vol.read(0, 8 * CS) == \
        data(1, 2 * CS) + bytes(4 * CS) + data(1, 8 * CS)[6 * CS:]
    assert vg.get('v').allocated == 4 * CS
    assert vol.allocation(0, 8 * CS) == \
        extents((0, 2, DATA), (2, 4, HOLE), (6, 2, DATA))
    vol.flush()
    assert vg.capacity().free == free - 4 * CS
    assert vg.check().ok


def test_discard_survives_reopen(vg, vol, reopen):
    vol.write(0, data(1, 4 * CS))
    vol.discard(CS, 2 * CS)
    again = reopen(vg)
    assert read(again, 'v', 0, 4 * CS) == \
        data(1, CS) + bytes(2 * CS) + data(1, 4 * CS)[3 * CS:]
    assert again.get('v').allocated == 2 * CS


def test_partial_discard_zeroes_just_the_range(vg, vol):
    vol.write(0, data(1, 2 * CS))
    vol.discard(CS - 1024, 2048)
    expected = bytearray(data(1, 2 * CS))
    expected[CS - 1024:CS + 1024] = bytes(2048)
    assert vol.read(0, 2 * CS) == bytes(expected)
    # Partly discarded clusters keep their space.
    assert vg.get('v').allocated == 2 * CS
    assert vol.allocation(0, 2 * CS) == extents((0, 2, DATA))


def test_discard_of_never_written_space_changes_nothing(vg, vol):
    vol.write(0, data(1, CS))
    before = vg.capacity()
    vol.discard(4 * CS, 4 * CS)
    vol.discard(MiB - 1024, 1024)
    assert vg.capacity() == before
    assert vol.allocation() == extents((0, 1, DATA), (1, 15, HOLE))


def test_write_after_discard_reads_back(vg, vol):
    vol.write(0, data(1, 2 * CS))
    vol.discard(0, 2 * CS)
    vol.write(512, data(2, 512))
    assert vol.read(0, 2 * CS) == bytes(512) + data(2, 512) + \
        bytes(2 * CS - 1024)


def test_discard_on_a_thick_volume_zeroes_but_keeps_the_space(vg):
    vg.create_volume('thick', MiB, thin=False)
    handle = vg.open_volume('thick')
    handle.write(0, data(1, 4 * CS))
    before = vg.capacity()
    handle.discard(0, 4 * CS)
    handle.flush()
    assert handle.read(0, 4 * CS) == bytes(4 * CS)
    assert vg.capacity() == before
    assert vg.get('thick').allocated == MiB
    assert handle.allocation() == extents((0, 16, DATA))


def test_discard_on_a_clone_hides_the_parent_data(vg, vol):
    vol.write(0, data(1, 4 * CS))
    vg.create_snapshot('v', 'snap')
    vg.clone('snap', 'clone')
    clone = vg.open_volume('clone')
    clone.discard(CS, 2 * CS)
    assert clone.read(0, 4 * CS) == \
        data(1, CS) + bytes(2 * CS) + data(1, 4 * CS)[3 * CS:]
    assert clone.allocation(0, 4 * CS, own=True) == \
        extents((0, 1, HOLE), (1, 2, ZERO), (3, 1, HOLE))
    assert clone.allocation(0, 4 * CS) == \
        extents((0, 1, DATA), (1, 2, HOLE), (3, 1, DATA))
    # The snapshot and its volume are untouched; hiding costs no space.
    assert read(vg, 'snap', 0, 4 * CS) == data(1, 4 * CS)
    assert vol.read(0, 4 * CS) == data(1, 4 * CS)
    assert vg.get('clone').allocated == 0


def test_partial_discard_on_a_clone_copies_up_the_rest(vg, vol):
    vol.write(0, data(1, CS))
    vg.create_snapshot('v', 'snap')
    vg.clone('snap', 'clone')
    clone = vg.open_volume('clone')
    clone.discard(1024, 1024)
    expected = bytearray(data(1, CS))
    expected[1024:2048] = bytes(1024)
    assert clone.read(0, CS) == bytes(expected)
    assert read(vg, 'snap', 0, CS) == data(1, CS)
    assert clone.allocation(0, CS, own=True) == extents((0, 1, DATA))


def test_discard_on_a_volume_with_a_snapshot_keeps_the_snapshot(vg, vol):
    vol.write(0, data(1, 4 * CS))
    vg.create_snapshot('v', 'snap')
    vol.discard(0, 4 * CS)
    assert vol.read(0, 4 * CS) == bytes(4 * CS)
    assert read(vg, 'snap', 0, 4 * CS) == data(1, 4 * CS)
    assert vg.check().ok


# -- write_zeroes -------------------------------------------------------------

def test_write_zeroes_without_unmap_keeps_clusters_allocated(vg, vol):
    vol.write(0, data(1, 4 * CS))
    vol.flush()
    before = vg.capacity()
    vol.write_zeroes(0, 4 * CS, may_unmap=False)
    vol.flush()
    assert vol.read(0, 4 * CS) == bytes(4 * CS)
    assert vg.get('v').allocated == 4 * CS
    assert vol.allocation(0, 4 * CS) == extents((0, 4, DATA))
    assert vg.capacity() == before


def test_write_zeroes_without_unmap_allocates_unwritten_space(vg, vol):
    vol.write_zeroes(2 * CS, 3 * CS, may_unmap=False)
    assert vol.read(0, MiB) == bytes(MiB)
    assert vg.get('v').allocated == 3 * CS
    assert vol.allocation() == \
        extents((0, 2, HOLE), (2, 3, DATA), (5, 11, HOLE))


def test_write_zeroes_with_unmap_frees_whole_clusters(vg, vol):
    vol.write(0, data(1, 4 * CS))
    vol.write_zeroes(0, 3 * CS + 512, may_unmap=True)
    expected = bytes(3 * CS + 512) + data(1, 4 * CS)[3 * CS + 512:]
    assert vol.read(0, 4 * CS) == expected
    assert vg.get('v').allocated == CS
    assert vol.allocation(0, 4 * CS) == extents((0, 3, HOLE), (3, 1, DATA))


def test_write_zeroes_without_unmap_on_a_clone_owns_zero_clusters(vg, vol):
    vol.write(0, data(1, 2 * CS))
    vg.create_snapshot('v', 'snap')
    vg.clone('snap', 'clone')
    clone = vg.open_volume('clone')
    clone.write_zeroes(0, CS, may_unmap=False)
    assert clone.read(0, 2 * CS) == bytes(CS) + data(1, 2 * CS)[CS:]
    assert clone.allocation(0, 2 * CS, own=True) == \
        extents((0, 1, DATA), (1, 1, HOLE))
    assert read(vg, 'snap', 0, 2 * CS) == data(1, 2 * CS)


# -- allocation ---------------------------------------------------------------

def test_allocation_matches_what_was_written(vol):
    assert vol.allocation() == extents((0, 16, HOLE))
    vol.write(2 * CS + 512, data(1, 512))
    vol.write(5 * CS, data(2, 2 * CS))
    vol.write(15 * CS, data(3, 512))
    assert vol.allocation() == extents(
        (0, 2, HOLE), (2, 1, DATA), (3, 2, HOLE), (5, 2, DATA),
        (7, 8, HOLE), (15, 1, DATA))
    assert vol.allocation(own=True) == vol.allocation()


def test_allocation_of_a_sub_range_starts_and_ends_where_asked(vol):
    vol.write(2 * CS, data(1, CS))
    assert vol.allocation(CS + 512, 2 * CS) == [
        info.Extent(CS + 512, CS - 512, HOLE),
        info.Extent(2 * CS, CS, DATA),
        info.Extent(3 * CS, 512, HOLE)]
    assert vol.allocation(2 * CS + 1024) == [
        info.Extent(2 * CS + 1024, CS - 1024, DATA),
        info.Extent(3 * CS, MiB - 3 * CS, HOLE)]
    assert vol.allocation(0, 0) == []


def test_allocation_of_an_unaligned_size_ends_at_the_size(vg):
    vg.create_volume('odd', 2 * CS + 1536)
    handle = vg.open_volume('odd')
    handle.write(2 * CS, data(1, 512))
    assert handle.allocation() == [info.Extent(0, 2 * CS, HOLE),
                                   info.Extent(2 * CS, 1536, DATA)]


def test_allocation_of_a_thick_volume_is_all_data(vg):
    vg.create_volume('thick', MiB + 512, thin=False)
    assert vg.open_volume('thick').allocation() == \
        [info.Extent(0, MiB + 512, DATA)]


def test_allocation_own_separates_inherited_and_own_data(vg, vol):
    vol.write(0, data(1, 4 * CS))
    vg.create_snapshot('v', 'snap')
    vol.write(2 * CS, data(2, CS))
    vol.write(8 * CS, data(3, CS))
    assert vol.allocation() == \
        extents((0, 4, DATA), (4, 4, HOLE), (8, 1, DATA), (9, 7, HOLE))
    assert vol.allocation(own=True) == \
        extents((0, 2, HOLE), (2, 1, DATA), (3, 5, HOLE), (8, 1, DATA),
                (9, 7, HOLE))
    snap = vg.open_volume('snap')
    assert snap.allocation() == extents((0, 4, DATA), (4, 12, HOLE))
    assert snap.allocation(own=True) == snap.allocation()


def test_allocation_after_reopen(vg, vol, reopen):
    vol.write(3 * CS, data(1, 2 * CS))
    vol.write_zeroes(10 * CS, CS, may_unmap=False)
    again = reopen(vg)
    assert again.open_volume('v').allocation() == \
        extents((0, 3, HOLE), (3, 2, DATA), (5, 5, HOLE), (10, 1, DATA),
                (11, 5, HOLE))


def test_reads_through_a_handle_opened_before_a_reopen_are_refused(pv0):
    vg = create_group(pv0)
    vg.create_volume('v', MiB)
    handle = vg.open_volume('v')
    vg.close()
    with VolumeGroup.open(pv0):
        with raises_exactly(errors.GroupClosed, 'vg0'):
            handle.read(0, 512)
