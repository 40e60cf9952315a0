"""Fuzzed frames never crash the AoE target core, nor change a volume they
may not touch.

Hypothesis feeds the core random bytes and mutations of valid requests
(every command, flipped bits, truncations, extensions); the core must only
ever produce events, and every event it produces must be within the export
and answerable.
"""

from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st

from storage_engine.aoe import initiator
from storage_engine.aoe import target
from storage_engine.aoe import wire

TARGET_MAC = bytes.fromhex('020000000001')
HOST = bytes.fromhex('020000000002')
SHELF, SLOT, SECTORS = 7, 3, 64
FUZZ = settings(deadline=None, max_examples=400,
                suppress_health_check=[HealthCheck.too_slow])


def seeds():
    ini = initiator.InitiatorCore(HOST, SHELF, SLOT, TARGET_MAC)
    return [
        ini.config(0).frame,
        ini.config(0, wire.CONFIG_SET, b'abc').frame,
        ini.ata(0, wire.ATA_IDENTIFY, count=1).frame,
        ini.ata(0, wire.ATA_READ_EXT, 1, 2).frame,
        ini.ata(0, wire.ATA_WRITE_EXT, 1, 2, b'w' * 1024).frame,
        ini.ata(0, wire.ATA_WRITE, 1, 1, b'w' * 512).frame,
        ini.ata(0, wire.ATA_FLUSH_EXT).frame,
        ini.mask(0, wire.MASK_EDIT, [(wire.DIR_ADD, HOST)]).frame,
        ini.reserve(0, wire.RESERVE_SET, [HOST]).frame,
    ]


SEEDS = seeds()


def serve(core: target.TargetCore, frame: bytes) -> None:
    for ev in core.receive(frame):
        if isinstance(ev, target.Send):
            wire.parse(ev.frame)
            assert len(ev.frame) >= wire.MIN_FRAME
            continue
        assert ev.slot == SLOT
        if isinstance(ev, (target.Read, target.Write)):
            n = ev.length if isinstance(ev, target.Read) else len(ev.data)
            assert ev.offset % 512 == 0 and n % 512 == 0 and n > 0
            assert ev.offset + n <= SECTORS * 512
            reply = core.complete(ev.request, data=bytes(n) if isinstance(
                ev, target.Read) else None)
        else:
            reply = core.complete(ev.request)
        assert reply is not None
        wire.parse(reply)


def new_core():
    core = target.TargetCore(TARGET_MAC, SHELF, 1500)
    core.add(SLOT, SECTORS, [HOST])
    return core


@FUZZ
@given(st.binary(max_size=1600))
def test_random_bytes_never_crash_the_target(raw):
    serve(new_core(), raw)
    # The same bytes behind a valid AoE Ethernet header
    serve(new_core(), TARGET_MAC + HOST + b'\x88\xa2' + raw)


@FUZZ
@given(st.sampled_from(SEEDS),
       st.lists(st.tuples(st.integers(0, 1599), st.integers(0, 255)),
                max_size=8),
       st.one_of(st.none(), st.integers(0, 1600)),
       st.binary(max_size=64))
def test_mutated_requests_never_crash_the_target(seed, flips, cut, tail):
    raw = bytearray(seed)
    for pos, value in flips:
        if pos < len(raw):
            raw[pos] = value
    raw = raw[:cut] if cut is not None else raw
    core = new_core()
    serve(core, bytes(raw) + tail)
    serve(core, bytes(raw) + tail)      # and again: the retransmit path


@FUZZ
@given(st.binary(max_size=200))
def test_random_replies_never_crash_the_initiator(raw):
    ini = initiator.InitiatorCore(HOST, SHELF, SLOT, TARGET_MAC)
    ini.ata(0, wire.ATA_READ_EXT, 0, 1)
    got = ini.receive(TARGET_MAC[:0] + HOST + TARGET_MAC + b'\x88\xa2' + raw)
    if got is not None:
        try:
            initiator.check(got[1])
        except IOError:
            pass
