"""The AoE target core, driven by the initiator core, in memory.

Every test answers the target's I/O events from a dict-backed disk (the
`Harness`), so what an initiator would observe (replies, errors, silence,
bytes read back) is what is asserted.
"""

import pytest

from storage_engine.aoe import initiator
from storage_engine.aoe import target
from storage_engine.aoe import wire

TARGET_MAC = bytes.fromhex('020000000001')
HOST = bytes.fromhex('020000000002')
OTHER = bytes.fromhex('020000000003')
SHELF, SLOT = 7, 3
SECTORS = 2048


class Harness:
    """A target core with one export over a bytearray disk."""

    def __init__(self, mtu=1500, macs=(HOST,), read_only=False):
        self.core = target.TargetCore(TARGET_MAC, SHELF, mtu)
        self.disk = bytearray(SECTORS * wire.SECTOR)
        self.core.add(SLOT, SECTORS, macs, read_only=read_only,
                      serial='SERIAL1', model='test disk')
        self.writes = 0
        self.flushes = 0
        self.held = []          # I/O events not answered yet (hold=True)

    def run(self, frame: bytes, hold=False):
        """Replies (as parsed frames) to ``frame``."""
        out = []
        for ev in self.core.receive(frame):
            if hold and not isinstance(ev, target.Send):
                self.held.append(ev)
                continue
            out.extend(self.answer(ev))
        return out

    def answer(self, ev):
        if isinstance(ev, target.Send):
            return [wire.parse(ev.frame)]
        if isinstance(ev, target.Read):
            reply = self.core.complete(
                ev.request, data=bytes(self.disk[ev.offset:ev.offset +
                                                 ev.length]))
        elif isinstance(ev, target.Write):
            self.disk[ev.offset:ev.offset + len(ev.data)] = ev.data
            self.writes += 1
            reply = self.core.complete(ev.request)
        else:
            self.flushes += 1
            reply = self.core.complete(ev.request)
        return [wire.parse(reply)] if reply is not None else []


def host(mac=HOST, slot=SLOT, shelf=SHELF):
    return initiator.InitiatorCore(mac, shelf, slot, TARGET_MAC)


def one(replies):
    assert len(replies) == 1, replies
    return replies[0]


def test_identify_reports_lba48_capacity_and_strings():
    h = Harness()
    reply = one(h.run(host().ata(0, wire.ATA_IDENTIFY, count=1).frame))
    initiator.check(reply)
    data = reply.args.data
    assert initiator.capacity(data) == (SECTORS, True)
    assert initiator.ata_string(data, 20, 20) == 'SERIAL1'
    assert initiator.ata_string(data, 54, 40) == 'test disk'


def test_identify_of_a_volume_past_28_bits_keeps_the_whole_capacity():
    core = target.TargetCore(TARGET_MAC, SHELF, 1500)
    big = (1 << 33) + 5                 # 4 TiB and a bit, in sectors
    core.add(SLOT, big, [HOST])
    ev = one(core.receive(host().ata(0, wire.ATA_IDENTIFY, count=1).frame))
    data = wire.parse(ev.frame).args.data
    assert initiator.capacity(data) == (big, True)
    words = [int.from_bytes(data[i:i + 2], 'little') for i in (120, 122)]
    assert words == [0xFFFF, 0x0FFF]    # LBA28 field saturates


@pytest.mark.parametrize('read_cmd,write_cmd', [
    (wire.ATA_READ_EXT, wire.ATA_WRITE_EXT),
    (wire.ATA_READ, wire.ATA_WRITE),
])
def test_write_then_read_returns_the_data(read_cmd, write_cmd):
    h = Harness()
    ini = host()
    data = bytes(range(256)) * 4
    initiator.check(one(h.run(ini.ata(0, write_cmd, 100, 2, data).frame)))
    assert h.disk[100 * 512:102 * 512] == data
    reply = initiator.check(one(h.run(ini.ata(0, read_cmd, 100, 2).frame)))
    assert reply.args.data == data
    assert reply.args.cmd_status == wire.STATUS_DRDY


def test_flush_reaches_the_volume():
    h = Harness()
    initiator.check(one(h.run(host().ata(0, wire.ATA_FLUSH_EXT).frame)))
    initiator.check(one(h.run(host().ata(0, wire.ATA_FLUSH).frame)))
    assert h.flushes == 2


def test_replies_are_padded_to_the_ethernet_minimum():
    h = Harness()
    frames = [ev.frame for ev in h.core.receive(
        host().config(0).frame)]
    assert frames and all(len(f) >= wire.MIN_FRAME for f in frames)
    ini = host()
    ev = h.core.receive(ini.ata(0, wire.ATA_FLUSH_EXT).frame)[0]
    assert len(h.core.complete(ev.request)) == wire.MIN_FRAME


def test_sectors_per_frame_follow_the_mtu():
    assert target.TargetCore(TARGET_MAC, 1, 1500).sectors_per_frame == 2
    assert target.TargetCore(TARGET_MAC, 1, 9000).sectors_per_frame == 17
    h = Harness(mtu=9000)
    cfg = one(h.run(host().config(0).frame)).args
    assert cfg.sector_count == 17 and cfg.buffer_count == 16
    data = b'j' * (17 * 512)
    initiator.check(one(h.run(host().ata(0, wire.ATA_WRITE_EXT, 0, 17,
                                         data).frame)))
    assert initiator.check(one(h.run(host().ata(
        0, wire.ATA_READ_EXT, 0, 17).frame))).args.data == data


def test_more_sectors_than_a_frame_holds_is_aborted_and_changes_nothing():
    h = Harness()
    reply = one(h.run(host().ata(0, wire.ATA_WRITE_EXT, 0, 3,
                                 b'x' * 1536).frame))
    with pytest.raises(initiator.ATAError, match='aborted'):
        initiator.check(reply)
    assert h.writes == 0 and not any(h.disk)


@pytest.mark.parametrize('lba,count', [(SECTORS - 1, 2), (SECTORS, 1),
                                       ((1 << 48) - 1, 1)])
def test_io_past_the_end_fails_with_idnf(lba, count):
    h = Harness()
    for cmd, data in ((wire.ATA_READ_EXT, b''),
                      (wire.ATA_WRITE_EXT, b'z' * 512 * count)):
        reply = one(h.run(host().ata(0, cmd, lba, count, data).frame))
        with pytest.raises(initiator.ATAError, match='out of range'):
            initiator.check(reply)
    assert h.writes == 0


def test_a_short_write_payload_is_aborted():
    h = Harness()
    reply = one(h.run(host().ata(0, wire.ATA_WRITE_EXT, 0, 2,
                                 b'x' * 600).frame))
    with pytest.raises(initiator.ATAError):
        initiator.check(reply)
    assert h.writes == 0


def test_read_only_export_refuses_writes_and_serves_reads():
    h = Harness(read_only=True)
    h.disk[:512] = b'r' * 512
    reply = one(h.run(host().ata(0, wire.ATA_WRITE_EXT, 0, 1,
                                 b'w' * 512).frame))
    with pytest.raises(initiator.ATAError):
        initiator.check(reply)
    assert h.disk[:512] == b'r' * 512
    assert initiator.check(one(h.run(host().ata(
        0, wire.ATA_READ_EXT, 0, 1).frame))).args.data == b'r' * 512


def test_unknown_ata_command_is_aborted():
    h = Harness()
    reply = one(h.run(host().ata(0, 0x99).frame))
    with pytest.raises(initiator.ATAError, match='aborted'):
        initiator.check(reply)


def test_unknown_aoe_command_gets_error_1():
    h = Harness()
    frame = host().request(9, b'\0' * 8, 0).frame
    reply = one(h.run(frame))
    assert reply.flags & wire.FLAG_ERROR and reply.error == wire.ERR_COMMAND


def test_another_version_gets_unsupported_version():
    h = Harness()
    raw = bytearray(host().config(0).frame)
    raw[14] = (2 << 4)
    reply = one(h.run(bytes(raw)))
    assert reply.error == wire.ERR_VERSION


# -- access -------------------------------------------------------------------

def test_a_mac_not_on_the_mask_list_gets_no_answer_at_all():
    h = Harness()
    stranger = host(mac=OTHER)
    frames = [stranger.config(0).frame,
              stranger.ata(0, wire.ATA_IDENTIFY, count=1).frame,
              stranger.ata(0, wire.ATA_READ_EXT, 0, 1).frame,
              stranger.ata(0, wire.ATA_WRITE_EXT, 0, 1, b'x' * 512).frame,
              stranger.mask(0).frame, stranger.reserve(0).frame,
              stranger.reserve(0, wire.RESERVE_FORCE_SET, [OTHER]).frame]
    for frame in frames:
        assert h.core.receive(frame) == []
    bcast = initiator.InitiatorCore(OTHER, wire.BROADCAST_SHELF,
                                    wire.BROADCAST_SLOT)
    assert h.core.receive(bcast.config(0).frame) == []
    assert not any(h.disk) and h.core.get(SLOT).reserve == ()


def test_an_empty_mask_list_admits_nobody():
    h = Harness(macs=())
    assert h.core.receive(host().config(0).frame) == []


def test_mask_list_reads_back_and_edits_over_the_wire_are_refused():
    h = Harness(macs=(HOST, OTHER))
    reply = initiator.check(one(h.run(host().mask(0).frame)))
    assert sorted(m for _d, m in reply.args.directives) == [HOST, OTHER]
    edit = one(h.run(host().mask(0, wire.MASK_EDIT, [
        (wire.DIR_ADD, bytes.fromhex('020000000009'))]).frame))
    assert edit.args.merror == wire.MASK_ERR_UNSPECIFIED
    assert h.core.get(SLOT).macs == frozenset({HOST, OTHER})


def test_reserve_keeps_other_admitted_hosts_out_until_released():
    h = Harness(macs=(HOST, OTHER))
    mine, theirs = host(), host(mac=OTHER)
    reply = initiator.check(one(h.run(mine.reserve(
        0, wire.RESERVE_SET, [HOST]).frame)))
    assert reply.args.macs == (HOST,)
    refused = one(h.run(theirs.ata(0, wire.ATA_WRITE_EXT, 0, 1,
                                   b'x' * 512).frame))
    assert refused.error == wire.ERR_RESERVED and h.writes == 0
    refused = one(h.run(theirs.reserve(0, wire.RESERVE_SET, [OTHER]).frame))
    assert refused.error == wire.ERR_RESERVED
    initiator.check(one(h.run(mine.ata(0, wire.ATA_WRITE_EXT, 0, 1,
                                       b'm' * 512).frame)))
    # release (an empty list), then the other host may write
    initiator.check(one(h.run(mine.reserve(0, wire.RESERVE_SET).frame)))
    initiator.check(one(h.run(theirs.ata(0, wire.ATA_WRITE_EXT, 1, 1,
                                         b't' * 512).frame)))
    # force set takes a reservation over
    initiator.check(one(h.run(mine.reserve(0, wire.RESERVE_SET,
                                           [HOST]).frame)))
    initiator.check(one(h.run(theirs.reserve(0, wire.RESERVE_FORCE_SET,
                                             [OTHER]).frame)))
    assert h.core.get(SLOT).reserve == (OTHER,)


# -- Query Config -------------------------------------------------------------

def test_query_config_read_test_prefix_set_and_force_set():
    h = Harness()
    ini = host()
    cfg = initiator.check(one(h.run(ini.config(0).frame))).args
    assert cfg.config == b'' and cfg.sector_count == 2
    done = one(h.run(ini.config(0, wire.CONFIG_SET, b'host-a:vol1').frame))
    assert initiator.check(done).args.config == b'host-a:vol1'
    # set again with another string: config string present
    refused = one(h.run(ini.config(0, wire.CONFIG_SET, b'host-b').frame))
    assert refused.error == wire.ERR_CONFIG_PRESENT
    assert refused.args.config == b'host-a:vol1'
    # exact and prefix tests answer only on a match
    assert one(h.run(ini.config(0, wire.CONFIG_TEST, b'host-a:vol1').frame))
    assert h.run(ini.config(0, wire.CONFIG_TEST, b'host-a').frame) == []
    assert one(h.run(ini.config(0, wire.CONFIG_PREFIX, b'host-a').frame))
    assert h.run(ini.config(0, wire.CONFIG_PREFIX, b'host-b').frame) == []
    forced = one(h.run(ini.config(0, wire.CONFIG_FORCE_SET, b'b').frame))
    assert initiator.check(forced).args.config == b'b'
    assert h.core.get(SLOT).config == b'b'


def test_broadcast_discovery_answers_for_every_admitted_slot():
    h = Harness()
    h.core.add(4, 100, [HOST])
    h.core.add(5, 100, [OTHER])
    disc = initiator.InitiatorCore(HOST, wire.BROADCAST_SHELF,
                                   wire.BROADCAST_SLOT)
    replies = h.run(disc.config(0).frame)
    assert sorted((r.shelf, r.slot) for r in replies) == [(SHELF, SLOT),
                                                          (SHELF, 4)]
    assert all(r.src == TARGET_MAC and r.dst == HOST for r in replies)


def test_broadcast_ata_is_ignored():
    h = Harness()
    bcast = initiator.InitiatorCore(HOST, SHELF, wire.BROADCAST_SLOT)
    assert h.core.receive(bcast.ata(0, wire.ATA_WRITE_EXT, 0, 1,
                                    b'x' * 512).frame) == []


def test_frames_for_another_shelf_or_slot_or_mac_are_ignored():
    h = Harness()
    for ini in (host(shelf=8), host(slot=9)):
        assert h.core.receive(ini.config(0).frame) == []
    other_target = initiator.InitiatorCore(HOST, SHELF, SLOT,
                                           bytes.fromhex('02000000ffff'))
    assert h.core.receive(other_target.config(0).frame) == []


def announced(core, slot=None):
    """(destination, slot) of each announcement frame, parsed."""
    frames = [wire.parse(f) for f in core.announcements(slot)]
    for f in frames:
        assert (f.src, f.shelf, f.command, f.tag, f.response) == (
            TARGET_MAC, SHELF, wire.CMD_CONFIG, 0, True)
    return [(f.dst, f.slot) for f in frames]


def test_an_export_is_announced_by_unicast_to_each_mac_on_its_list():
    h = Harness(macs=(OTHER, HOST))
    frames = h.core.announcements(SLOT)
    assert announced(h.core, SLOT) == [(HOST, SLOT), (OTHER, SLOT)]
    assert all(len(f) >= wire.MIN_FRAME for f in frames)
    cfg = wire.parse(frames[0]).args
    assert (cfg.sector_count, cfg.ccmd) == (2, wire.CONFIG_READ)
    assert cfg.config == b''


def test_an_export_with_an_empty_list_is_announced_to_nobody():
    h = Harness(macs=())
    assert h.core.announcements(SLOT) == []
    assert h.core.announcements() == []


def test_every_export_is_announced_to_its_own_hosts_only():
    h = Harness()
    h.core.add(9, 10, [OTHER])
    h.core.add(4, 10, [])
    h.core.add(5, 10, [HOST, OTHER])
    assert announced(h.core) == [(HOST, SLOT), (HOST, 5), (OTHER, 5),
                                 (OTHER, 9)]
    assert announced(h.core, 9) == [(OTHER, 9)]
    assert not any(dst == wire.BROADCAST_MAC
                   for dst, _slot in announced(h.core))


def test_a_config_string_is_announced_only_to_the_hosts_on_the_list():
    h = Harness()
    h.core.add(9, 10, [OTHER])
    initiator.check(one(h.run(host().config(0, wire.CONFIG_SET,
                                            b'host-a:secret').frame)))
    frames = [wire.parse(f) for f in h.core.announcements()]
    carrying = [f.dst for f in frames if f.args.config == b'host-a:secret']
    assert carrying == [HOST]


# -- retransmissions ----------------------------------------------------------

def test_a_retransmitted_write_is_not_run_again():
    h = Harness()
    ini = host()
    first = ini.ata(0, wire.ATA_WRITE_EXT, 0, 1, b'1' * 512).frame
    second = ini.ata(0, wire.ATA_WRITE_EXT, 0, 1, b'2' * 512).frame
    r1 = one(h.run(first))
    one(h.run(second))
    # The first request arrives again, late: it is answered, not rerun.
    again = one(h.run(first))
    assert again == r1 and h.writes == 2
    assert h.disk[:512] == b'2' * 512


def test_a_duplicate_of_a_request_in_progress_is_dropped():
    h = Harness()
    ini = host()
    frame = ini.ata(0, wire.ATA_WRITE_EXT, 0, 1, b'1' * 512).frame
    assert h.run(frame, hold=True) == []
    assert h.core.receive(frame) == []          # still in progress
    replies = h.answer(h.held.pop())
    assert len(replies) == 1 and h.writes == 1
    assert one(h.run(frame)) == replies[0]      # and now replayed


def test_a_reused_tag_with_new_content_is_a_new_request():
    h = Harness()
    ini = host()
    first = ini.ata(0, wire.ATA_WRITE_EXT, 0, 1, b'1' * 512)
    one(h.run(first.frame))
    raw = bytearray(first.frame)
    raw[-512:] = b'3' * 512
    one(h.run(bytes(raw)))
    assert h.writes == 2 and h.disk[:512] == b'3' * 512


def test_retransmitted_reads_are_served_again():
    h = Harness()
    ini = host()
    frame = ini.ata(0, wire.ATA_READ_EXT, 0, 1).frame
    one(h.run(frame))
    h.disk[:512] = b'n' * 512
    assert one(h.run(frame)).args.data == b'n' * 512


def test_no_reply_leaves_for_an_export_removed_during_its_io():
    h = Harness()
    ini = host()
    h.run(ini.ata(0, wire.ATA_READ_EXT, 0, 1).frame, hold=True)
    ev = h.held.pop()
    h.core.remove(SLOT)
    h.core.add(SLOT, SECTORS, [HOST])           # another volume, same slot
    assert h.core.complete(ev.request, data=b'old' + bytes(509)) is None


def test_a_failed_io_is_reported_as_an_ata_error():
    h = Harness()
    ini = host()
    ev = h.core.receive(ini.ata(0, wire.ATA_READ_EXT, 0, 1).frame)[0]
    reply = wire.parse(h.core.complete(ev.request, error=OSError(5, 'EIO')))
    with pytest.raises(initiator.ATAError, match='I/O error'):
        initiator.check(reply)


def test_the_answer_cache_is_bounded():
    core = target.TargetCore(TARGET_MAC, SHELF, 1500, cache_size=8)
    core.add(SLOT, SECTORS, [HOST])
    ini = host()
    for _ in range(50):
        ev = core.receive(ini.ata(0, wire.ATA_FLUSH_EXT).frame)[0]
        core.complete(ev.request)
    assert len(core._answered) == 8


# -- the initiator core's own duties ------------------------------------------

def test_initiator_retransmits_with_backoff_and_the_same_bytes():
    ini = initiator.InitiatorCore(HOST, SHELF, SLOT, TARGET_MAC, rto=0.1,
                                  max_rto=0.3)
    p = ini.ata(10.0, wire.ATA_FLUSH_EXT)
    assert ini.due(10.05) == []
    assert ini.due(10.1) == [p] and p.rto == pytest.approx(0.2)
    assert ini.due(10.25) == []
    assert ini.due(10.3) == [p] and p.rto == pytest.approx(0.3)
    assert ini.due(10.61) == [p] and p.rto == pytest.approx(0.3)
    assert p.tries == 4 and p.frame == ini._pending[p.tag].frame


def test_initiator_matches_replies_by_tag_and_source():
    h = Harness()
    ini = host()
    p = ini.ata(0, wire.ATA_FLUSH_EXT)
    ev = h.core.receive(p.frame)[0]
    reply = h.core.complete(ev.request)
    # a reply from another MAC is not ours
    forged = bytearray(reply)
    forged[6:12] = OTHER
    assert ini.receive(bytes(forged)) is None
    got = ini.receive(reply)
    assert got is not None and got[0] is p and ini.outstanding == 0
    assert ini.receive(reply) is None           # a duplicate reply


def test_wire_rejects_truncated_and_foreign_frames():
    good = host().reserve(0, wire.RESERVE_SET, [HOST, OTHER]).frame
    with pytest.raises(wire.FrameError):
        wire.parse(good[:20])
    raw = bytearray(good)
    raw[12:14] = b'\x08\x00'
    with pytest.raises(wire.FrameError):
        wire.parse(bytes(raw))
    raw = bytearray(good)
    raw[25] = 200                               # nmacs past the frame
    with pytest.raises(wire.FrameError):
        wire.parse(bytes(raw))


def test_mac_addresses_parse_in_any_case_and_separator():
    assert wire.mac_bytes('02:AB:cd:00:00:01') == bytes.fromhex(
        '02abcd000001')
    assert wire.mac_bytes('02-ab-cd-00-00-01') == bytes.fromhex(
        '02abcd000001')
    for bad in ('02:ab:cd:00:00', '02:ab:cd:00:00:0g', '02abcd000001', ''):
        with pytest.raises(ValueError):
            wire.mac_bytes(bad)
