"""The NBD server: a thin asyncio layer around the sans-IO core.

One :class:`NBDServer` serves many exports to many clients on TCP and Unix
sockets. Each connection is an ``asyncio.Protocol`` that feeds received
bytes to :class:`~storage_engine.nbd.protocol.ServerConnection` and acts on
the events it returns; every protocol rule lives in the core.

Where the work runs, and why:

* READ first tries to read without blocking (``preadv2`` with
  ``RWF_NOWAIT``): data in the page cache is served inline, which costs
  far less than a hand-off to a thread. A read that would wait for the disk
  goes to the thread pool, so the loop never stalls on a disk.
* WRITE, TRIM and WRITE_ZEROES land in the page cache and run inline.
* FLUSH and FUA (``fdatasync``) run in the thread pool; their replies go
  out when they finish, in any order relative to other replies.

CAN_MULTI_CONN is advertised: a flush commits the whole volume group, so it
covers writes completed on every connection to the export, which is the
promise the flag makes.

Access control happens in the handshake (see exports.py): LIST shows a
client only the exports its access list admits, and INFO/GO/EXPORT_NAME of
any other name answer as for a name that does not exist. With ``tls_mode``
'require', every option but STARTTLS (and ABORT) is refused with
NBD_REP_ERR_TLS_REQD until TLS is up.
"""

import asyncio
import concurrent.futures
import ipaddress
import os
import socket
import ssl

from oslo_log import log as logging

from storage_engine import errors
from storage_engine.nbd import constants as const
from storage_engine.nbd import exports as exports_mod
from storage_engine.nbd import protocol as proto
from storage_engine.nbd import tls as tls_mod

LOG = logging.getLogger(__name__)

TLS_OFF = 'off'
TLS_OPTIONAL = 'optional'
TLS_REQUIRE = 'require'

MIN_BLOCK = 512
PREFERRED_BLOCK = 4096
MAX_PAYLOAD = 32 * 1024 * 1024
# Most block status a single reply describes (the spec lets a server
# answer for less than asked; clients ask again from there).
MAX_STATUS_LENGTH = 1 << 32
# Requests handed to threads before we stop reading from a client.
MAX_BACKGROUND = 64
# Replies shorter than this are joined into one send.
_JOIN_LIMIT = 64 * 1024
# Reads this large copy their data in the thread pool: the copy then
# overlaps with the loop and needs no zero-filled buffer (a plain pread);
# the hand-off is cheap next to the copy. (Large writes measured faster
# inline: their copy into the page cache is the write itself.)
LARGE_IO = int(os.environ.get('SE_NBD_LARGE_IO', 128 * 1024))
SEND_BUFFER = 4 * 1024 * 1024
WRITE_BUFFER_HIGH = 16 * 1024 * 1024

_NBD_ERRNOS = {const.NBD_EPERM, const.NBD_EIO, const.NBD_ENOMEM,
               const.NBD_EINVAL, const.NBD_ENOSPC, const.NBD_EOVERFLOW,
               const.NBD_ENOTSUP, const.NBD_ESHUTDOWN}


def nbd_errno(exc: BaseException) -> int:
    """The NBD error code for an exception from a backend."""
    code = getattr(exc, 'errno', None)
    if isinstance(exc, errors.GroupClosed):
        return const.NBD_ESHUTDOWN
    return code if code in _NBD_ERRNOS else const.NBD_EIO


def transmission_flags(export: exports_mod.Export, structured: bool) -> int:
    flags = (const.NBD_FLAG_HAS_FLAGS | const.NBD_FLAG_SEND_FLUSH |
             const.NBD_FLAG_SEND_FUA | const.NBD_FLAG_CAN_MULTI_CONN |
             const.NBD_FLAG_SEND_CACHE)
    if structured:
        # DF only means something with structured replies (and the spec
        # forbids advertising it without them).
        flags |= const.NBD_FLAG_SEND_DF
    if export.writable:
        flags |= (const.NBD_FLAG_SEND_TRIM | const.NBD_FLAG_SEND_WRITE_ZEROES
                  | const.NBD_FLAG_SEND_FAST_ZERO)
    else:
        flags |= const.NBD_FLAG_READ_ONLY
    return flags


class NBDServer:
    """Serve the exports of ``table`` (which may change while serving)."""

    def __init__(self, table: exports_mod.ExportTable,
                 tls: tls_mod.TLSConfig = None, tls_mode: str = TLS_OFF,
                 executor: concurrent.futures.Executor = None,
                 max_payload: int = MAX_PAYLOAD):
        if tls_mode not in (TLS_OFF, TLS_OPTIONAL, TLS_REQUIRE):
            raise ValueError('tls_mode must be off, optional or require')
        if tls_mode != TLS_OFF and tls is None:
            raise ValueError('TLS mode %s needs a TLS configuration'
                             % tls_mode)
        self.exports = table
        self.tls_mode = tls_mode
        self._ssl = tls.server_context() if tls_mode != TLS_OFF else None
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix='nbd-io')
        self.max_payload = max_payload
        self.buffers = BufferPool()
        self._servers = []
        self._connections = set()

    async def listen_tcp(self, host: str = '127.0.0.1', port: int = 10809):
        """Listen on TCP; returns the bound ``(host, port)``."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True)
        self._servers.append(server)
        return server.sockets[0].getsockname()[:2]

    async def listen_unix(self, path: str):
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _Connection(self),
                                               path)
        os.chmod(path, 0o600)
        self._servers.append(server)
        return path

    def drop_clients(self, export_name: str) -> int:
        """Disconnect the clients attached to ``export_name`` (on the loop;
        after an export is withdrawn, its clients must not keep using it).
        """
        dropped = 0
        for conn in list(self._connections):
            if conn.export is not None and conn.export.name == export_name:
                conn.abort()
                dropped += 1
        return dropped

    def connection_count(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        for conn in list(self._connections):
            conn.abort()
        if self._own_executor:
            self.executor.shutdown(wait=True)


class BufferPool:
    """Reusable read buffers for large replies.

    A fresh megabyte from malloc is mmap()ed, faulted in page by page and
    unmapped again; reusing buffers doubled 1 MiB read throughput here.
    Buffers come in power-of-two sizes from LARGE_IO up; a few of each are
    kept.
    """

    KEEP = 16

    def __init__(self):
        self._free = {}

    @staticmethod
    def _size(length):
        size = LARGE_IO
        while size < length:
            size *= 2
        return size

    def take(self, length):
        free = self._free.get(self._size(length))
        return free.pop() if free else bytearray(self._size(length))

    def give(self, buf):
        free = self._free.setdefault(len(buf), [])
        if len(free) < self.KEEP:
            free.append(buf)


class _Connection(asyncio.Protocol):
    def __init__(self, server: NBDServer):
        self.server = server
        self.core = proto.ServerConnection(
            max_payload=server.max_payload,
            payload_buffer=self._payload_buffer)
        self.transport = None
        self.peer = None
        self.export = None
        self.backend = None
        self._background = 0
        self._paused_reading = False
        self._write_paused = False
        # _closing: read no more requests (replies owed still go out);
        # _aborted: drop the connection and everything owed.
        self._closing = False
        self._aborted = False
        self._name = '?'
        # Data received while TLS starts, for the core once it knows.
        self._tls_early = None
        # Replies produced while processing one batch of received data,
        # written with one send: a send per reply costs more than a read.
        self._out = []
        self._batching = False

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.server._connections.add(self)
        peer = transport.get_extra_info('peername')
        sock = transport.get_extra_info('socket')
        if sock is not None and sock.family == socket.AF_UNIX:
            address = None
            self._name = 'unix:%s' % (transport.get_extra_info('sockname'),)
        else:
            address = ipaddress.ip_address(peer[0].split('%')[0])
            self._name = '%s:%s' % (peer[0], peer[1])
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Room for a few maximum-size replies in the kernel, so a
                # 1 MiB read reply leaves in one send.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                SEND_BUFFER)
        # Do not stop reading requests for the sake of a few large replies
        # queued in the transport (the default high-water mark is 64 KiB).
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.peer = exports_mod.Peer(address)
        transport.write(self.core.initiate())

    def connection_lost(self, exc):
        self.server._connections.discard(self)
        self.transport = None

    def data_received(self, data):
        if self._tls_early is not None:
            # Decrypted bytes can arrive before start_tls() returns to us.
            self._tls_early.append(bytes(data))
            return
        self._batching = True
        try:
            self.core.receive_data(data)
            self._process()
        except Exception:
            LOG.exception('NBD client %s: internal error; disconnecting',
                          self._name)
            self.abort()
        finally:
            self._batching = False
            self._flush_out()

    def eof_received(self):
        self.core.receive_data(b'')
        self._process()
        return False

    def pause_writing(self):
        self._write_paused = True
        self._update_reading()

    def resume_writing(self):
        self._write_paused = False
        self._update_reading()

    def abort(self):
        self._closing = True
        self._aborted = True
        self._out = []
        if self.transport is not None:
            self.transport.abort()

    # -- the event loop -------------------------------------------------------

    def _update_reading(self):
        if self.transport is None or self._closing:
            return
        want_pause = self._write_paused or \
            self._background >= MAX_BACKGROUND
        if want_pause and not self._paused_reading:
            self.transport.pause_reading()
            self._paused_reading = True
        elif not want_pause and self._paused_reading:
            self._paused_reading = False
            self.transport.resume_reading()
            # Requests may already be buffered in the core.
            self._process()

    def _send(self, data):
        if self.transport is None or self._aborted:
            return
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._out.append(data)
        else:
            self._out.extend(data)
        if not self._batching:
            self._flush_out()

    def _flush_out(self):
        out = self._out
        if not out:
            return
        self._out = []
        if self.transport is None or self._aborted:
            return
        write = self.transport.write
        if len(out) == 1:
            write(out[0])
            return
        # Join small pieces into one send; pass big payloads on as they
        # are rather than copying them once more.
        small = []
        for piece in out:
            if len(piece) < _JOIN_LIMIT:
                small.append(piece)
                continue
            if small:
                write(b''.join(small))
                small = []
            write(piece)
        if small:
            write(b''.join(small))

    def _process(self):
        core = self.core
        while not self._closing and not self._paused_reading:
            event = core.next_event()
            if event is proto.NEED_DATA or event is proto.PAUSED:
                return
            handler = _HANDLERS.get(type(event))
            if handler is None:
                LOG.error('NBD client %s: unhandled event %r', self._name,
                          event)
                self.abort()
                return
            handler(self, event)

    # -- handshake ------------------------------------------------------------

    def _tls_needed(self) -> bool:
        return self.server.tls_mode == TLS_REQUIRE and not self.core.tls_active

    def _on_client_flags(self, event):
        """Nothing to do: the core already checked and applied them."""

    def _on_abort(self, event):
        self._send(self.core.ack_option())
        self._close_after_replies()

    def _on_unknown_option(self, event):
        self._send(self.core.reject_option(const.NBD_REP_ERR_UNSUP,
                                           'option %d is not supported'
                                           % event.option))

    def _on_invalid_option(self, event):
        self._send(self.core.reject_option(event.error, event.message))

    def _on_starttls(self, event):
        if self.server.tls_mode == TLS_OFF:
            self._send(self.core.reject_option(const.NBD_REP_ERR_UNSUP,
                                               'TLS is not configured'))
            return
        if self.core.tls_active:
            self._send(self.core.reject_option(const.NBD_REP_ERR_INVALID,
                                               'TLS is already active'))
            return
        self._send(self.core.ack_option())
        if self.core.take_trailing_data():
            # The client must wait for our ACK before starting TLS.
            LOG.warning('NBD client %s sent data before TLS; disconnecting',
                        self._name)
            self.abort()
            return
        self.transport.pause_reading()
        self._paused_reading = True
        self._tls_early = []
        asyncio.ensure_future(self._start_tls())

    async def _start_tls(self):
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport, self, self.server._ssl, server_side=True)
        except (ssl.SSLError, ssl.CertificateError, ConnectionError,
                OSError) as e:
            LOG.info('NBD client %s: TLS handshake failed: %s', self._name,
                     e)
            self.abort()
            return
        if transport is None:
            self.abort()
            return
        self.transport = transport
        ids = tls_mod.peer_identities(transport.get_extra_info('ssl_object'))
        self.peer = exports_mod.Peer(self.peer.address, ids, tls=True)
        self.core.tls_established()
        LOG.info('NBD client %s: TLS up, identities %s', self._name,
                 sorted(ids) or 'none')
        self._paused_reading = False
        early, self._tls_early = self._tls_early, None
        for data in early:
            self.data_received(data)
        self._process()

    def _on_list(self, event):
        if self._tls_needed():
            self._send(self.core.reject_option(const.NBD_REP_ERR_TLS_REQD,
                                               'TLS is required'))
            return
        out = [self.core.send_server(e.name, e.description)
               for e in self.server.exports.visible(self.peer)]
        out.append(self.core.ack_option())
        self._send(out)

    def _find(self, name):
        return self.server.exports.find(name, self.peer)

    def _on_info_go(self, event):
        core = self.core
        if self._tls_needed():
            self._send(core.reject_option(const.NBD_REP_ERR_TLS_REQD,
                                          'TLS is required'))
            return
        export = self._find(event.name)
        if export is None:
            # The same answer for a name that does not exist and one this
            # client may not see.
            self._send(core.reject_option(const.NBD_REP_ERR_UNKNOWN,
                                          'unknown export'))
            return
        out = []
        if const.NBD_INFO_NAME in event.info_requests:
            out.append(core.send_info_name(export.name))
        if const.NBD_INFO_DESCRIPTION in event.info_requests and \
                export.description:
            out.append(core.send_info_description(export.description))
        if const.NBD_INFO_BLOCK_SIZE in event.info_requests:
            out.append(core.send_info_block_size(
                MIN_BLOCK, PREFERRED_BLOCK, self.server.max_payload))
        out.append(core.send_info_export(
            export.backend.size,
            transmission_flags(export, core.structured_replies)))
        out.append(core.ack_option())
        if isinstance(event, proto.Go):
            self._attach(export)
        self._send(out)

    def _on_export_name(self, event):
        if self._tls_needed():
            # EXPORT_NAME has no error reply: the spec says to disconnect.
            self.core.close()
            self.abort()
            return
        export = self._find(event.name)
        if export is None:
            self.core.close()
            self.abort()
            return
        out = self.core.accept_export_name(
            export.backend.size,
            transmission_flags(export, self.core.structured_replies))
        self._attach(export)
        self._send(out)

    def _attach(self, export):
        self.export = export
        self.backend = export.backend
        LOG.info('NBD client %s attached to export %s', self._name,
                 export.name)

    def _on_structured_reply(self, event):
        self._send(self.core.ack_option())

    def _on_meta_context(self, event):
        core = self.core
        if self._tls_needed():
            self._send(core.reject_option(const.NBD_REP_ERR_TLS_REQD,
                                          'TLS is required'))
            return
        if self._find(event.export_name) is None:
            self._send(core.reject_option(const.NBD_REP_ERR_UNKNOWN,
                                          'unknown export'))
            return
        listing = isinstance(event, proto.ListMetaContext)
        queries = event.queries
        out = []
        if (listing and not queries) or any(
                q in (const.NBD_META_BASE_ALLOCATION, 'base:') and
                (listing or q != 'base:') for q in queries):
            out.append(core.accept_meta_context(
                const.NBD_META_BASE_ALLOCATION))
        out.append(core.ack_option())
        self._send(out)

    def _on_protocol_error(self, event):
        LOG.info('NBD client %s: protocol error: %s; disconnecting',
                 self._name, event.message)
        self.abort()

    def _on_closed(self, event):
        self._close_after_replies()

    def _close_after_replies(self):
        self._closing = True
        if self.transport is not None and self._background == 0:
            self._flush_out()
            self.transport.close()

    # -- transmission ---------------------------------------------------------

    def _fail(self, handle, exc):
        if not isinstance(exc, (errors.EngineError, OSError)):
            LOG.error('NBD client %s: unexpected error %r', self._name, exc)
        self._send(self.core.reply_error(handle, nbd_errno(exc), str(exc)))

    def _in_thread(self, handle, func, reply):
        """Run ``func`` in the pool; send ``reply(result)`` when done."""
        self._background += 1
        self._update_reading()
        fut = asyncio.get_running_loop().run_in_executor(
            self.server.executor, func)

        def done(f):
            self._background -= 1
            if self.transport is not None:
                exc = f.exception()
                try:
                    if exc is not None:
                        self._fail(handle, exc)
                    else:
                        self._send(reply(f.result()))
                except proto.LocalProtocolError as e:
                    # Only a bug on our side gets here while the
                    # connection is open: say so, and let the client
                    # know by dropping it rather than never answering.
                    if not self._closing:
                        LOG.error('NBD client %s: cannot reply to handle '
                                  '%d: %s', self._name, handle, e)
                        self.abort()
            if self._closing:
                self._close_after_replies()
            else:
                self._update_reading()
        fut.add_done_callback(done)

    def _on_read(self, ev):
        backend = self.backend
        handle = ev.handle
        offset, length = ev.offset, ev.length
        if (offset | length) % MIN_BLOCK:
            return self._unaligned_read(ev)
        if length >= LARGE_IO:
            pool = self.server.buffers
            buf = pool.take(length)
            view = memoryview(buf)[:length]

            def reply(runs):
                self._send(self.core.reply_read_extents(handle, runs))
                self._flush_out()
                # Reuse the buffer only if the transport holds none of it
                # (everything went to the socket); otherwise let it go.
                transport = self.transport
                if transport is None or \
                        transport.get_write_buffer_size() == 0:
                    pool.give(buf)
                return ()
            self._in_thread(
                handle, lambda: backend.read_extents_into(offset, view),
                reply)
            return
        try:
            runs = backend.read_extents(offset, length, nowait=True)
        except BlockingIOError:
            self._in_thread(
                handle, lambda: backend.read_extents(offset, length),
                lambda runs: self.core.reply_read_extents(handle, runs))
            return
        except errors.EngineError as e:
            return self._fail(handle, e)
        self._send(self.core.reply_read_extents(handle, runs))

    def _unaligned_read(self, ev):
        # Clients that did not ask for block sizes may send any alignment.
        start = ev.offset - ev.offset % MIN_BLOCK
        end = -(-(ev.offset + ev.length) // MIN_BLOCK) * MIN_BLOCK
        backend = self.backend

        def work():
            data = backend.read(start, end - start)
            return data[ev.offset - start:ev.offset - start + ev.length]
        self._in_thread(ev.handle, work,
                        lambda data: self.core.reply_read(ev.handle, data))

    def _payload_buffer(self, length):
        if length < LARGE_IO:
            return bytearray(length)
        return memoryview(self.server.buffers.take(length))[:length]

    def _on_write(self, ev):
        try:
            self._write(ev)
        finally:
            data = ev.data
            if isinstance(data, memoryview) and len(data) >= LARGE_IO:
                # Landed in the page cache (or failed): reuse the buffer.
                self.server.buffers.give(data.obj)

    def _write(self, ev):
        backend = self.backend
        if (ev.offset | ev.length) % MIN_BLOCK:
            return self._unaligned_write(ev)
        try:
            backend.write(ev.offset, ev.data)
        except errors.EngineError as e:
            return self._fail(ev.handle, e)
        self._after_write(ev)

    def _unaligned_write(self, ev):
        # Read-modify-write of the covering sectors, inline in the loop so
        # no other request of this server interleaves with it.
        backend = self.backend
        start = ev.offset - ev.offset % MIN_BLOCK
        end = -(-(ev.offset + ev.length) // MIN_BLOCK) * MIN_BLOCK
        try:
            buf = bytearray(backend.read(start, end - start))
            buf[ev.offset - start:ev.offset - start + ev.length] = ev.data
            backend.write(start, buf)
        except errors.EngineError as e:
            return self._fail(ev.handle, e)
        self._after_write(ev)

    def _after_write(self, ev):
        if ev.flags & const.NBD_CMD_FLAG_FUA:
            self._in_thread(ev.handle, self.backend.flush,
                            lambda _r: self.core.reply_ok(ev.handle))
        else:
            self._send(self.core.reply_ok(ev.handle))

    def _on_flush(self, ev):
        self._in_thread(ev.handle, self.backend.flush,
                        lambda _r: self.core.reply_ok(ev.handle))

    def _zero(self, ev, may_unmap):
        backend = self.backend
        start = ev.offset - ev.offset % MIN_BLOCK
        end = -(-(ev.offset + ev.length) // MIN_BLOCK) * MIN_BLOCK
        try:
            if start == ev.offset and end == ev.offset + ev.length:
                backend.write_zeroes(ev.offset, ev.length,
                                     may_unmap=may_unmap)
            else:
                # Unaligned edges: zero them by read-modify-write.
                buf = bytearray(backend.read(start, end - start))
                buf[ev.offset - start:ev.offset - start + ev.length] = \
                    bytes(ev.length)
                backend.write(start, buf)
        except errors.EngineError as e:
            return self._fail(ev.handle, e)
        self._after_write(ev)

    def _on_trim(self, ev):
        self._zero(ev, may_unmap=True)

    def _on_write_zeroes(self, ev):
        if ev.flags & const.NBD_CMD_FLAG_FAST_ZERO and \
                not self.backend.can_fast_zero:
            # "the server MUST fail quickly with NBD_ENOTSUP"
            self._send(self.core.reply_error(
                ev.handle, const.NBD_ENOTSUP, 'zeroing is not fast here'))
            return
        self._zero(ev, may_unmap=not ev.flags & const.NBD_CMD_FLAG_NO_HOLE)

    def _on_cache(self, ev):
        self._send(self.core.reply_ok(ev.handle))

    def _on_block_status(self, ev):
        length = min(ev.length, MAX_STATUS_LENGTH)
        start = ev.offset - ev.offset % MIN_BLOCK
        end = -(-(ev.offset + length) // MIN_BLOCK) * MIN_BLOCK
        try:
            extents = self.backend.allocation(start, end - start)
        except errors.EngineError as e:
            return self._fail(ev.handle, e)
        hole = const.NBD_STATE_HOLE | const.NBD_STATE_ZERO
        out = []
        for ext in extents:
            s = max(ext.offset, ev.offset)
            e = min(ext.offset + ext.length, ev.offset + length)
            if e > s:
                out.append((s, e - s, 0 if ext.state == 'data' else hole))
        self._send(self.core.reply_block_status(
            ev.handle, out, const.NBD_META_BASE_ALLOCATION))

    def _on_disconnect(self, ev):
        LOG.info('NBD client %s disconnected', self._name)
        self._close_after_replies()

    def _on_invalid_command(self, ev):
        self._send(self.core.reply_error(ev.handle, ev.error, ev.message))


_HANDLERS = {
    proto.ClientFlags: _Connection._on_client_flags,
    proto.Abort: _Connection._on_abort,
    proto.List: _Connection._on_list,
    proto.Info: _Connection._on_info_go,
    proto.Go: _Connection._on_info_go,
    proto.ExportName: _Connection._on_export_name,
    proto.StructuredReply: _Connection._on_structured_reply,
    proto.ListMetaContext: _Connection._on_meta_context,
    proto.SetMetaContext: _Connection._on_meta_context,
    proto.StartTLS: _Connection._on_starttls,
    proto.UnknownOption: _Connection._on_unknown_option,
    proto.InvalidOption: _Connection._on_invalid_option,
    proto.ProtocolError: _Connection._on_protocol_error,
    proto.ConnectionClosed: _Connection._on_closed,
    proto.Read: _Connection._on_read,
    proto.Write: _Connection._on_write,
    proto.Flush: _Connection._on_flush,
    proto.Trim: _Connection._on_trim,
    proto.WriteZeroes: _Connection._on_write_zeroes,
    proto.Cache: _Connection._on_cache,
    proto.BlockStatus: _Connection._on_block_status,
    proto.Disconnect: _Connection._on_disconnect,
    proto.InvalidCommand: _Connection._on_invalid_command,
}
