"""Cloning a volume as it is now (Cinder's create_cloned_volume).

The clone reads exactly what the source held when it was made; from then
on each side's writes stay its own. Nothing is copied: the source's
clusters become a hidden snapshot shared by both, which is merged away
when either goes, so deleting one side gives back everything only it
held and leaves no trace of the snapshot.
"""

import dataclasses
import os
import shutil
import threading
import uuid

import pytest

from storage_engine import errors
from storage_engine.volstore import journal
from storage_engine.volstore import layout
from storage_engine.volstore import VolumeGroup
from tests.crash import abandon
from tests.unit.volstore.conftest import create_group
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import hidden
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import observe
from tests.unit.volstore.conftest import raises_exactly
from tests.unit.volstore.conftest import read
from tests.unit.volstore.conftest import refused
from tests.unit.volstore.conftest import SECTOR
from tests.unit.volstore.conftest import write

SIZE = MiB          # 16 clusters
BASE = data(1, 4 * CS)


@pytest.fixture
def vol(vg):
    """Volume 'v' holding BASE in its first four clusters."""
    vg.create_volume('v', SIZE)
    write(vg, 'v', 0, BASE)
    return vg.open_volume('v')


@pytest.fixture
def small(tmp_path):
    """A 16 MiB group: 240 clusters of 64 KiB."""
    group = create_group(tmp_path / 'small', size=16 * MiB)
    yield group
    group.close()


def image(*parts, size=SIZE):
    """Expected content: ``(offset, bytes)`` parts over zeros."""
    out = bytearray(size)
    for offset, payload in parts:
        out[offset:offset + len(payload)] = payload
    return bytes(out)


def changed(before, after) -> dict:
    """``{field: after - before}`` of the capacity fields that moved."""
    out = {}
    for field in dataclasses.fields(before):
        old = getattr(before, field.name)
        new = getattr(after, field.name)
        if old != new:
            out[field.name] = new - old
    return out


# -- what the clone reads -----------------------------------------------------

def test_clone_reads_the_source_as_it_is_then_both_diverge(vg, vol):
    vol.write(6 * CS, data(2, 512))      # acknowledged, not flushed
    before = read(vg, 'v')
    info = vg.clone_volume('v', 'c')
    assert (info.kind, info.name, info.size, info.thin, info.read_only) == \
        ('volume', 'c', SIZE, True, False)
    # Nothing was copied, and the shared snapshot is nobody's to see.
    assert info.allocated == 0
    assert (info.parent_id, info.origin_id) == (None, None)
    assert vg.snapshots() == []
    assert vg.capacity().snapshots == 0
    assert [v.name for v in vg.volumes()] == ['c', 'v']
    assert read(vg, 'c') == before
    clone = vg.open_volume('c')
    clone.write(CS, data(3, CS))
    vol.write(2 * CS, data(4, CS))
    assert read(vg, 'c') == image((0, BASE), (6 * CS, data(2, 512)),
                                  (CS, data(3, CS)))
    assert read(vg, 'v') == image((0, BASE), (6 * CS, data(2, 512)),
                                  (2 * CS, data(4, CS)))
    assert hidden(vg) == 1


def test_clone_with_a_given_id(vg, vol):
    ident = str(uuid.uuid4())
    info = vg.clone_volume(vol.id, 'c', volume_id=ident.upper())
    assert info.id == ident
    assert vg.get(ident).name == 'c'
    assert read(vg, ident) == read(vg, 'v')


def test_clone_bigger_than_the_source_reads_zeros_beyond(vg, vol, reopen):
    vol.write(SIZE - 512, data(2, 512))
    for thin in (True, False):
        name = 'c-%s' % ('thin' if thin else 'thick')
        info = vg.clone_volume('v', name, size=2 * SIZE + 512, thin=thin)
        assert (info.size, info.thin) == (2 * SIZE + 512, thin)
        assert read(vg, name) == image((0, BASE),
                                       (SIZE - 512, data(2, 512)),
                                       size=2 * SIZE + 512)
        write(vg, name, 2 * SIZE, data(3, 512))
    # The source reads nothing of what the clones wrote past its end.
    vg.extend('v', 2 * SIZE + 512)
    assert read(vg, 'v', SIZE) == bytes(SIZE + 512)
    want = image((0, BASE), (SIZE - 512, data(2, 512)),
                 (2 * SIZE, data(3, 512)), size=2 * SIZE + 512)
    again = reopen(vg)
    for name in ('c-thin', 'c-thick'):
        assert read(again, name) == want
    assert hidden(again) == 2


def test_thick_clone_owns_its_tail_and_reserves_the_rest(vg, vol):
    before = vg.capacity()
    info = vg.clone_volume('v', 'c', size=SIZE + 4 * CS, thin=False)
    assert not info.thin
    assert info.allocated == 4 * CS
    assert changed(before, vg.capacity()) == {
        'free': -4 * CS, 'allocated': 4 * CS, 'thick_reserved': SIZE,
        'available_thin': -(SIZE + 4 * CS), 'provisioned': SIZE + 4 * CS,
        'volumes': 1}
    # Writes to the shared part draw on the reservation.
    written = vg.capacity()
    write(vg, 'c', 0, data(2, CS))
    assert changed(written, vg.capacity()) == {
        'free': -CS, 'allocated': CS, 'thick_reserved': -CS}
    assert hidden(vg) == 1


def test_clone_of_a_thick_volume_reserves_its_rewrite(vg):
    vg.create_volume('t', SIZE, thin=False)
    write(vg, 't', 0, data(1, SIZE))
    before = vg.capacity()
    vg.clone_volume('t', 'c')
    # The source's clusters are shared now: it reserves its size again,
    # as after a snapshot; the thin clone only provisions.
    assert changed(before, vg.capacity()) == {
        'thick_reserved': SIZE, 'available_thin': -SIZE,
        'provisioned': SIZE, 'volumes': 1}
    write(vg, 't', 0, data(2, CS))
    assert read(vg, 'c') == data(1, SIZE)
    assert read(vg, 't', 0, 2 * CS) == data(2, CS) + data(1, SIZE)[CS:2 * CS]
    # Deleting the clone hands the clusters back to the source.
    vg.delete_volume('c')
    assert vg.capacity() == before
    assert vg.get('t').allocated == SIZE
    assert hidden(vg) == 0


# -- deleting either side -----------------------------------------------------

@pytest.mark.parametrize('thin', [True, False], ids=['thin', 'thick'])
def test_deleting_the_clone_keeps_the_source_and_frees_its_space(vg, thin):
    empty = vg.capacity()
    vg.create_volume('v', SIZE, thin=thin)
    write(vg, 'v', 0, BASE)
    before = vg.capacity()
    vg.clone_volume('v', 'c', thin=thin)
    write(vg, 'v', 0, data(2, CS))
    write(vg, 'c', CS, data(3, CS))
    write(vg, 'c', 9 * CS, data(4, CS))
    want = image((0, BASE), (0, data(2, CS)))
    vg.delete_volume('c')
    assert read(vg, 'v') == want
    assert hidden(vg) == 0
    # Only the source's clusters are left: what the clone held and what
    # the source no longer reads are free again.
    assert vg.capacity() == before
    assert vg.get('v').allocated == (4 if thin else 16) * CS
    vg.delete_volume('v')
    assert vg.capacity() == empty


@pytest.mark.parametrize('thin', [True, False], ids=['thin', 'thick'])
def test_deleting_the_source_keeps_the_clone(vg, thin, reopen):
    empty = vg.capacity()
    vg.create_volume('v', SIZE, thin=thin)
    write(vg, 'v', 0, BASE)
    vg.clone_volume('v', 'c', thin=thin)
    write(vg, 'v', 0, data(2, 4 * CS))
    write(vg, 'c', CS, data(3, CS))
    want = image((0, BASE), (CS, data(3, CS)))
    vg.delete_volume('v')
    assert read(vg, 'c') == want
    assert hidden(vg) == 0
    assert [v.name for v in vg.volumes()] == ['c']
    cap = vg.capacity()
    assert (cap.provisioned, cap.volumes) == (SIZE, 1)
    assert vg.get('c').allocated == (4 if thin else 16) * CS
    assert cap.allocated - empty.allocated == vg.get('c').allocated
    again = reopen(vg)
    assert read(again, 'c') == want
    again.delete_volume('c')
    assert again.capacity() == empty
    assert hidden(again) == 0


def test_the_name_and_id_of_a_deleted_side_are_free_again(vg, vol):
    info = vg.clone_volume('v', 'c')
    vg.delete_volume('c')
    again = vg.clone_volume('v', 'c', volume_id=info.id)
    assert again.id == info.id
    assert read(vg, 'c') == read(vg, 'v')
    vg.delete_volume('v')
    vg.create_volume('v', SIZE)
    assert read(vg, 'v') == bytes(SIZE)
    assert read(vg, 'c') == image((0, BASE))
    assert hidden(vg) == 0


def test_flattening_either_side_merges_the_shared_snapshot(vg, vol):
    vg.clone_volume('v', 'c')
    vg.clone_volume('v', 'd')
    write(vg, 'c', 0, data(2, CS))
    assert hidden(vg) == 2
    vg.flatten('c')
    assert vg.get('c').allocated == 4 * CS
    vg.flatten('v')
    assert hidden(vg) == 0
    assert read(vg, 'c') == image((0, BASE), (0, data(2, CS)))
    assert read(vg, 'v') == read(vg, 'd') == image((0, BASE))
    assert vg.get('d').allocated == 4 * CS


def test_revert_of_the_source_keeps_the_clone(vg, vol, reopen):
    vg.create_snapshot('v', 's')
    vol.write(0, data(2, CS))
    vg.clone_volume('v', 'c')
    vol.write(CS, data(3, CS))
    vg.revert('v', 's')
    assert read(vg, 'v') == image((0, BASE))
    assert read(vg, 'c') == image((0, BASE), (0, data(2, CS)))
    assert hidden(vg) == 0
    again = reopen(vg)
    assert read(again, 'c') == image((0, BASE), (0, data(2, CS)))
    assert hidden(again) == 0


# -- chains -------------------------------------------------------------------

def test_clones_of_clones(vg, vol, reopen):
    vg.clone_volume('v', 'c1')
    write(vg, 'c1', CS, data(2, CS))
    vg.clone_volume('c1', 'c2', size=2 * SIZE)
    write(vg, 'c2', 2 * CS, data(3, CS))
    vg.clone_volume('c2', 'c3')
    write(vg, 'c1', 0, data(4, CS))
    write(vg, 'c3', 20 * CS, data(5, CS))
    want = {
        'v': image((0, BASE)),
        'c1': image((0, BASE), (CS, data(2, CS)), (0, data(4, CS))),
        'c2': image((0, BASE), (CS, data(2, CS)), (2 * CS, data(3, CS)),
                    size=2 * SIZE),
        'c3': image((0, BASE), (CS, data(2, CS)), (2 * CS, data(3, CS)),
                    (20 * CS, data(5, CS)), size=2 * SIZE),
    }
    assert {n: read(vg, n) for n in want} == want
    assert hidden(vg) == 3
    again = reopen(vg)
    assert {n: read(again, n) for n in want} == want
    for name in ('c2', 'v', 'c3', 'c1'):
        again.delete_volume(name)
        del want[name]
        assert {n: read(again, n) for n in want} == want
        hidden(again)
    assert again.volumes() == []
    assert hidden(again) == 0
    # Only the checkpoint is left.
    assert again.capacity().allocated == CS


def test_snapshots_of_a_clone(vg, vol, reopen):
    vg.clone_volume('v', 'c')
    write(vg, 'c', 5 * CS, data(2, CS))
    t = vg.create_snapshot('c', 't')
    assert t.origin_id == vg.get('c').id
    write(vg, 'c', 0, data(3, CS))
    write(vg, 'v', 5 * CS, data(4, CS))
    assert read(vg, 't') == image((0, BASE), (5 * CS, data(2, CS)))
    assert read(vg, 'c') == image((0, BASE), (5 * CS, data(2, CS)),
                                  (0, data(3, CS)))
    assert read(vg, 'v') == image((0, BASE), (5 * CS, data(4, CS)))
    # A clone made from the clone's snapshot, and the clone's revert.
    vg.clone('t', 'tc')
    vg.revert('c', 't')
    assert read(vg, 'c') == read(vg, 'tc') == read(vg, 't')
    vg.delete_volume('v')
    again = reopen(vg)
    assert read(again, 't') == image((0, BASE), (5 * CS, data(2, CS)))
    # Deleting t while its clone tc reads through it keeps it, hidden.
    again.delete_snapshot('t')
    assert read(again, 'tc') == read(again, 'c') == \
        image((0, BASE), (5 * CS, data(2, CS)))
    assert hidden(again) >= 1
    again.delete_volume('tc')
    assert read(again, 'c') == image((0, BASE), (5 * CS, data(2, CS)))
    assert hidden(again) == 0


def test_clone_of_a_volume_with_snapshots(vg, vol, reopen):
    vg.create_snapshot('v', 's1')
    vol.write(CS, data(2, CS))
    vg.create_snapshot('v', 's2')
    vol.write(2 * CS, data(3, CS))
    s1, s2 = read(vg, 's1'), read(vg, 's2')
    now = read(vg, 'v')
    info = vg.clone_volume('v', 'c')
    assert read(vg, 'c') == now
    # The clone reads through the source's latest snapshot.
    assert info.parent_id == vg.get('s2').id
    assert [s.name for s in vg.snapshots()] == ['s1', 's2']
    assert [s.name for s in vg.snapshots('v')] == ['s1', 's2']
    vol.write(0, data(4, CS))
    # The source's snapshots stay deletable (the clone is not theirs) and
    # deleting them changes nothing anybody reads.
    vg.delete_snapshot('s1')
    assert read(vg, 's2') == s2
    assert read(vg, 'c') == now
    again = reopen(vg)
    assert read(again, 's2') == s2 != s1
    again.delete_snapshot('s2')
    assert read(again, 'c') == now
    assert read(again, 'v') == data(4, CS) + now[CS:]
    assert hidden(again) == 1
    again.delete_volume('c')
    assert hidden(again) == 0
    assert again.get('v').allocated == 4 * CS


def test_a_volume_named_like_the_hidden_snapshot_is_untouched(vg, vol):
    ident = str(uuid.uuid4())
    vg.create_volume('clone-source-' + ident, SIZE)
    vg.clone_volume('v', 'c', volume_id=ident)
    assert vg.get('clone-source-' + ident).kind == 'volume'
    vg.delete_volume('v')
    vg.delete_volume('clone-source-' + ident)
    assert [v.name for v in vg.volumes()] == ['c']
    assert hidden(vg) == 0


# -- refusals change nothing --------------------------------------------------

def test_clone_of_an_unknown_volume_or_a_snapshot(vg, vol):
    vg.create_snapshot('v', 's')
    with refused(vg, errors.VolumeNotFound, 'nope'):
        vg.clone_volume('nope', 'c')
    with refused(vg, errors.VolumeNotFound, 'volume'):
        vg.clone_volume(str(uuid.uuid4()), 'c')
    with refused(vg, errors.WrongKind, 's', 'snapshot'):
        vg.clone_volume('s', 'c')
    with refused(vg, errors.InvalidArgument):
        vg.clone_volume(None, 'c')


def test_clone_refuses_a_used_or_bad_name_or_id(vg, vol):
    vg.create_snapshot('v', 's')
    with refused(vg, errors.AlreadyExists, 'v'):
        vg.clone_volume('v', 'v')
    with refused(vg, errors.AlreadyExists, 's'):
        vg.clone_volume('v', 's')
    with refused(vg, errors.InvalidName, "'a b'"):
        vg.clone_volume('v', 'a b')
    with refused(vg, errors.InvalidName):
        vg.clone_volume('v', str(uuid.uuid4()))
    for taken in (vg.get('v').id, vg.get('s').id):
        with refused(vg, errors.AlreadyExists, taken):
            vg.clone_volume('v', 'c', volume_id=taken)
    with refused(vg, errors.InvalidArgument):
        vg.clone_volume('v', 'c', volume_id='not-a-uuid')


@pytest.mark.parametrize('size', [SIZE - SECTOR, SIZE + 1000, 0, -SIZE,
                                  float(2 * SIZE), True, '2M', 2 ** 61])
def test_clone_refuses_a_bad_size(vg, vol, size):
    with refused(vg, errors.InvalidSize):
        vg.clone_volume('v', 'c', size=size)


def test_clone_below_the_source_size_names_it(vg, vol):
    vg.extend('v', 2 * SIZE)
    with refused(vg, errors.InvalidSize, 'v', str(2 * SIZE)):
        vg.clone_volume('v', 'c', size=SIZE)


def test_thick_clone_beyond_free_space_is_refused(small):
    small.create_volume('v', 16 * MiB)
    with refused(small, errors.NoSpace, 'clone c', 'v'):
        small.clone_volume('v', 'c', thin=False)


def test_a_thick_source_and_a_thick_clone_must_fit_together(small):
    avail = small.capacity().available_thin // CS
    # The source's new reservation and the clone's each fit in what is
    # left, both together do not.
    ncl = avail // 3 + 1
    small.create_volume('t', ncl * CS, thin=False)
    left = small.capacity().available_thin // CS
    assert left == avail - ncl and ncl <= left < 2 * ncl
    with refused(small, errors.NoSpace, 'clone c', 'thick volume t'):
        small.clone_volume('t', 'c', thin=False)
    # A thin clone needs only the source's reservation.
    small.clone_volume('t', 'c')
    assert small.capacity().available_thin // CS == left - ncl
    assert small.check().ok


def test_a_thick_source_needs_room_for_its_rewrite(small):
    avail = small.capacity().available_thin // CS
    small.create_volume('t', (avail - 4) * CS, thin=False)
    with refused(small, errors.NoSpace, 'clone c', 'thick volume t'):
        small.clone_volume('t', 'c')


def test_clone_beyond_the_over_subscription_limit_is_refused(small):
    small.set_policy(over_subscription_ratio=1.0)
    total = small.capacity().total
    small.create_volume('v', total - 4 * CS)
    with refused(small, errors.NoSpace, 'clone c', 'over-subscription'):
        small.clone_volume('v', 'c')


def test_clone_in_a_read_only_or_closed_group(pv0, vol, vg):
    vg.close()
    with raises_exactly(errors.GroupClosed):
        vg.clone_volume('v', 'c')
    with VolumeGroup.open(pv0, read_only=True) as ro:
        with refused(ro, errors.ReadOnly):
            ro.clone_volume('v', 'c')


# -- durability ---------------------------------------------------------------

def test_a_clone_survives_a_crash(pv0, vg, vol):
    vol.write(CS, data(2, CS))         # not flushed: the clone commits it
    vg.clone_volume('v', 'c', size=2 * SIZE, thin=False)
    write(vg, 'c', 0, data(3, CS))
    write(vg, 'v', 3 * CS, data(4, CS))
    vg.flush()
    expected = observe(vg)
    abandon(vg)
    with VolumeGroup.open(pv0) as again:
        assert again.replayed > 0 and again.recovered
        assert observe(again) == expected
        assert read(again, 'c') == image((0, BASE), (CS, data(2, CS)),
                                         (0, data(3, CS)), size=2 * SIZE)
        assert read(again, 'v') == image((0, BASE), (CS, data(2, CS)),
                                         (3 * CS, data(4, CS)))
        assert hidden(again) == 1
        again.delete_volume('v')
        assert hidden(again) == 0
        assert read(again, 'c') == image((0, BASE), (CS, data(2, CS)),
                                         (0, data(3, CS)), size=2 * SIZE)


def test_a_clone_is_durable_when_the_call_returns(pv0, vg, vol):
    vg.flush()
    vg.clone_volume('v', 'c')
    abandon(vg)
    with VolumeGroup.open(pv0) as again:
        assert [v.name for v in again.volumes()] == ['c', 'v']
        assert read(again, 'c') == image((0, BASE))
        assert again.snapshots() == []


def test_a_clone_survives_close_and_reopen(vg, vol, reopen):
    vg.create_snapshot('v', 's')
    vg.clone_volume('v', 'c')
    write(vg, 'c', 0, data(2, CS))
    expected = observe(vg)
    again = reopen(vg)
    assert again.replayed == 0
    assert observe(again) == expected
    # The checkpoint kept the hidden snapshot and its two children.
    assert hidden(again) == 1
    again.delete_volume('c')
    again.delete_snapshot('s')
    assert read(again, 'v') == image((0, BASE))
    assert again.get('v').allocated == 4 * CS
    assert hidden(again) == 0


def test_a_torn_clone_commit_is_all_or_nothing(pv0, vg, vol, tmp_path):
    """A power loss may keep any prefix of a commit's sectors.

    Unflushed writes go out in the clone's commit, in front of it; cut
    the commit at every sector: the group has the clone or not, and never
    a leftover of the snapshot it is made from.
    """
    name = 'a-clone-whose-record-crosses-a-sector-' + 'x' * 80
    vg.flush()
    head = vg.journal.head_pos
    for lcl in range(4, 16):
        write(vg, 'v', lcl * CS, data(lcl, SECTOR))
    vg.clone_volume('v', name)
    end = vg.journal.head_pos
    abandon(vg)
    with open(pv0, 'rb') as f:
        f.seek(layout.JOURNAL_OFFSET + head)
        commit = f.read(end - head)
    # What the clone wrote to the journal (after the mapping record of the
    # writes, up to the commit's padding) crosses a sector boundary, so
    # some cut falls inside the operation.
    start = commit.find(b'{"created":') - journal.HEADER_SIZE
    stop = len(commit.rstrip(b'\0'))
    assert 0 < start and start // SECTOR < (stop - 1) // SECTOR
    seen = set()
    for cut in range(0, end - head + 1, SECTOR):
        copy = str(tmp_path / ('torn-%d' % cut))
        shutil.copyfile(pv0, copy)
        with open(copy, 'r+b') as f:
            f.seek(layout.JOURNAL_OFFSET + head + cut)
            f.write(bytes(end - head - cut))
        with VolumeGroup.open(copy) as torn:
            names = sorted(v.name for v in torn.volumes())
            assert names in (['v'], [name, 'v']), names
            assert torn.snapshots() == []
            assert hidden(torn) == len(names) - 1
            if len(names) == 2:
                assert read(torn, name) == read(torn, 'v')
            seen.add(len(names))
        os.unlink(copy)
    assert seen == {1, 2}


# -- concurrency --------------------------------------------------------------

def _blocked_until_left(vg, busy, call):
    """Run ``call`` while I/O on ``busy`` is in flight: it must wait."""
    gate = vg.gate(vg.state.by_name[busy])
    gate.enter()
    done = threading.Event()
    failure = []

    def run():
        try:
            call()
        except BaseException as e:       # reported in the test thread
            failure.append(e)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert not done.wait(0.2), 'did not wait for I/O on %s' % busy
    finally:
        gate.leave()
    thread.join(10)
    assert done.is_set() and not failure, failure


@pytest.mark.parametrize('op', ['delete-clone', 'delete-source',
                                'flatten-clone', 'revert-source',
                                'delete-snapshot'])
def test_merging_the_shared_snapshot_waits_for_io(vg, vol, op):
    """The hidden snapshot merges into the surviving side's map: I/O in
    flight on that side must have left first (a write could otherwise
    land in a cluster the merge frees).
    """
    vg.create_snapshot('v', 's')
    vol.write(0, data(2, CS))
    vg.clone_volume('v', 'c')
    want_v, want_c = read(vg, 'v'), read(vg, 'c')
    if op == 'delete-snapshot':
        # The hidden snapshot's children: 's2' and 'c'; once the source
        # and then 's2' go, it merges into 'c'.
        vg.create_snapshot('v', 's2')
        vg.delete_volume('v')
    busy, call = {
        'delete-clone': ('v', lambda: vg.delete_volume('c')),
        'delete-source': ('c', lambda: vg.delete_volume('v')),
        'flatten-clone': ('v', lambda: vg.flatten('c')),
        'revert-source': ('c', lambda: vg.revert('v', 's')),
        'delete-snapshot': ('c', lambda: vg.delete_snapshot('s2')),
    }[op]
    _blocked_until_left(vg, busy, call)
    assert read(vg, busy) == (want_v if busy == 'v' else want_c)
    assert hidden(vg) == 0


def test_a_merge_target_that_appears_while_waiting_is_waited_for(vg, vol):
    """The volumes to wait for are named again once the gates are closed.

    Deleting 'c' first has nothing to wait for but 'c' itself (its
    sibling under the shared snapshot is the snapshot 's'); while it
    waits, deleting 's' makes 'v' that sibling, so the delete must then
    wait for I/O on 'v' too.
    """
    vg.clone_volume('v', 'c')
    vg.create_snapshot('v', 's')
    want = read(vg, 'v')
    c_gate = vg.gate(vg.state.by_name['c'])
    v_gate = vg.gate(vg.state.by_name['v'])
    held = [c_gate]
    c_gate.enter()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (vg.delete_volume('c'),
                                              done.set()))
    thread.start()
    try:
        assert not done.wait(0.2)
        vg.delete_snapshot('s')
        v_gate.enter()
        held.append(v_gate)
        held.pop(0).leave()
        assert not done.wait(0.2), 'did not wait for I/O on v'
    finally:
        for gate in held:
            gate.leave()
    thread.join(10)
    assert done.is_set()
    assert [v.name for v in vg.volumes()] == ['v']
    assert read(vg, 'v') == want
    assert hidden(vg) == 0
