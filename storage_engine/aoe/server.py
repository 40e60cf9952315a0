"""The AoE target's I/O layer: one raw socket on one interface, on asyncio.

:class:`AoETarget` feeds received frames to the sans-IO
:class:`~storage_engine.aoe.target.TargetCore` and performs what it asks:
frames are sent at once; writes land in the volume inline (the page cache,
as the NBD server does), reads are served inline when the data is cached
and from a worker thread otherwise, flushes always run in a worker thread.
A reply is sent only after the write it acknowledges is in the volume.

Frames are datagrams: one the socket cannot take now (ENOBUFS) is dropped,
and the initiator sends the request again after its timeout, which the core
answers without running the request twice.
"""

import asyncio
import concurrent.futures
import errno
import typing

from oslo_log import log as logging

from storage_engine.aoe import rawsocket
from storage_engine.aoe import target as core_mod
from storage_engine.aoe import wire
from storage_engine import errors

LOG = logging.getLogger(__name__)

#: frames read per wake-up before other callbacks get a turn
RECV_BATCH = 128
MAX_FRAME = 65536


class AoETarget:
    """The AoE exports (slots) of ``shelf`` on ``interface``."""

    def __init__(self, interface: str, shelf: int,
                 netns: typing.Optional[str] = None, buffer_count: int = 16,
                 executor: concurrent.futures.Executor | None = None):
        self.interface = interface
        self.shelf = shelf
        self.netns = netns
        self.buffer_count = buffer_count
        self.executor = executor
        self.core: typing.Optional[core_mod.TargetCore] = None
        self._sock = None
        self._loop: typing.Optional[asyncio.AbstractEventLoop] = None
        self._backends: typing.Dict[int, typing.Any] = {}
        self._buf = bytearray(MAX_FRAME)
        self.mac = ''
        self.mtu = 0
        self.sectors_per_frame = 0
        self.dropped = 0

    async def start(self) -> None:
        """Open the socket and announce what is already exported (to the
        initiators each export admits).
        """
        sock, mac, mtu = rawsocket.open_packet_socket(self.interface,
                                                      self.netns)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self.core = core_mod.TargetCore(mac, self.shelf, mtu,
                                        self.buffer_count)
        self.mac = wire.mac_text(mac)
        self.mtu = mtu
        self.sectors_per_frame = self.core.sectors_per_frame
        self._loop.add_reader(sock.fileno(), self._on_readable)
        LOG.info('AoE target on %s%s (%s, MTU %d: %d sectors per frame), '
                 'shelf %d', self.interface,
                 ' in network namespace %s' % self.netns if self.netns
                 else '', self.mac, mtu, self.sectors_per_frame, self.shelf)
        for frame in self.core.announcements():
            self._send(frame)

    async def close(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # -- exports (on the loop) ------------------------------------------------

    def add(self, slot: int, backend, macs: typing.Iterable[str],
            read_only: bool = False, description: str = '') -> None:
        """Serve ``backend`` in ``slot`` to the initiators ``macs``."""
        ident = str(getattr(backend, 'id', '') or '').replace('-', '')
        self.core.add(slot, lambda: backend.size // wire.SECTOR,
                      [wire.mac_bytes(m) for m in macs],
                      read_only=bool(read_only or backend.read_only),
                      serial=ident[:20],
                      model=('storage-engine %s' % description)[:40])
        self._backends[slot] = backend
        # Announced to the initiators it admits only, one frame each.
        for frame in self.core.announcements(slot):
            self._send(frame)

    def remove(self, slot: int) -> None:
        """Stop serving ``slot``: no reply leaves for it after this."""
        self.core.remove(slot)
        self._backends.pop(slot, None)

    def __contains__(self, slot: int) -> bool:
        return self.core is not None and slot in self.core

    # -- frames ---------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if self._sock is None:
            return
        try:
            self._sock.send(frame)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1
        except OSError as exc:
            if exc.errno not in (errno.ENOBUFS, errno.ENETDOWN,
                                 errno.ENXIO):
                raise
            self.dropped += 1

    def _on_readable(self) -> None:
        sock, view = self._sock, memoryview(self._buf)
        for _ in range(RECV_BATCH):
            if sock is None or self._sock is not sock:
                return
            try:
                n = sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                LOG.warning('AoE receive on %s: %s', self.interface, exc)
                return
            for event in self.core.receive(bytes(view[:n])):
                self._handle(event)

    def _handle(self, event) -> None:
        if isinstance(event, core_mod.Send):
            self._send(event.frame)
            return
        backend = self._backends.get(event.slot)
        if backend is None:
            return
        request = event.request
        if isinstance(event, core_mod.Write):
            try:
                backend.write(event.offset, event.data)
            except (errors.EngineError, OSError) as exc:
                return self._complete(request, error=exc)
            return self._complete(request)
        if isinstance(event, core_mod.Read):
            try:
                data = backend.read(event.offset, event.length, nowait=True)
            except BlockingIOError:
                return self._in_thread(request, backend.read, event.offset,
                                       event.length)
            except (errors.EngineError, OSError) as exc:
                return self._complete(request, error=exc)
            return self._complete(request, data=data)
        if isinstance(event, core_mod.Flush):
            return self._in_thread(request, backend.flush)

    def _in_thread(self, request, fn, *args) -> None:
        fut = self._loop.run_in_executor(self.executor, fn, *args)

        def done(f):
            exc = f.exception()
            if exc is not None:
                if not isinstance(exc, (errors.EngineError, OSError)):
                    LOG.error('AoE %s slot %d: unexpected error %r',
                              self.interface, request.export.slot, exc)
                self._complete(request, error=exc)
            else:
                self._complete(request, data=f.result())
        fut.add_done_callback(done)

    def _complete(self, request, data=None, error=None) -> None:
        if error is not None:
            LOG.warning('AoE %s slot %d: I/O failed: %s', self.interface,
                        request.export.slot, error)
        reply = self.core.complete(request, data=data, error=error)
        if reply is not None:
            self._send(reply)
