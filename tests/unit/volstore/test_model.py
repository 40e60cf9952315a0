"""Random operation sequences against a model of what every volume holds.

The model is the plainest possible statement of the promises: a volume is
a bytearray, a snapshot a frozen copy, a clone a copy of its snapshot (or
of its volume). Hypothesis drives create / write / discard / write-zeroes /
snapshot / clone / clone-volume / revert / flatten / extend / delete /
flush / reopen / crash-reopen,
and after every step every volume and snapshot is read whole and compared,
the allocation map is checked to cover every non-zero byte, and the
consistency check must pass.

Tiny clusters (4 KiB) and sizes in 512-byte sectors put partial clusters,
copy-on-write and merges everywhere.
"""

import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis.stateful import Bundle
from hypothesis.stateful import consumes
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import rule
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis import strategies as st

from storage_engine import errors
from storage_engine.volstore import VolumeGroup
from tests.crash import abandon

CS = 4096
SECTOR = 512
MAX_SECTORS = 9 * CS // SECTOR      # volumes up to 9 clusters


class _Vol:
    def __init__(self, size, thin, clone_of=None):
        self.data = bytearray(size)
        self.thin = thin
        self.chain = set()           # snapshot names it reads through
        self.clone_of = clone_of     # the snapshot it was cloned from


class _Snap:
    def __init__(self, data, origin, chain):
        self.data = bytes(data)
        self.origin = origin
        self.chain = chain


class VolumeStoreModel(RuleBasedStateMachine):
    volumes = Bundle('volumes')
    snapshots = Bundle('snapshots')

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix='se-model-')
        self.pv0 = os.path.join(self.dir, 'pv0')
        self.vg = None
        self.vols = {}
        self.snaps = {}
        self.counter = 0

    @initialize()
    def create_group(self):
        self.vg = VolumeGroup.create([(self.pv0, 24 << 20)],
                                     cluster_size=CS,
                                     journal_size=64 << 10)

    def teardown(self):
        if self.vg is not None:
            try:
                self.vg.close()
            except errors.EngineError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def _name(self, prefix):
        self.counter += 1
        return '%s%d' % (prefix, self.counter)

    # -- volumes --------------------------------------------------------------

    @rule(target=volumes, sectors=st.integers(1, MAX_SECTORS),
          thin=st.booleans())
    def create(self, sectors, thin):
        name = self._name('v')
        self.vg.create_volume(name, sectors * SECTOR, thin=thin)
        self.vols[name] = _Vol(sectors * SECTOR, thin)
        return name

    @rule(name=volumes, data=st.data())
    def write(self, name, data):
        if name not in self.vols:
            return
        vol = self.vols[name]
        off, length = self._range(data, len(vol.data))
        byte = data.draw(st.integers(1, 255), label='byte')
        payload = bytes([byte]) * length
        fua = data.draw(st.booleans(), label='fua')
        self.vg.open_volume(name).write(off, payload, fua=fua)
        vol.data[off:off + length] = payload

    @rule(name=volumes, data=st.data())
    def zero(self, name, data):
        if name not in self.vols:
            return
        vol = self.vols[name]
        off, length = self._range(data, len(vol.data))
        h = self.vg.open_volume(name)
        how = data.draw(st.sampled_from(['discard', 'unmap', 'no_hole']),
                        label='how')
        if how == 'discard':
            h.discard(off, length)
        else:
            h.write_zeroes(off, length, may_unmap=(how == 'unmap'))
        vol.data[off:off + length] = bytes(length)

    @staticmethod
    def _range(data, size):
        sectors = size // SECTOR
        first = data.draw(st.integers(0, sectors - 1), label='first')
        count = data.draw(st.integers(1, sectors - first), label='count')
        return first * SECTOR, count * SECTOR

    @rule(name=volumes, more=st.integers(0, 2 * CS // SECTOR))
    def extend(self, name, more):
        if name not in self.vols:
            return
        vol = self.vols[name]
        new = len(vol.data) + more * SECTOR
        self.vg.extend(name, new)
        vol.data.extend(bytes(new - len(vol.data)))

    @rule(name=consumes(volumes))
    def delete_volume(self, name):
        if name not in self.vols:
            return
        self.vg.delete_volume(name)
        del self.vols[name]

    @rule(name=volumes)
    def flatten(self, name):
        if name not in self.vols:
            return
        self.vg.flatten(name)
        self.vols[name].chain = set()

    # -- snapshots and clones -------------------------------------------------

    @rule(target=snapshots, name=volumes)
    def snapshot(self, name):
        if name not in self.vols:
            return None
        vol = self.vols[name]
        snap = self._name('s')
        self.vg.create_snapshot(name, snap)
        self.snaps[snap] = _Snap(vol.data, name, set(vol.chain))
        vol.chain.add(snap)
        return snap

    @rule(target=volumes, snap=snapshots, more=st.integers(0, 8),
          thin=st.booleans())
    def clone(self, snap, more, thin):
        if snap not in self.snaps:
            return None
        s = self.snaps[snap]
        name = self._name('c')
        size = len(s.data) + more * SECTOR
        self.vg.clone(snap, name, size=size, thin=thin)
        vol = _Vol(size, thin, clone_of=snap)
        vol.data[:len(s.data)] = s.data
        vol.chain = s.chain | {snap}
        self.vols[name] = vol
        return name

    @rule(target=volumes, name=volumes, more=st.integers(0, 8),
          thin=st.booleans())
    def clone_volume(self, name, more, thin):
        if name not in self.vols:
            return None
        src = self.vols[name]
        clone = self._name('k')
        size = len(src.data) + more * SECTOR
        self.vg.clone_volume(name, clone, size=size, thin=thin)
        vol = _Vol(size, thin)
        vol.data[:len(src.data)] = src.data
        # It reads through what the source reads through, but is nobody's
        # clone: the snapshot it shares with the source is hidden.
        vol.chain = set(src.chain)
        self.vols[clone] = vol
        return clone

    @rule(snap=snapshots)
    def revert(self, snap):
        s = self.snaps.get(snap)
        if s is None or s.origin not in self.vols:
            return
        self.vg.revert(s.origin, snap)
        vol = self.vols[s.origin]
        vol.data = bytearray(s.data)
        vol.chain = s.chain | {snap}

    @rule(snap=snapshots)
    def delete_snapshot(self, snap):
        s = self.snaps.get(snap)
        if s is None:
            return
        # Always deleted: clones made from it keep reading what it held
        # (the group keeps it, hidden, while they do), and everything else
        # reads as before (_contents is compared after every rule).
        self.vg.delete_snapshot(snap)
        del self.snaps[snap]
        for holder in list(self.vols.values()) + list(self.snaps.values()):
            holder.chain.discard(snap)

    # -- durability -----------------------------------------------------------

    @rule()
    def flush(self):
        self.vg.flush()

    @rule()
    def reopen(self):
        self.vg.close()
        self.vg = VolumeGroup.open(self.pv0)
        assert self.vg.replayed == 0

    @rule()
    def crash_after_flush(self):
        """Everything flushed survives a crash: abandon without closing."""
        self.vg.flush()
        abandon(self.vg)
        self.vg = VolumeGroup.open(self.pv0)

    # -- what must hold after every step --------------------------------------

    def _contents(self):
        out = {}
        for name in list(self.vols) + list(self.snaps):
            h = self.vg.open_volume(name)
            out[name] = h.read(0, h.size)
        return out

    @invariant()
    def every_byte_matches(self):
        if self.vg is None:
            return
        for name, vol in self.vols.items():
            h = self.vg.open_volume(name)
            assert h.size == len(vol.data), name
            got = h.read(0, h.size)
            assert got == vol.data, _diff(name, got, vol.data)
            for ext in h.allocation():
                if ext.state == 'hole':
                    assert not any(vol.data[ext.offset:
                                            ext.offset + ext.length]), \
                        '%s: hole %r over data' % (name, ext)
        for name, snap in self.snaps.items():
            h = self.vg.open_volume(name)
            assert h.read_only
            got = h.read(0, h.size)
            assert got == snap.data, _diff(name, got, snap.data)
        infos = {v.name for v in self.vg.volumes()}
        assert infos == set(self.vols)
        assert {s.name for s in self.vg.snapshots()} == set(self.snaps)

    @invariant()
    def consistent(self):
        if self.vg is None:
            return
        report = self.vg.check()
        assert report.ok, report.errors


def _diff(name, got, want):
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return '%s differs first at byte %d: got %d want %d' % (name, i,
                                                                    a, b)
    return '%s: lengths %d vs %d' % (name, len(got), len(want))


VolumeStoreModel.TestCase.settings = settings(
    max_examples=100, stateful_step_count=60, deadline=None)
TestVolumeStoreModel = VolumeStoreModel.TestCase
