"""The AoE initiator as a sans-IO state machine.

:class:`InitiatorCore` builds request frames for one target (shelf.slot),
keeps the requests that have no answer yet, says which are due for a
retransmission at a given time, and matches received frames to them. It
never reads a clock or a socket: callers pass ``now`` and the bytes
(client.py is the blocking I/O layer around it).

A retransmission repeats the request byte for byte, with its tag, so a
target can tell it from a new request (our target answers it without
running it twice). The retransmission timeout doubles on every retry of a
request, from ``rto`` up to ``max_rto``.
"""

import dataclasses
import random
import typing

from storage_engine.aoe import wire


class AoEError(IOError):
    """The target answered with an AoE error."""

    MESSAGES = {
        wire.ERR_COMMAND: 'unrecognized command code',
        wire.ERR_ARGUMENT: 'bad argument parameter',
        wire.ERR_UNAVAILABLE: 'device unavailable',
        wire.ERR_CONFIG_PRESENT: 'config string present',
        wire.ERR_VERSION: 'unsupported version',
        wire.ERR_RESERVED: 'target is reserved',
    }

    def __init__(self, code: int):
        super().__init__('AoE error %d: %s'
                         % (code, self.MESSAGES.get(code, 'unknown')))
        self.code = code


class ATAError(IOError):
    """The target ran the ATA command and it failed."""

    def __init__(self, command: int, status: int, error: int):
        what = ('address out of range' if error & wire.ATA_ERR_IDNF else
                'I/O error' if error & wire.ATA_ERR_UNC else
                'command aborted' if error & wire.ATA_ERR_ABRT else
                'error')
        super().__init__('ATA command %#04x failed: %s (status %#04x, '
                         'error %#04x)' % (command, what, status, error))
        self.command, self.status, self.error = command, status, error


@dataclasses.dataclass
class Pending:
    tag: int
    frame: bytes
    sent_at: float
    deadline: float
    rto: float
    tries: int = 1
    context: typing.Any = None


class InitiatorCore:
    """Requests to ``shelf``.``slot`` from ``mac``."""

    def __init__(self, mac: bytes, shelf: int, slot: int,
                 target_mac: bytes = wire.BROADCAST_MAC, rto: float = 0.05,
                 max_rto: float = 1.0):
        self.mac = bytes(mac)
        self.shelf, self.slot = shelf, slot
        self.target_mac = bytes(target_mac)
        self.rto, self.max_rto = rto, max_rto
        self.sectors_per_frame = 2
        self._tag = random.getrandbits(31)
        self._pending: typing.Dict[int, Pending] = {}

    # -- building -------------------------------------------------------------

    def _next_tag(self) -> int:
        self._tag = (self._tag + 1) & 0x7FFFFFFF
        return self._tag

    def request(self, command: int, args, now: float,
                context: typing.Any = None) -> Pending:
        """A new request, recorded as pending; send ``pending.frame``."""
        tag = self._next_tag()
        frame = wire.build(wire.Frame(
            dst=self.target_mac, src=self.mac, shelf=self.shelf,
            slot=self.slot, command=command, tag=tag, args=args))
        pending = Pending(tag=tag, frame=frame, sent_at=now,
                          deadline=now + self.rto, rto=self.rto,
                          context=context)
        self._pending[tag] = pending
        return pending

    def config(self, now: float, ccmd: int = wire.CONFIG_READ,
               config: bytes = b'', context=None) -> Pending:
        return self.request(wire.CMD_CONFIG,
                            wire.Config(ccmd=ccmd, config=config), now,
                            context)

    def ata(self, now: float, command: int, lba: int = 0, count: int = 0,
            data: bytes = b'', context=None) -> Pending:
        extended = command in (wire.ATA_READ_EXT, wire.ATA_WRITE_EXT,
                               wire.ATA_FLUSH_EXT)
        write = command in (wire.ATA_WRITE, wire.ATA_WRITE_EXT)
        aflags = ((wire.AFLAG_EXTENDED if extended else 0) |
                  (wire.AFLAG_WRITE if write else 0))
        if not extended and command in (wire.ATA_READ, wire.ATA_WRITE):
            lba = (lba & 0x0FFFFFFF) | (0xE0 << 24)
        return self.request(wire.CMD_ATA, wire.Ata(
            aflags=aflags, sector_count=count, cmd_status=command,
            lba=lba, data=bytes(data)), now, context)

    def mask(self, now: float, mcmd: int = wire.MASK_READ,
             directives=(), context=None) -> Pending:
        return self.request(wire.CMD_MASK, wire.Mask(
            mcmd=mcmd, directives=tuple(directives)), now, context)

    def reserve(self, now: float, rcmd: int = wire.RESERVE_READ, macs=(),
                context=None) -> Pending:
        return self.request(wire.CMD_RESERVE, wire.Reserve(
            rcmd=rcmd, macs=tuple(macs)), now, context)

    # -- timing ---------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def next_deadline(self) -> typing.Optional[float]:
        if not self._pending:
            return None
        return min(p.deadline for p in self._pending.values())

    def due(self, now: float) -> typing.List[Pending]:
        """Requests to send again now (their timers are re-armed)."""
        out = []
        for p in self._pending.values():
            if p.deadline <= now:
                p.rto = min(p.rto * 2, self.max_rto)
                p.deadline = now + p.rto
                p.tries += 1
                out.append(p)
        return out

    def cancel(self, tag: int) -> None:
        self._pending.pop(tag, None)

    def cancel_all(self) -> None:
        self._pending.clear()

    # -- receiving ------------------------------------------------------------

    def receive(self, raw: bytes
                ) -> typing.Optional[typing.Tuple[Pending, wire.Frame]]:
        """The pending request ``raw`` answers, and the parsed reply; None
        for anything else (other traffic, duplicates, broken frames).
        """
        try:
            frame = wire.parse(raw)
        except wire.FrameError:
            return None
        if (not frame.response or frame.dst != self.mac or
                frame.shelf != self.shelf or frame.slot != self.slot):
            return None
        pending = self._pending.get(frame.tag)
        if pending is None:
            return None
        if (self.target_mac != wire.BROADCAST_MAC and
                frame.src != self.target_mac):
            return None
        del self._pending[frame.tag]
        return pending, frame


def check(frame: wire.Frame, command: int = 0) -> wire.Frame:
    """Raise the error a reply carries, else return it."""
    if frame.flags & wire.FLAG_ERROR:
        raise AoEError(frame.error)
    args = frame.args
    if isinstance(args, wire.Ata) and args.cmd_status & (
            wire.STATUS_ERR | wire.STATUS_DF):
        raise ATAError(command, args.cmd_status, args.err_feature)
    if isinstance(args, wire.Mask) and args.merror:
        raise AoEError(wire.ERR_ARGUMENT)
    return frame


def capacity(identify: bytes) -> typing.Tuple[int, bool]:
    """Sectors and LBA48 support, from IDENTIFY DEVICE data."""
    words = [int.from_bytes(identify[i:i + 2], 'little')
             for i in range(0, 512, 2)]
    lba48 = (words[83] & 0xC000) == 0x4000 and bool(words[83] & 0x0400)
    if lba48:
        return sum(words[100 + i] << (16 * i) for i in range(4)), True
    return words[60] | (words[61] << 16), False


def ata_string(identify: bytes, start: int, length: int) -> str:
    raw = bytearray()
    for i in range(start, start + length, 2):
        raw += bytes((identify[i + 1], identify[i]))
    return raw.decode('ascii', 'replace').strip()
