"""Our AoE initiator against our AoE target, over a real veth pair.

The target serves engine volumes from namespace A, the initiator runs in
namespace B (tests/fixtures/netns.py creates and removes both); every frame
crosses the veth as real Ethernet.
"""

import os
import time

import pytest

from storage_engine.aoe import client as aoe_client
from storage_engine.aoe import wire
from storage_engine import errors
from tests.fixtures import aoe
from tests.fixtures import netns

MiB = aoe.MiB
SHELF = 7

veth_pair = netns.veth_pair
make_veth_pair = netns.make_veth_pair


@pytest.fixture
def target(veth_pair, tmp_path):
    with aoe.TargetThread(veth_pair.if_a, SHELF, veth_pair.ns_a,
                          tmp_path) as tgt:
        yield tgt


def connect(pair, slot, **kw):
    kw.setdefault('timeout', 5)
    return aoe_client.AoEClient(pair.if_b, SHELF, slot, netns=pair.ns_b,
                                **kw)


def test_identify_read_write_flush_round_trip(veth_pair, target):
    handle = target.add(1, 64 * MiB, [veth_pair.mac_b])
    with connect(veth_pair, 1) as c:
        assert c.target_mac == target.mac == veth_pair.mac_a
        info = c.identify()
        assert info['sectors'] == 64 * MiB // 512 and info['lba48']
        assert c.size == 64 * MiB and c.sectors_per_frame == 2
        data = os.urandom(MiB + 3 * 512)
        c.write(5 * 512, data)
        c.flush()
        assert c.read(5 * 512, len(data)) == data
        # the bytes are in the engine volume itself
        assert handle.read(5 * 512, len(data)) == data
        # never written: zeroes
        assert c.read(32 * MiB, 4096) == bytes(4096)
        # the last sector, and one past it
        c.write(64 * MiB - 512, b'E' * 512)
        assert c.read(64 * MiB - 512, 512) == b'E' * 512
        with pytest.raises(errors.OutOfRange):
            c.read(64 * MiB, 512)


def test_jumbo_frames_carry_17_sectors(make_veth_pair, tmp_path):
    pair = make_veth_pair(mtu=9000)
    with aoe.TargetThread(pair.if_a, SHELF, pair.ns_a, tmp_path) as tgt:
        tgt.add(2, 16 * MiB, [pair.mac_b])
        with connect(pair, 2) as c:
            assert tgt.target.sectors_per_frame == 17
            assert c.sectors_per_frame == 17
            data = os.urandom(4 * MiB)
            c.write(0, data)
            assert c.read(0, len(data)) == data


def test_many_exports_on_one_interface(veth_pair, target):
    for slot in range(20):
        target.add(slot, 4 * MiB, [veth_pair.mac_b])
    clients = [connect(veth_pair, slot) for slot in range(20)]
    try:
        for slot, c in enumerate(clients):
            c.write(0, bytes([slot + 1]) * 8192)
        for slot, c in enumerate(clients):
            assert c.read(0, 8192) == bytes([slot + 1]) * 8192
            assert target.handles[slot].read(0, 8192) == \
                bytes([slot + 1]) * 8192
    finally:
        for c in clients:
            c.close()


def test_a_host_not_on_the_mask_list_gets_no_answer(veth_pair, target):
    handle = target.add(3, 4 * MiB, ['02:00:00:00:00:42'])
    handle.write(0, b'secret' * 512)
    with pytest.raises(errors.Unavailable, match='did not answer'):
        connect(veth_pair, 3, timeout=1)
    # Even with the target's MAC known (no discovery broadcast).
    with pytest.raises(errors.Unavailable):
        connect(veth_pair, 3, timeout=1, target_mac=target.mac)
    assert handle.read(0, 3072) == (b'secret' * 512)[:3072]


def test_read_only_export_refuses_writes(veth_pair, target):
    handle = target.add(4, 4 * MiB, [veth_pair.mac_b], read_only=True)
    with connect(veth_pair, 4) as c:
        with pytest.raises(aoe_client.ATAError, match='aborted'):
            c.write(0, b'x' * 1024)
        assert c.read(0, 1024) == bytes(1024)
    assert handle.read(0, 1024) == bytes(1024)


def test_extend_while_exported_shows_the_new_size(veth_pair, target):
    target.add(5, 4 * MiB, [veth_pair.mac_b], name='grows')
    target.vg.extend('grows', 8 * MiB)
    with connect(veth_pair, 5) as c:
        assert c.size == 8 * MiB
        c.write(8 * MiB - 1024, b'z' * 1024)
        assert c.read(8 * MiB - 1024, 1024) == b'z' * 1024


def test_a_removed_export_stops_answering(veth_pair, target):
    target.add(6, 4 * MiB, [veth_pair.mac_b])
    c = connect(veth_pair, 6, timeout=1)
    try:
        c.write(0, b'a' * 512)
        target.remove(6)
        with pytest.raises(errors.Unavailable):
            c.read(0, 512)
    finally:
        c.close()


class CountingBackend:
    """A volume handle that counts the writes reaching it."""

    def __init__(self, handle):
        self._h = handle
        self.writes = 0

    def __getattr__(self, name):
        return getattr(self._h, name)

    def write(self, offset, data):
        self.writes += 1
        return self._h.write(offset, data)


def test_retransmissions_during_a_stall_run_each_write_once(veth_pair,
                                                            target):
    target.vg.create_volume('stalled', 4 * MiB)
    backend = CountingBackend(target.vg.open_volume('stalled'))
    target.call(lambda: target.target.add(8, backend, [veth_pair.mac_b]))
    with connect(veth_pair, 8, rto=0.02) as c:
        # The target's loop stalls for 0.5 s while the initiator sends and
        # resends (every 20, 40, 80... ms, same tags).
        target.loop.call_soon_threadsafe(time.sleep, 0.5)
        data = os.urandom(16 * 1024)       # 16 frames at MTU 1500
        c.write(0, data)
        assert c.read(0, len(data)) == data
    assert backend.writes == 16


def test_aoe_errors_reach_the_initiator(veth_pair, target):
    target.add(9, 4 * MiB, [veth_pair.mac_b])
    with connect(veth_pair, 9) as c:
        assert c.mask_list() == [veth_pair.mac_b]
        with pytest.raises(aoe_client.AoEError):
            c.edit_mask_list([(wire.DIR_ADD, '02:00:00:00:00:01')])
        assert c.reserve(wire.RESERVE_SET, [c.mac]) == [c.mac]
        assert c.reserve() == [c.mac]
        c.write(0, b'r' * 512)          # the reserving host still writes
        assert c.query_config(wire.CONFIG_SET, b'host-b')['config'] == \
            b'host-b'
        with pytest.raises(aoe_client.AoEError, match='config string'):
            c.query_config(wire.CONFIG_SET, b'host-c')
