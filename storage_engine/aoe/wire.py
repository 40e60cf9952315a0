"""ATA over Ethernet, version 1 (Coraid's AoEr11): frames as values.

Parsing and building only; no I/O and no state (the target and initiator
cores are in target.py and initiator.py). Every frame, inbound or outbound,
is a whole Ethernet frame::

    dst(6) src(6) ethertype 0x88A2(2)
    ver<<4|flags(1) error(1) shelf(2, major) slot(1, minor) command(1) tag(4)
    command arguments...

Layouts of the arguments (all multi-byte fields big-endian except the ATA
LBA, which is six bytes little-endian as ATA registers are):

* ATA: aflags err/feature sector_count cmd/status lba0..lba5 reserved(2),
  then the sectors written or read;
* Query Config: buffer_count(2) firmware(2) sector_count(1)
  aoe_version<<4|ccmd(1) config_length(2) config string;
* MAC Mask List: reserved mcmd merror dir_count, then dir_count directives
  of reserved dcmd mac(6);
* Reserve/Release: rcmd nmacs, then nmacs MAC addresses.

:func:`parse` raises :class:`FrameError` for anything it cannot read; the
target never answers those (a target cannot trust a broken frame's header
enough to address a reply).
"""

import dataclasses
import struct
import typing

ETH_P_AOE = 0x88A2
VERSION = 1
SECTOR = 512
ETH_HEADER = 14
AOE_HEADER = 10          # after the Ethernet header
ATA_HEADER = 12
#: Ethernet's minimum frame without the FCS: shorter replies are padded
MIN_FRAME = 60
MAX_CONFIG = 1024
BROADCAST_MAC = b'\xff' * 6
BROADCAST_SHELF = 0xFFFF
BROADCAST_SLOT = 0xFF

# header flags (low nibble of the first byte)
FLAG_RESPONSE = 0x08
FLAG_ERROR = 0x04

# commands
CMD_ATA = 0
CMD_CONFIG = 1
CMD_MASK = 2
CMD_RESERVE = 3
VENDOR_COMMANDS = range(0xF0, 0x100)

# AoE errors
ERR_COMMAND = 1          # unrecognized command code
ERR_ARGUMENT = 2         # bad argument parameter
ERR_UNAVAILABLE = 3      # device unavailable
ERR_CONFIG_PRESENT = 4   # config string present
ERR_VERSION = 5          # unsupported version
ERR_RESERVED = 6         # target is reserved

# Query Config sub-commands
CONFIG_READ = 0
CONFIG_TEST = 1
CONFIG_PREFIX = 2
CONFIG_SET = 3
CONFIG_FORCE_SET = 4

# MAC Mask List
MASK_READ = 0
MASK_EDIT = 1
DIR_NONE = 0
DIR_ADD = 1
DIR_DELETE = 2
MASK_ERR_UNSPECIFIED = 1
MASK_ERR_BAD_DIRECTIVE = 2
MASK_ERR_FULL = 3

# Reserve/Release
RESERVE_READ = 0
RESERVE_SET = 1
RESERVE_FORCE_SET = 2

# ATA argument flags
AFLAG_EXTENDED = 0x40    # LBA48
AFLAG_DEVICE = 0x10
AFLAG_ASYNC = 0x02
AFLAG_WRITE = 0x01

# ATA commands
ATA_READ = 0x20
ATA_READ_EXT = 0x24
ATA_WRITE = 0x30
ATA_WRITE_EXT = 0x34
ATA_FLUSH = 0xE7
ATA_FLUSH_EXT = 0xEA
ATA_IDENTIFY = 0xEC
ATA_CHECK_POWER = 0xE5
ATA_SET_FEATURES = 0xEF

# ATA status and error registers
STATUS_DRDY = 0x40
STATUS_DF = 0x20
STATUS_ERR = 0x01
ATA_ERR_ABRT = 0x04      # command aborted (unsupported, bad argument)
ATA_ERR_IDNF = 0x10      # address out of range
ATA_ERR_UNC = 0x40       # uncorrectable data error (I/O error)

_ETH = struct.Struct('>6s6sH')
_AOE = struct.Struct('>BBHBBI')
_ATA = struct.Struct('>BBBB6s2x')
_CONFIG = struct.Struct('>HHBBH')
_MASK = struct.Struct('>xBBB')
_DIRECTIVE = struct.Struct('>xB6s')
_RESERVE = struct.Struct('>BB')

_ARGS_AT = ETH_HEADER + AOE_HEADER


class FrameError(ValueError):
    """The bytes are not a well-formed AoE frame."""


def mac_text(mac: bytes) -> str:
    return ':'.join('%02x' % b for b in mac)


def mac_bytes(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` (or with ``-``; any case)."""
    parts = text.replace('-', ':').split(':')
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError('%r is not a MAC address' % (text,))
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError('%r is not a MAC address' % (text,)) from None


def sectors_per_frame(mtu: int) -> int:
    """How many sectors one frame carries at ``mtu`` (at most 255)."""
    return max(0, min(255, (mtu - AOE_HEADER - ATA_HEADER) // SECTOR))


# -- arguments ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Ata:
    aflags: int = 0
    err_feature: int = 0
    sector_count: int = 0
    cmd_status: int = 0
    lba: int = 0
    data: bytes = b''

    @property
    def extended(self) -> bool:
        return bool(self.aflags & AFLAG_EXTENDED)

    @property
    def write(self) -> bool:
        return bool(self.aflags & AFLAG_WRITE)

    @property
    def address(self) -> int:
        """The LBA the command means: 48 bits, or 28 in the legacy form."""
        return self.lba if self.extended else self.lba & 0x0FFFFFFF


@dataclasses.dataclass(frozen=True)
class Config:
    buffer_count: int = 0
    firmware: int = 0
    sector_count: int = 0
    version: int = VERSION
    ccmd: int = CONFIG_READ
    config: bytes = b''


@dataclasses.dataclass(frozen=True)
class Mask:
    mcmd: int = MASK_READ
    merror: int = 0
    directives: typing.Tuple[typing.Tuple[int, bytes], ...] = ()


@dataclasses.dataclass(frozen=True)
class Reserve:
    rcmd: int = RESERVE_READ
    macs: typing.Tuple[bytes, ...] = ()


Args = typing.Union[Ata, Config, Mask, Reserve, bytes]


@dataclasses.dataclass(frozen=True)
class Frame:
    dst: bytes
    src: bytes
    shelf: int
    slot: int
    command: int
    tag: int
    args: Args = b''
    flags: int = 0
    error: int = 0
    version: int = VERSION

    @property
    def response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)


# -- parsing ------------------------------------------------------------------

def parse(frame: typing.Union[bytes, bytearray, memoryview]) -> Frame:
    """Read one Ethernet frame; raise :class:`FrameError` if it is not a
    well-formed AoE frame. Arguments of unknown commands, and of frames of
    another version, are left as bytes.
    """
    frame = memoryview(frame)
    if len(frame) < _ARGS_AT:
        raise FrameError('frame of %d bytes is shorter than the AoE header'
                         % len(frame))
    dst, src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_AOE:
        raise FrameError('ethertype %#06x is not AoE' % ethertype)
    verflags, error, shelf, slot, command, tag = _AOE.unpack_from(
        frame, ETH_HEADER)
    version, flags = verflags >> 4, verflags & 0x0F
    body = frame[_ARGS_AT:]
    args: Args
    if version != VERSION:
        args = bytes(body)
    elif command == CMD_ATA:
        args = _parse_ata(body)
    elif command == CMD_CONFIG:
        args = _parse_config(body)
    elif command == CMD_MASK:
        args = _parse_mask(body)
    elif command == CMD_RESERVE:
        args = _parse_reserve(body)
    else:
        args = bytes(body)
    return Frame(dst=bytes(dst), src=bytes(src), shelf=shelf, slot=slot,
                 command=command, tag=tag, args=args, flags=flags,
                 error=error, version=version)


def _parse_ata(body: memoryview) -> Ata:
    if len(body) < ATA_HEADER:
        raise FrameError('ATA arguments of %d bytes, need %d'
                         % (len(body), ATA_HEADER))
    aflags, feature, count, cmd, lba = _ATA.unpack_from(body)
    return Ata(aflags=aflags, err_feature=feature, sector_count=count,
               cmd_status=cmd, lba=int.from_bytes(lba, 'little'),
               data=bytes(body[ATA_HEADER:]))


def _parse_config(body: memoryview) -> Config:
    if len(body) < _CONFIG.size:
        raise FrameError('Query Config arguments of %d bytes, need %d'
                         % (len(body), _CONFIG.size))
    bufcnt, firmware, count, verccmd, length = _CONFIG.unpack_from(body)
    if length > MAX_CONFIG:
        raise FrameError('config string length %d exceeds %d'
                         % (length, MAX_CONFIG))
    config = bytes(body[_CONFIG.size:_CONFIG.size + length])
    if len(config) != length:
        raise FrameError('config string of %d bytes announced, %d present'
                         % (length, len(config)))
    return Config(buffer_count=bufcnt, firmware=firmware,
                  sector_count=count, version=verccmd >> 4,
                  ccmd=verccmd & 0x0F, config=config)


def _parse_mask(body: memoryview) -> Mask:
    if len(body) < _MASK.size:
        raise FrameError('MAC Mask List arguments of %d bytes, need %d'
                         % (len(body), _MASK.size))
    mcmd, merror, count = _MASK.unpack_from(body)
    end = _MASK.size + count * _DIRECTIVE.size
    if len(body) < end:
        raise FrameError('%d mask directives announced, room for %d'
                         % (count, (len(body) - _MASK.size)
                            // _DIRECTIVE.size))
    directives = tuple(
        _DIRECTIVE.unpack_from(body, _MASK.size + i * _DIRECTIVE.size)
        for i in range(count))
    return Mask(mcmd=mcmd, merror=merror, directives=directives)


def _parse_reserve(body: memoryview) -> Reserve:
    if len(body) < _RESERVE.size:
        raise FrameError('Reserve/Release arguments of %d bytes, need %d'
                         % (len(body), _RESERVE.size))
    rcmd, count = _RESERVE.unpack_from(body)
    end = _RESERVE.size + 6 * count
    if len(body) < end:
        raise FrameError('%d reserve MACs announced, room for %d'
                         % (count, (len(body) - _RESERVE.size) // 6))
    macs = tuple(bytes(body[_RESERVE.size + 6 * i:_RESERVE.size + 6 * i + 6])
                 for i in range(count))
    return Reserve(rcmd=rcmd, macs=macs)


# -- building -----------------------------------------------------------------

def pad(frame: bytes) -> bytes:
    """Pad to the Ethernet minimum: veth does not, and some initiators
    (aoetools' aoeping) drop shorter frames.
    """
    if len(frame) < MIN_FRAME:
        return frame + bytes(MIN_FRAME - len(frame))
    return frame


def header(dst: bytes, src: bytes, shelf: int, slot: int, command: int,
           tag: int, flags: int = 0, error: int = 0) -> bytes:
    return (_ETH.pack(dst, src, ETH_P_AOE) +
            _AOE.pack((VERSION << 4) | flags, error, shelf, slot, command,
                      tag))


def encode_args(args: Args) -> bytes:
    if isinstance(args, Ata):
        return _ATA.pack(args.aflags, args.err_feature, args.sector_count,
                         args.cmd_status,
                         args.lba.to_bytes(6, 'little')) + args.data
    if isinstance(args, Config):
        if len(args.config) > MAX_CONFIG:
            raise ValueError('config string longer than %d bytes'
                             % MAX_CONFIG)
        return _CONFIG.pack(args.buffer_count, args.firmware,
                            args.sector_count,
                            (args.version << 4) | args.ccmd,
                            len(args.config)) + args.config
    if isinstance(args, Mask):
        return _MASK.pack(args.mcmd, args.merror, len(args.directives)) + \
            b''.join(_DIRECTIVE.pack(d, m) for d, m in args.directives)
    if isinstance(args, Reserve):
        return _RESERVE.pack(args.rcmd, len(args.macs)) + b''.join(args.macs)
    return bytes(args)


def build(frame: Frame) -> bytes:
    """The bytes of ``frame``, padded to the Ethernet minimum."""
    return pad(header(frame.dst, frame.src, frame.shelf, frame.slot,
                      frame.command, frame.tag, frame.flags, frame.error) +
               encode_args(frame.args))
