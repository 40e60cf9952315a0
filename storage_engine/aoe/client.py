"""A blocking AoE initiator: a volume on the Ethernet as read/write calls.

:class:`AoEClient` finds its target (shelf.slot) with a Query Config,
learns its size from ATA IDENTIFY DEVICE, and then reads and writes with
the LBA48 commands, one frame per ``sectors_per_frame`` sectors, keeping up
to the target's buffer count of frames in flight. Lost frames are sent
again (same tag) until ``timeout`` passes without progress, after which the
call raises :class:`~storage_engine.errors.Unavailable`.

Calls are thread-safe; one call runs at a time on a client (each call
pipelines its own frames). Offsets and lengths are in bytes and must be
multiples of 512; a write returns once the target acknowledged every frame
of it, which our target does only after the data is in the volume; it is
durable after :meth:`AoEClient.flush`.
"""

import errno
import select
import threading
import time
import typing

from storage_engine.aoe import initiator as core_mod
from storage_engine.aoe import rawsocket
from storage_engine.aoe import wire
from storage_engine import errors

AoEError = core_mod.AoEError
ATAError = core_mod.ATAError


class AoEClient:
    def __init__(self, interface: str, shelf: int, slot: int,
                 target_mac: typing.Optional[str] = None,
                 netns: typing.Optional[str] = None, timeout: float = 30.0,
                 rto: float = 0.05, window: typing.Optional[int] = None):
        if not 0 <= shelf < wire.BROADCAST_SHELF:
            raise ValueError('shelf %r is not in 0..65534' % (shelf,))
        if not 0 <= slot < wire.BROADCAST_SLOT:
            raise ValueError('slot %r is not in 0..254' % (slot,))
        self.interface, self.netns = interface, netns
        self.shelf, self.slot = shelf, slot
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock, mac, self.mtu = rawsocket.open_packet_socket(interface,
                                                                 netns)
        self._buf = bytearray(65536)
        self.window = 1                 # until the target says more
        try:
            self._core = core_mod.InitiatorCore(
                mac, shelf, slot,
                wire.mac_bytes(target_mac) if target_mac
                else wire.BROADCAST_MAC, rto=rto)
            self.mac = wire.mac_text(mac)
            reply = self.query_config()
            self.target_mac = reply['mac']
            self._core.target_mac = wire.mac_bytes(self.target_mac)
            self.sectors_per_frame = min(reply['sector_count'],
                                         wire.sectors_per_frame(self.mtu))
            if self.sectors_per_frame < 1:
                raise ValueError('target %d.%d carries no sector per frame'
                                 % (shelf, slot))
            self.buffer_count = max(1, reply['buffer_count'])
            self.window = window or self.buffer_count
            self.config = reply['config']
            info = self.identify()
            self.sectors = info['sectors']
            self.size = self.sectors * wire.SECTOR
            self.read_only = False
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> 'AoEClient':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __repr__(self) -> str:
        return '<AoEClient e%d.%d via %s>' % (self.shelf, self.slot,
                                              self.interface)

    # -- the exchange ---------------------------------------------------------

    def _run(self, requests: typing.Iterator[typing.Callable[[float],
                                                             object]],
             on_reply: typing.Callable[[object, wire.Frame], None]) -> None:
        """Send what ``requests`` makes (each a function of ``now`` that
        registers a request with the core and returns it), at most
        ``window`` at a time, until every one is answered.
        """
        core = self._core
        sock = self._sock
        if sock is None:
            raise errors.Unavailable('AoE client %r is closed' % self)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        more = True
        last_progress = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                while more and core.outstanding < self.window:
                    make = next(requests, None)
                    if make is None:
                        more = False
                        break
                    self._send(make(now).frame)
                if not core.outstanding:
                    return
                for pending in core.due(now):
                    self._send(pending.frame)
                if now - last_progress > self.timeout:
                    raise errors.Unavailable(
                        'AoE target e%d.%d (%s) did not answer within %.0f s'
                        % (self.shelf, self.slot, self.interface,
                           self.timeout), shelf=self.shelf, slot=self.slot)
                wait = max(0.0, min(core.next_deadline() - now,
                                    last_progress + self.timeout - now))
                if not poller.poll(wait * 1000.0):
                    continue
                while True:
                    try:
                        n = sock.recv_into(self._buf)
                    except (BlockingIOError, InterruptedError):
                        break
                    got = core.receive(bytes(memoryview(self._buf)[:n]))
                    if got is None:
                        continue
                    last_progress = time.monotonic()
                    pending, frame = got
                    on_reply(pending, frame)
        except BaseException:
            core.cancel_all()
            raise

    def _send(self, frame: bytes) -> None:
        try:
            self._sock.send(frame)
        except (BlockingIOError, InterruptedError):
            pass                        # resent at its timeout
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:      # resent at its timeout
                raise

    def _one(self, make, command: int = 0) -> wire.Frame:
        replies = []
        with self._lock:
            self._run(iter([make]), lambda _p, f: replies.append(f))
        return core_mod.check(replies[0], command)

    # -- commands -------------------------------------------------------------

    def query_config(self, ccmd: int = wire.CONFIG_READ,
                     config: bytes = b'') -> dict:
        frame = self._one(lambda now: self._core.config(now, ccmd, config))
        cfg: wire.Config = frame.args
        return {'mac': wire.mac_text(frame.src),
                'buffer_count': cfg.buffer_count,
                'firmware': cfg.firmware, 'sector_count': cfg.sector_count,
                'version': cfg.version, 'config': cfg.config}

    def identify(self) -> dict:
        frame = self._one(lambda now: self._core.ata(
            now, wire.ATA_IDENTIFY, count=1), wire.ATA_IDENTIFY)
        data = frame.args.data[:512]
        if len(data) < 512:
            raise AoEError(wire.ERR_ARGUMENT)
        sectors, lba48 = core_mod.capacity(data)
        return {'sectors': sectors, 'lba48': lba48,
                'serial': core_mod.ata_string(data, 20, 20),
                'firmware': core_mod.ata_string(data, 46, 8),
                'model': core_mod.ata_string(data, 54, 40)}

    def mask_list(self) -> typing.List[str]:
        frame = self._one(lambda now: self._core.mask(now))
        return [wire.mac_text(m) for _d, m in frame.args.directives]

    def edit_mask_list(self, directives) -> typing.List[str]:
        """``directives``: (wire.DIR_ADD or DIR_DELETE, 'mac') pairs."""
        frame = self._one(lambda now: self._core.mask(
            now, wire.MASK_EDIT,
            [(d, wire.mac_bytes(m)) for d, m in directives]))
        return [wire.mac_text(m) for _d, m in frame.args.directives]

    def reserve(self, rcmd: int = wire.RESERVE_READ,
                macs: typing.Sequence[str] = ()) -> typing.List[str]:
        frame = self._one(lambda now: self._core.reserve(
            now, rcmd, [wire.mac_bytes(m) for m in macs]))
        return [wire.mac_text(m) for m in frame.args.macs]

    # -- I/O ------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset % wire.SECTOR or length % wire.SECTOR:
            raise errors.UnalignedIO(
                'AoE I/O at %d+%d is not in whole 512-byte sectors'
                % (offset, length), offset=offset, length=length)
        if offset < 0 or offset + length > self.size:
            raise errors.OutOfRange(
                'AoE I/O at %d+%d is past the end (%d bytes)'
                % (offset, length, self.size), offset=offset, length=length)

    def _chunks(self, offset: int, length: int):
        step = self.sectors_per_frame * wire.SECTOR
        for start in range(offset, offset + length, step):
            yield start, min(step, offset + length - start)

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        out = bytearray(length)
        failures = []

        def make(start, n):
            return lambda now: self._core.ata(
                now, wire.ATA_READ_EXT, start // wire.SECTOR,
                n // wire.SECTOR, context=(start, n))

        def got(pending, frame):
            try:
                core_mod.check(frame, wire.ATA_READ_EXT)
            except IOError as exc:
                failures.append(exc)
                return
            start, n = pending.context
            data = frame.args.data
            if len(data) < n:
                failures.append(IOError('AoE read reply of %d bytes for %d'
                                        % (len(data), n)))
                return
            out[start - offset:start - offset + n] = data[:n]

        with self._lock:
            self._run((make(s, n) for s, n in self._chunks(offset, length)),
                      got)
        if failures:
            raise failures[0]
        return bytes(out)

    def write(self, offset: int, data) -> None:
        view = memoryview(data).cast('B')
        self._check_range(offset, len(view))
        failures = []

        def make(start, n):
            chunk = view[start - offset:start - offset + n]
            return lambda now: self._core.ata(
                now, wire.ATA_WRITE_EXT, start // wire.SECTOR,
                n // wire.SECTOR, bytes(chunk))

        def got(_pending, frame):
            try:
                core_mod.check(frame, wire.ATA_WRITE_EXT)
            except IOError as exc:
                failures.append(exc)

        with self._lock:
            self._run((make(s, n) for s, n in
                       self._chunks(offset, len(view))), got)
        if failures:
            raise failures[0]

    def flush(self) -> None:
        # FLUSH CACHE, not its EXT form: it has no LBA, means the same, and
        # every target has it (vblade aborts FLUSH CACHE EXT).
        self._one(lambda now: self._core.ata(now, wire.ATA_FLUSH),
                  wire.ATA_FLUSH)
