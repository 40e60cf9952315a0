"""The AoE target as a sans-IO state machine.

:class:`TargetCore` serves the exports (slots) of one shelf on one
interface. It never touches a socket or a volume: :meth:`TargetCore.receive`
turns one received frame into events, and the I/O layer (server.py) answers
them:

* :class:`Send`: a frame to put on the wire now;
* :class:`Read`, :class:`Write`, :class:`Flush`: volume I/O to perform,
  after which the I/O layer calls :meth:`TargetCore.complete` with the
  outcome and sends the reply frame it returns (None: send nothing, the
  export went away meanwhile).

Access
------
Each export has a MAC Mask List, its access list: only initiators whose
source MAC is on it get any answer (to ATA, Query Config, MAC Mask List and
Reserve/Release alike); everyone else is ignored, as if the slot did not
exist. Unlike the AoE spec's "an empty list admits everyone", an empty
list here admits nobody, as our NBD exports' access lists do. The list is
the management API's to set: edits sent over the wire are refused (MError
1), since an admitted host could otherwise admit another. The same list
bounds the unsolicited announcements (:meth:`TargetCore.announcements`): an
export is announced to each MAC on its list, by unicast, never broadcast.

Reserve/Release works as the spec says: once a reserve list is set, ATA
commands from admitted initiators not on it fail with "target is reserved".

Retransmissions
---------------
An initiator that gets no reply in time sends the same request again, with
the same tag. A request that is still being served is not started twice
(the duplicate is dropped: the first one's reply answers both). A request
already answered gets the same reply again, without running again, unless it
was a read (reads are simply served again): a late duplicate of a write
must not overwrite what a newer write put there. Replies are kept for the
last ``cache_size`` requests.
"""

import collections
import dataclasses
import typing

from storage_engine.aoe import wire

FIRMWARE_VERSION = 0x0100


@dataclasses.dataclass
class Export:
    """What the target knows of one slot (not the volume itself)."""

    slot: int
    #: the size in sectors, or a function returning it (a volume extended
    #: while exported grows at once)
    size: typing.Union[int, typing.Callable[[], int]]
    macs: frozenset
    read_only: bool = False
    serial: str = ''
    model: str = 'storage-engine AoE'
    config: bytes = b''
    reserve: typing.Tuple[bytes, ...] = ()

    @property
    def sectors(self) -> int:
        return self.size() if callable(self.size) else self.size

    def admits(self, mac: bytes) -> bool:
        return mac in self.macs


@dataclasses.dataclass(eq=False)
class Request:
    """A request handed to the I/O layer, to be answered by complete()."""

    #: the parsed frame; None for reads and writes taken by the fast path
    frame: typing.Optional[wire.Frame]
    export: Export
    key: tuple
    digest: int
    #: the frame as received
    raw: bytes = b''


@dataclasses.dataclass
class Send:
    frame: bytes


@dataclasses.dataclass
class Read:
    request: Request
    slot: int
    offset: int
    length: int


@dataclasses.dataclass
class Write:
    request: Request
    slot: int
    offset: int
    data: bytes


@dataclasses.dataclass
class Flush:
    request: Request
    slot: int


Event = typing.Union[Send, Read, Write, Flush]


def identify_data(sectors: int, serial: str, model: str,
                  firmware: str = '1.0') -> bytes:
    """ATA IDENTIFY DEVICE data: a fixed LBA48 disk of ``sectors``."""
    words = [0] * 256
    words[0] = 0x0040                       # fixed device
    cylinders = min(sectors // (16 * 63), 16383)
    words[1], words[3], words[6] = cylinders, 16, 63
    words[47] = 0x8000
    words[49] = 0x0200                      # LBA supported
    words[53] = 0x0001
    lba28 = min(sectors, 0x0FFFFFFF)
    words[60], words[61] = lba28 & 0xFFFF, lba28 >> 16
    words[80] = 0x00F0                      # ATA/ATAPI-4..7
    # 48-bit addressing, FLUSH CACHE and FLUSH CACHE EXT: supported ...
    words[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400
    words[84] = 0x4000
    words[85] = 0x0000
    # ... and enabled
    words[86] = 0x2000 | 0x1000 | 0x0400
    words[87] = 0x4000
    for i in range(4):
        words[100 + i] = (sectors >> (16 * i)) & 0xFFFF
    data = bytearray(b''.join(w.to_bytes(2, 'little') for w in words))

    def ata_string(text: str, start: int, length: int) -> None:
        raw = text.encode('ascii', 'replace')[:length].ljust(length)
        # ATA strings: two characters per word, the first in the high byte
        for i in range(0, length, 2):
            data[start + i] = raw[i + 1]
            data[start + i + 1] = raw[i]

    ata_string(serial, 20, 20)
    ata_string(firmware, 46, 8)
    ata_string(model, 54, 40)
    return bytes(data)


# Offsets in a received ATA request (Ethernet header included).
_AT_VERFLAGS, _AT_SHELF, _AT_SLOT, _AT_COMMAND, _AT_TAG = 14, 16, 18, 19, 20
_AT_AFLAGS, _AT_COUNT, _AT_CMD, _AT_LBA, _AT_DATA = 24, 26, 27, 28, 36
_FAST_CMDS = (wire.ATA_READ_EXT, wire.ATA_WRITE_EXT)
_ETH_AOE = wire.ETH_P_AOE.to_bytes(2, 'big')


def _digest(frame: bytes) -> int:
    # Tells a retransmission (the same bytes) from a new request that
    # reuses a tag. Python's bytes hash is keyed SipHash, randomised per
    # process, so a peer cannot make two requests collide on purpose.
    return hash(frame)


class TargetCore:
    """The exports of ``shelf`` served from interface MAC ``mac``."""

    def __init__(self, mac: bytes, shelf: int, mtu: int,
                 buffer_count: int = 16, cache_size: int = 4096):
        if not 0 <= shelf < wire.BROADCAST_SHELF:
            raise ValueError('shelf %r is not in 0..65534' % (shelf,))
        self.mac = bytes(mac)
        self.shelf = shelf
        self._shelf_bytes = shelf.to_bytes(2, 'big')
        self.sectors_per_frame = wire.sectors_per_frame(mtu)
        if self.sectors_per_frame < 2:
            raise ValueError('MTU %d carries fewer than 2 sectors per frame'
                             % mtu)
        self.buffer_count = buffer_count
        self._exports: typing.Dict[int, Export] = {}
        self._inflight: typing.Dict[tuple, bytes] = {}
        self._answered: 'collections.OrderedDict[tuple, tuple]' = \
            collections.OrderedDict()
        self._cache_size = cache_size

    # -- exports --------------------------------------------------------------

    def add(self, slot: int, sectors, macs, read_only: bool = False,
            serial: str = '', model: str = 'storage-engine AoE') -> Export:
        if not 0 <= slot < wire.BROADCAST_SLOT:
            raise ValueError('slot %r is not in 0..254' % (slot,))
        if slot in self._exports:
            raise ValueError('slot %d is already exported' % slot)
        export = Export(slot=slot, size=sectors,
                        macs=frozenset(bytes(m) for m in macs),
                        read_only=read_only, serial=serial, model=model)
        self._exports[slot] = export
        return export

    def remove(self, slot: int) -> Export:
        export = self._exports.pop(slot)
        # Forget the answers of this slot: a new export in it must not
        # replay them.
        for key in [k for k in self._answered if k[2] == slot]:
            del self._answered[key]
        return export

    def get(self, slot: int) -> typing.Optional[Export]:
        return self._exports.get(slot)

    def __contains__(self, slot: int) -> bool:
        return slot in self._exports

    def __len__(self) -> int:
        return len(self._exports)

    def announcements(self, slot: typing.Optional[int] = None
                      ) -> typing.List[bytes]:
        """The unsolicited Query Config replies that tell initiators an
        export exists (what lets a kernel initiator find it without
        polling): those of ``slot``, or of every export when None.

        An export is announced only to the initiators it admits: one frame
        per MAC on its mask list, sent to that MAC alone, and none for an
        empty list. Never broadcast: a host the export does not admit must
        not learn that the slot exists, nor its config string.
        """
        slots = sorted(self._exports) if slot is None else [slot]
        frames = []
        for number in slots:
            export = self._exports[number]
            args = self._config_args(export)
            frames.extend(wire.build(wire.Frame(
                dst=mac, src=self.mac, shelf=self.shelf, slot=number,
                command=wire.CMD_CONFIG, tag=0, flags=wire.FLAG_RESPONSE,
                args=args)) for mac in sorted(export.macs))
        return frames

    # -- receiving ------------------------------------------------------------

    def receive(self, raw: bytes) -> typing.List[Event]:
        """The events one received frame causes (often none)."""
        raw = bytes(raw)
        if (len(raw) >= _AT_DATA and raw[_AT_CMD] in _FAST_CMDS and
                raw[_AT_VERFLAGS] == wire.VERSION << 4 and
                raw[_AT_COMMAND] == wire.CMD_ATA and
                raw[12:14] == _ETH_AOE and raw[:6] == self.mac and
                raw[_AT_SHELF:_AT_SLOT] == self._shelf_bytes):
            # The fast path: a unicast LBA48 read or write. Everything
            # else (errors included) goes the general way.
            export = self._exports.get(raw[_AT_SLOT])
            src = raw[6:12]
            if export is None or src not in export.macs:
                return []
            if not export.reserve or src in export.reserve:
                return self._request(
                    None, export, src,
                    int.from_bytes(raw[_AT_TAG:_AT_AFLAGS], 'big'), raw)
        try:
            frame = wire.parse(raw)
        except wire.FrameError:
            return []
        if frame.response or frame.command in wire.VENDOR_COMMANDS:
            return []
        if frame.dst != self.mac and frame.dst != wire.BROADCAST_MAC:
            return []
        if frame.shelf not in (self.shelf, wire.BROADCAST_SHELF):
            return []
        if frame.slot == wire.BROADCAST_SLOT:
            targets = [e for _s, e in sorted(self._exports.items())]
        else:
            export = self._exports.get(frame.slot)
            targets = [export] if export is not None else []
        targets = [e for e in targets if e.admits(frame.src)]
        if not targets:
            return []
        broadcast = (frame.shelf == wire.BROADCAST_SHELF or
                     frame.slot == wire.BROADCAST_SLOT)
        if broadcast and frame.command != wire.CMD_CONFIG:
            # Only discovery may be broadcast.
            return []
        events: typing.List[Event] = []
        for export in targets:
            events.extend(self._request(frame, export, frame.src, frame.tag,
                                        raw))
        return events

    def _request(self, frame: typing.Optional[wire.Frame], export: Export,
                 src: bytes, tag: int, raw: bytes) -> typing.List[Event]:
        key = (src, self.shelf, export.slot, tag)
        digest = _digest(raw)
        if self._inflight.get(key) == digest:
            return []                   # the first one's reply will do
        answered = self._answered.get(key)
        if answered is not None and answered[0] == digest:
            return [Send(answered[1])]
        request = Request(frame=frame, export=export, key=key,
                          digest=digest, raw=raw)
        if frame is None:
            return self._rw(request)
        if frame.version != wire.VERSION:
            return self._answer(request, self._error(request,
                                                     wire.ERR_VERSION))
        if frame.command == wire.CMD_ATA:
            return self._ata(request)
        if frame.command == wire.CMD_CONFIG:
            return self._config(request)
        if frame.command == wire.CMD_MASK:
            return self._mask(request)
        if frame.command == wire.CMD_RESERVE:
            return self._reserve(request)
        return self._answer(request, self._error(request, wire.ERR_COMMAND))

    # -- replies --------------------------------------------------------------

    def _reply(self, request: Request, args, flags: int = 0,
               error: int = 0) -> bytes:
        f = request.frame
        return wire.build(wire.Frame(
            dst=f.src, src=self.mac, shelf=self.shelf,
            slot=request.export.slot, command=f.command, tag=f.tag,
            flags=wire.FLAG_RESPONSE | flags, error=error, args=args))

    def _error(self, request: Request, code: int) -> bytes:
        args = request.frame.args
        if isinstance(args, wire.Ata):
            args = dataclasses.replace(args, data=b'')
        elif isinstance(args, bytes):
            args = b''
        return self._reply(request, args, flags=wire.FLAG_ERROR, error=code)

    def _answer(self, request: Request, reply: bytes,
                remember: bool = True) -> typing.List[Event]:
        if remember:
            self._remember(request, reply)
        return [Send(reply)]

    def _remember(self, request: Request, reply: bytes) -> None:
        self._answered[request.key] = (request.digest, reply)
        self._answered.move_to_end(request.key)
        while len(self._answered) > self._cache_size:
            self._answered.popitem(last=False)

    def _start(self, request: Request, event: Event) -> typing.List[Event]:
        self._inflight[request.key] = request.digest
        return [event]

    def complete(self, request: Request, data: typing.Optional[bytes] = None,
                 error: typing.Optional[BaseException] = None
                 ) -> typing.Optional[bytes]:
        """The reply to ``request`` once its I/O is done (``data`` for a
        read), or None if its export is gone.
        """
        if self._inflight.get(request.key) == request.digest:
            del self._inflight[request.key]
        if self._exports.get(request.export.slot) is not request.export:
            return None
        read = request.raw[_AT_CMD] in (wire.ATA_READ, wire.ATA_READ_EXT)
        if error is not None:
            # ATA has no "no space" status: a write or flush refused for
            # want of space (ENOSPC) is aborted (ABRT), as any failed
            # write; the Linux aoe driver reports EIO either way. A read
            # fails with UNC.
            reply = self._ata_reply(
                request, wire.ATA_ERR_UNC if read else wire.ATA_ERR_ABRT)
        else:
            reply = self._ata_reply(request, 0, data or b'')
        if not read:
            # Writes and flushes are replayed, never run twice.
            self._remember(request, reply)
        return reply

    # -- ATA ------------------------------------------------------------------

    def _ata_reply(self, request: Request, ata_error: int,
                   data: bytes = b'') -> bytes:
        """The reply to an ATA request, built from its bytes: the request's
        flags, count and LBA echoed, the status and error set, ``data``.
        """
        raw = request.raw
        status = wire.STATUS_DRDY | (wire.STATUS_ERR if ata_error else 0)
        return wire.pad(b''.join((
            raw[6:12], self.mac, _ETH_AOE,
            bytes(((wire.VERSION << 4) | wire.FLAG_RESPONSE, 0)),
            self._shelf_bytes, bytes((request.export.slot, wire.CMD_ATA)),
            raw[_AT_TAG:_AT_AFLAGS + 1], bytes((ata_error,)),
            raw[_AT_COUNT:_AT_CMD], bytes((status,)),
            raw[_AT_LBA:_AT_DATA - 2], b'\0\0', data)))

    def _ata(self, request: Request) -> typing.List[Event]:
        export = request.export
        ata: wire.Ata = request.frame.args
        if export.reserve and request.frame.src not in export.reserve:
            return self._answer(request,
                                self._error(request, wire.ERR_RESERVED))
        cmd = ata.cmd_status
        if cmd == wire.ATA_IDENTIFY:
            return self._answer(request, self._ata_reply(
                request, 0, identify_data(export.sectors, export.serial,
                                          export.model)))
        if cmd in (wire.ATA_READ, wire.ATA_READ_EXT, wire.ATA_WRITE,
                   wire.ATA_WRITE_EXT):
            return self._rw(request)
        if cmd in (wire.ATA_FLUSH, wire.ATA_FLUSH_EXT):
            return self._start(request, Flush(request, export.slot))
        if cmd == wire.ATA_CHECK_POWER:
            return self._answer(request, self._reply(request, wire.Ata(
                aflags=ata.aflags, sector_count=0xFF,
                cmd_status=wire.STATUS_DRDY, lba=ata.lba)))
        if cmd == wire.ATA_SET_FEATURES:
            return self._answer(request, self._ata_reply(request, 0))
        return self._answer(request, self._ata_reply(request,
                                                     wire.ATA_ERR_ABRT))

    def _rw(self, request: Request) -> typing.List[Event]:
        """READ/WRITE SECTORS (EXT), from the request's bytes (both paths
        come here).
        """
        export, raw = request.export, request.raw
        cmd, aflags, count = raw[_AT_CMD], raw[_AT_AFLAGS], raw[_AT_COUNT]
        write = cmd in (wire.ATA_WRITE, wire.ATA_WRITE_EXT)
        extended = cmd in (wire.ATA_READ_EXT, wire.ATA_WRITE_EXT)
        lba = int.from_bytes(raw[_AT_LBA:_AT_DATA - 2], 'little')
        if not extended:
            lba &= 0x0FFFFFFF
        if (extended != bool(aflags & wire.AFLAG_EXTENDED) or
                write != bool(aflags & wire.AFLAG_WRITE) or count == 0
                or count > self.sectors_per_frame):
            return self._answer(request, self._ata_reply(
                request, wire.ATA_ERR_ABRT))
        if lba + count > export.sectors:
            return self._answer(request, self._ata_reply(
                request, wire.ATA_ERR_IDNF))
        offset, length = lba * wire.SECTOR, count * wire.SECTOR
        if not write:
            return self._start(request, Read(request, export.slot, offset,
                                             length))
        if export.read_only or len(raw) < _AT_DATA + length:
            return self._answer(request, self._ata_reply(
                request, wire.ATA_ERR_ABRT))
        return self._start(request, Write(request, export.slot, offset,
                                          raw[_AT_DATA:_AT_DATA + length]))

    # -- Query Config ---------------------------------------------------------

    def _config_args(self, export: Export, ccmd: int = wire.CONFIG_READ
                     ) -> wire.Config:
        return wire.Config(buffer_count=self.buffer_count,
                           firmware=FIRMWARE_VERSION,
                           sector_count=self.sectors_per_frame,
                           version=wire.VERSION, ccmd=ccmd,
                           config=export.config)

    def _config(self, request: Request) -> typing.List[Event]:
        export = request.export
        cfg: wire.Config = request.frame.args
        ccmd = cfg.ccmd
        if ccmd == wire.CONFIG_READ:
            pass
        elif ccmd == wire.CONFIG_TEST:
            if export.config != cfg.config:
                return []
        elif ccmd == wire.CONFIG_PREFIX:
            if not export.config.startswith(cfg.config):
                return []
        elif ccmd == wire.CONFIG_SET:
            if export.config and export.config != cfg.config:
                return self._answer(request, self._reply(
                    request, self._config_args(export, ccmd),
                    flags=wire.FLAG_ERROR, error=wire.ERR_CONFIG_PRESENT))
            export.config = cfg.config
        elif ccmd == wire.CONFIG_FORCE_SET:
            export.config = cfg.config
        else:
            return self._answer(request,
                                self._error(request, wire.ERR_ARGUMENT))
        # Reads and tests are not remembered: they change nothing.
        return self._answer(request, self._reply(
            request, self._config_args(export, ccmd)),
            remember=ccmd in (wire.CONFIG_SET, wire.CONFIG_FORCE_SET))

    # -- MAC Mask List and Reserve/Release ------------------------------------

    def _mask(self, request: Request) -> typing.List[Event]:
        export = request.export
        mask: wire.Mask = request.frame.args
        listed = tuple((wire.DIR_NONE, m) for m in sorted(export.macs))
        if mask.mcmd == wire.MASK_READ:
            return self._answer(request, self._reply(
                request, wire.Mask(mcmd=wire.MASK_READ, directives=listed)),
                remember=False)
        if mask.mcmd == wire.MASK_EDIT:
            # The access list belongs to the management API.
            return self._answer(request, self._reply(
                request, wire.Mask(mcmd=wire.MASK_EDIT,
                                   merror=wire.MASK_ERR_UNSPECIFIED,
                                   directives=listed)))
        return self._answer(request, self._error(request,
                                                 wire.ERR_ARGUMENT))

    def _reserve(self, request: Request) -> typing.List[Event]:
        export = request.export
        res: wire.Reserve = request.frame.args
        if res.rcmd == wire.RESERVE_READ:
            return self._answer(request, self._reply(
                request, wire.Reserve(rcmd=res.rcmd, macs=export.reserve)),
                remember=False)
        if res.rcmd == wire.RESERVE_SET:
            if export.reserve and request.frame.src not in export.reserve:
                return self._answer(request, self._error(
                    request, wire.ERR_RESERVED))
        elif res.rcmd != wire.RESERVE_FORCE_SET:
            return self._answer(request, self._error(request,
                                                     wire.ERR_ARGUMENT))
        export.reserve = tuple(dict.fromkeys(res.macs))
        return self._answer(request, self._reply(
            request, wire.Reserve(rcmd=res.rcmd, macs=export.reserve)))
