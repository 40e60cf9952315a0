"""Fuzzed frames on the wire never crash our AoE target, and never reach a
volume whose mask list does not admit their sender.

Thousands of random and mutated frames are sent from namespace B to the
target in namespace A over a veth pair; afterwards the target still serves
a clean initiator, and the volume exported to another MAC is byte for byte
what it was.
"""

import os
import random
import time

from storage_engine.aoe import client as aoe_client
from storage_engine.aoe import initiator
from storage_engine.aoe import rawsocket
from storage_engine.aoe import wire
from tests.fixtures import aoe
from tests.fixtures import netns

MiB = aoe.MiB
SHELF = 9
FRAMES = 5000

veth_pair = netns.veth_pair


def seeds(src: bytes, dst: bytes, slot: int):
    ini = initiator.InitiatorCore(src, SHELF, slot, dst)
    return [
        ini.config(0).frame,
        ini.config(0, wire.CONFIG_FORCE_SET, b'fuzz').frame,
        ini.ata(0, wire.ATA_IDENTIFY, count=1).frame,
        ini.ata(0, wire.ATA_READ_EXT, 8, 2).frame,
        ini.ata(0, wire.ATA_WRITE_EXT, 8, 2, b'w' * 1024).frame,
        ini.ata(0, wire.ATA_FLUSH_EXT).frame,
        ini.mask(0, wire.MASK_EDIT, [(wire.DIR_ADD, src)]).frame,
        ini.reserve(0, wire.RESERVE_FORCE_SET, [src]).frame,
    ]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    raw = bytearray(frame)
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(14, len(raw))   # keep the Ethernet header
        raw[pos] = rng.randrange(256)
    if rng.random() < 0.3:
        raw = raw[:rng.randint(14, len(raw))]
    if rng.random() < 0.2:
        raw += os.urandom(rng.randint(1, 200))
    return bytes(raw)


def test_fuzzed_frames_never_crash_the_target(veth_pair, tmp_path):
    rng = random.Random(int.from_bytes(os.urandom(4), 'little'))
    with aoe.TargetThread(veth_pair.if_a, SHELF, veth_pair.ns_a,
                          tmp_path) as tgt:
        mine = tgt.add(1, 4 * MiB, [veth_pair.mac_b])
        theirs = tgt.add(2, 4 * MiB, ['02:00:00:00:00:77'])
        pattern = os.urandom(MiB)
        theirs.write(0, pattern)
        sock, mac, _mtu = rawsocket.open_packet_socket(veth_pair.if_b,
                                                       veth_pair.ns_b)
        sock.setblocking(True)
        target_mac = wire.mac_bytes(tgt.mac)
        pool = seeds(mac, target_mac, 1) + seeds(mac, target_mac, 2) + \
            seeds(mac, wire.BROADCAST_MAC, wire.BROADCAST_SLOT)
        try:
            for i in range(FRAMES):
                kind = i % 3
                if kind == 0:
                    frame = mutate(rng, rng.choice(pool))
                elif kind == 1:
                    frame = (target_mac + mac + b'\x88\xa2' +
                             os.urandom(rng.randint(0, 1400)))
                else:
                    frame = rng.choice(pool)
                frame = wire.pad(frame)
                try:
                    sock.send(frame)
                except OSError:
                    pass                # ENOBUFS: the veth was full
            # The fuzz may have reserved slot 1 for MACs of its own making:
            # take it back, as an operator would, after every fuzzed frame
            # (the target reads frames in order; the client's discovery
            # below is answered only after this).
            release = initiator.InitiatorCore(mac, SHELF, 1, target_mac)
            while True:
                try:
                    sock.send(release.reserve(
                        0, wire.RESERVE_FORCE_SET).frame)
                    break
                except OSError:
                    time.sleep(0.01)
        finally:
            sock.close()
        # Still serving, and slot 2 untouched.
        with aoe_client.AoEClient(veth_pair.if_b, SHELF, 1,
                                  netns=veth_pair.ns_b, timeout=5) as c:
            data = os.urandom(64 * 1024)
            c.write(0, data)
            assert c.read(0, len(data)) == data
        assert mine.read(0, len(data)) == data
        assert theirs.read(0, MiB) == pattern
        assert tgt.target.core.get(2).config == b''
        assert tgt.target.core.get(2).reserve == ()
