"""Crash cases the random tests reach only by luck, made deterministic."""

from storage_engine import errors
from storage_engine.volstore import VolumeGroup
from tests.crash import abandon

CS = 64 << 10


def test_freed_cluster_is_not_reused_before_the_free_is_durable(tmp_path):
    """A freed cluster is not reused before the free is durable.

    A discarded cluster handed to another volume before the discard is
    committed would, after a crash, show that volume's data in the first
    one (whose discard the crash undid).
    """
    pv0 = str(tmp_path / 'pv0')
    vg = VolumeGroup.create([(pv0, 8 << 20)], cluster_size=CS,
                            journal_size=64 << 10)
    vg.create_volume('a', CS)
    a = vg.open_volume('a')
    a.write(0, b'A' * CS)
    vg.flush()
    freed = vg.state.by_name['a'].map.get(0)
    a.discard(0, CS)              # frees a's only cluster, not yet durable
    # Until the discard is committed the cluster must stay allocated.
    assert vg.allocator.is_used(freed)
    vg.create_volume('b', 2 * CS)      # (a commit: the discard is durable)
    a.write(0, b'A' * CS)
    vg.flush()
    freed = vg.state.by_name['a'].map.get(0)
    a.discard(0, CS)
    assert vg.allocator.is_used(freed)
    # White box: make the allocator search from the start, so that the
    # freed cluster is the first one it would hand out if it were free.
    vg.allocator._cursor = 0
    b = vg.open_volume('b')
    filled = 0
    try:
        for off in range(0, 2 * CS, CS):
            b.write(off, b'B' * CS)
            filled += 1
    except errors.NoSpace:
        pass
    assert filled == 2
    assert freed not in (vg.state.by_name['b'].map.get(0),
                         vg.state.by_name['b'].map.get(1))
    abandon(vg)

    vg = VolumeGroup.open(pv0)
    try:
        got = vg.open_volume('a').read(0, CS)
        assert got in (b'A' * CS, bytes(CS)), \
            'volume a shows data it was never given: %r' % got[:8]
        assert vg.check().ok
    finally:
        vg.close()


def test_write_after_snapshot_never_reaches_the_snapshot(tmp_path):
    """After a crash a snapshot still holds its point in time.

    Even when the volume's copy-on-write writes since were not flushed.
    """
    pv0 = str(tmp_path / 'pv0')
    vg = VolumeGroup.create([(pv0, 16 << 20)], cluster_size=CS,
                            journal_size=64 << 10)
    vg.create_volume('v', 4 * CS, thin=False)
    v = vg.open_volume('v')
    v.write(0, b'1' * 4 * CS)
    vg.create_snapshot('v', 's')
    v.write(512, b'2' * 1024)
    abandon(vg)
    vg = VolumeGroup.open(pv0)
    try:
        assert vg.open_volume('s').read(0, 4 * CS) == b'1' * 4 * CS
        got = vg.open_volume('v').read(0, 4096)
        assert got[:512] == b'1' * 512 and got[1536:] == b'1' * 2560
        assert got[512:1536] in (b'1' * 1024, b'2' * 1024)
    finally:
        vg.close()
