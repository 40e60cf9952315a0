"""Fixtures and helpers for the volume store's unit tests.

Groups are small sparse files under pytest's ``tmp_path``: 64 KiB clusters
and a 256 KiB journal, so that journal wrap-around and checkpoints happen
after a few dozen operations.

The helpers observe a group the way a user does (volume and snapshot
listings, capacity, physical volumes, content and allocation maps), so a
test can prove that a refused request changed nothing.
"""

import contextlib
import hashlib
import multiprocessing
import os
import random
import traceback

import pytest

from storage_engine.volstore import layout
from storage_engine.volstore import VolumeGroup

KiB = 1024
MiB = 1024 * KiB
CS = 64 * KiB
JOURNAL = 256 * KiB
PV_SIZE = 64 * MiB
SECTOR = 512
# Data clusters of a PV0 of PV_SIZE: the metadata area (label, superblocks,
# journal) is rounded up to 1 MiB.
PV_CLUSTERS = (PV_SIZE - MiB) // CS


def create_group(path, size=PV_SIZE, **kwargs) -> VolumeGroup:
    kwargs.setdefault('cluster_size', CS)
    kwargs.setdefault('journal_size', JOURNAL)
    return VolumeGroup.create([(str(path), size)], **kwargs)


def data(seed: int, length: int) -> bytes:
    """Deterministic bytes that differ at every offset from other seeds."""
    return random.Random(seed).randbytes(length)


def write(vg, ref, offset, payload, **kwargs) -> None:
    vg.open_volume(ref).write(offset, payload, **kwargs)


def hidden(vg) -> int:
    """Hidden snapshots the group keeps (after a consistency check)."""
    report = vg.check()
    assert report.ok, report.errors
    return report.stats['hidden_snapshots']


def read(vg, ref, offset=0, length=None) -> bytes:
    handle = vg.open_volume(ref)
    if length is None:
        length = handle.size - offset
    return handle.read(offset, length)


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def contents(vg) -> dict:
    """``{name: (sha256 of the whole content, own allocation map)}``."""
    out = {}
    for info in vg.volumes() + vg.snapshots():
        handle = vg.open_volume(info.id)
        out[info.name] = (digest(handle.read(0, info.size)),
                          handle.allocation(own=True))
    return out


def observe(vg, capacity: bool = True):
    """Everything a user can see of an open group."""
    seen = {'volumes': vg.volumes(), 'snapshots': vg.snapshots(),
            'contents': contents(vg)}
    if capacity:
        seen['capacity'] = vg.capacity()
        seen['physical_volumes'] = vg.physical_volumes()
    return seen


@contextlib.contextmanager
def refused(vg, exc_class, *words):
    """Expect exactly ``exc_class`` naming ``words``, and no change at all."""
    before = observe(vg)
    with raises_exactly(exc_class, *words) as info:
        yield info
    assert observe(vg) == before


@contextlib.contextmanager
def raises_exactly(exc_class, *words):
    """Like pytest.raises, but not satisfied by a subclass."""
    with pytest.raises(exc_class) as info:
        yield info
    assert type(info.value) is exc_class, \
        'expected %s, got %r' % (exc_class.__name__, info.value)
    message = str(info.value)
    for word in words:
        assert str(word) in message, \
            '%r does not name %r' % (message, word)


def superblock_slots(path):
    """``[(slot offset, sequence or None)]`` of PV0's two superblock slots."""
    out = []
    with open(path, 'rb') as f:
        for slot in layout.SUPERBLOCK_SLOTS:
            f.seek(slot)
            got = layout.decode_superblock(f.read(layout.SUPERBLOCK_SIZE))
            out.append((slot, got[0] if got else None))
    return out


def overwrite(path, offset, payload) -> None:
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(payload)


def _crash_child(conn, work, args):
    code = 1
    try:
        conn.send(work(*args))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        # No close, no checkpoint, no cleanup: what a killed process
        # leaves behind (the kernel still has every write it was given).
        os._exit(code)


def crash_after(work, *args):
    """Run ``work(*args)`` in a child that then dies without closing.

    Returns what ``work`` returned (it must be picklable).
    """
    ctx = multiprocessing.get_context('fork')
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_crash_child, args=(child, work, args))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = None
    proc.join()
    assert proc.exitcode == 0, 'the crashing child failed (see stderr)'
    return result


@pytest.fixture
def pv0(tmp_path) -> str:
    return str(tmp_path / 'pv0')


@pytest.fixture
def vg(pv0):
    group = create_group(pv0)
    yield group
    group.close()


@pytest.fixture
def reopen(pv0):
    """``reopen(vg=None, **open_kwargs)``: close ``vg`` and open PV0 again."""
    opened = []

    def _reopen(group=None, **kwargs):
        if group is not None:
            group.close()
        got = VolumeGroup.open(pv0, **kwargs)
        opened.append(got)
        return got

    yield _reopen
    for group in opened:
        group.close()
