"""Client side of the NBD protocol as a sans-IO state machine.

The mirror of :mod:`storage_engine.nbd.protocol`: :class:`ClientConnection`
turns method calls into request bytes and received bytes into typed
events, with no socket inside. The userspace connector drives it over a
real socket; the tests and fuzzers drive it against the server core in
memory. Typical use::

    conn = ClientConnection()
    conn.receive_data(greeting)          -> ServerGreeting
    send(conn.send_client_flags())
    send(conn.opt_structured_reply())    -> OptionAck
    send(conn.opt_set_meta_context('vol', ['base:allocation']))
                                         -> MetaContext..., OptionAck
    send(conn.opt_go('vol'))             -> ExportInfo..., TransmissionReady
    handle, data = conn.read(0, 4096)    -> ReadComplete(handle, data)

Rules the server must follow are checked here too: a reply that breaks
the framing or the spec's MUSTs yields a :class:`ProtocolError` event (the
spec's "client MUST initiate a hard disconnect"); a request the client
must not send raises :class:`LocalProtocolError` unless it is sent with
``validate=False`` (what fuzz tests use to probe a server).
"""

import bisect
import dataclasses
import enum
import struct
import typing

from storage_engine.nbd import constants as const
from storage_engine.nbd.protocol import ConnectionClosed
from storage_engine.nbd.protocol import Event
from storage_engine.nbd.protocol import NEED_DATA
from storage_engine.nbd.protocol import PAUSED
from storage_engine.nbd.protocol import Pending
from storage_engine.nbd.protocol import ProtocolError
from storage_engine.nbd import wire
from storage_engine.nbd.wire import Buffer
from storage_engine.nbd.wire import decode_string
from storage_engine.nbd.wire import encode_string
from storage_engine.nbd.wire import LocalProtocolError

__all__ = [
    'ClientConnection', 'ClientState', 'ServerGreeting', 'OptionAck',
    'OptionError', 'ServerExport', 'ExportInfo', 'ExportNameInfo',
    'ExportDescription', 'BlockSizeInfo', 'UnknownInfo', 'MetaContext',
    'TransmissionReady', 'ReadComplete', 'CommandComplete',
    'BlockStatusComplete', 'CommandFailed', 'ConnectionClosed',
    'ProtocolError', 'LocalProtocolError', 'NEED_DATA', 'PAUSED',
]

#: Replies without bulk data larger than this are a denial of service:
#: the biggest legitimate one is a block status chunk of 2^20 extents.
MAX_SMALL_REPLY = 4 + 8 * const.NBD_MAX_BLOCK_STATUS_EXTENTS
#: Largest option reply accepted during the handshake.
MAX_OPTION_REPLY = 64 * 1024


class ClientState(enum.Enum):
    GREETING = 'GREETING'            # waiting for the server greeting
    SEND_FLAGS = 'SEND_FLAGS'        # send_client_flags() is due
    OPTIONS = 'OPTIONS'              # an option may be sent
    OPTION_REPLY = 'OPTION_REPLY'    # waiting for the option's answer
    TLS_PENDING = 'TLS_PENDING'      # STARTTLS acked, TLS not up yet
    TRANSMISSION = 'TRANSMISSION'
    DISCONNECTED = 'DISCONNECTED'    # NBD_CMD_DISC sent
    CLOSED = 'CLOSED'
    ERROR = 'ERROR'


_event = dataclasses.dataclass(frozen=True, slots=True)


@_event
class ServerGreeting(Event):
    handshake_flags: int

    @property
    def fixed_newstyle(self) -> bool:
        return bool(self.handshake_flags & const.NBD_FLAG_FIXED_NEWSTYLE)


@_event
class OptionAck(Event):
    option: int


@_event
class OptionError(Event):
    """The server refused the option (an NBD_REP_ERR_* code)."""

    option: int
    error: int
    message: str


@_event
class ServerExport(Event):
    """One NBD_REP_SERVER entry of NBD_OPT_LIST."""

    name: str
    description: str


@_event
class ExportInfo(Event):
    size: int
    transmission_flags: int


@_event
class ExportNameInfo(Event):
    name: str


@_event
class ExportDescription(Event):
    description: str


@_event
class BlockSizeInfo(Event):
    minimum: int
    preferred: int
    maximum: int


@_event
class UnknownInfo(Event):
    """An NBD_REP_INFO type we do not know ("MUST ignore"), for logging."""

    info_type: int
    data: bytes


@_event
class MetaContext(Event):
    context_id: int
    name: str


@_event
class TransmissionReady(Event):
    """Option haggling is over; requests may be sent."""

    export_size: int
    transmission_flags: int
    minimum_block: int
    preferred_block: int
    maximum_payload: int


@_event
class ReadComplete(Event):
    handle: int
    data: Buffer = dataclasses.field(repr=False)


@_event
class CommandComplete(Event):
    handle: int


@_event
class BlockStatusComplete(Event):
    """Extents per context name: ((length, status flags), ...)."""

    handle: int
    extents: typing.Dict[str, typing.Tuple[typing.Tuple[int, int], ...]]


@_event
class CommandFailed(Event):
    """The request failed; *offset* is set for NBD_REPLY_TYPE_ERROR_OFFSET.

    Unexpected error values are passed through: "The client SHOULD treat
    an unexpected error value as if it had been NBD_EINVAL".
    """

    handle: int
    error: int
    message: str
    offset: typing.Optional[int] = None


_U64 = struct.Struct('>Q')
_INFO_EXPORT = struct.Struct('>QH')
_INFO_BLOCK_SIZE = struct.Struct('>III')
_ERROR_HEAD = struct.Struct('>IH')
_EXTENT = struct.Struct('>II')

_MAX_U32 = 0xFFFFFFFF
_MAX_U64 = 0xFFFFFFFFFFFFFFFF
_DATA_COMMANDS = frozenset((const.NBD_CMD_READ, const.NBD_CMD_WRITE))
_MODIFYING = frozenset((const.NBD_CMD_WRITE, const.NBD_CMD_TRIM,
                        const.NBD_CMD_WRITE_ZEROES))


class _Request:
    """A request in flight and what its reply has delivered so far."""

    __slots__ = ('kind', 'offset', 'length', 'flags', 'buffer', 'covered',
                 'intervals', 'content_chunks', 'error', 'message',
                 'error_offset', 'extents')

    def __init__(self, kind: int, offset: int, length: int,
                 flags: int) -> None:
        self.kind = kind
        self.offset = offset
        self.length = length
        self.flags = flags
        self.buffer: typing.Optional[bytearray] = None
        self.covered = 0
        self.intervals: typing.List[typing.Tuple[int, int]] = []
        self.content_chunks = 0
        self.error = 0
        self.message = ''
        self.error_offset: typing.Optional[int] = None
        self.extents: typing.Dict[
            str, typing.Tuple[typing.Tuple[int, int], ...]] = {}


class ClientConnection:
    """One NBD connection, client side, with no I/O.

    *no_zeroes* asks for NBD_FLAG_C_NO_ZEROES when the server offers it.
    """

    def __init__(self, *, no_zeroes: bool = True) -> None:
        self._want_no_zeroes = no_zeroes
        self._in = wire.InboundBuffer()
        self._state = ClientState.GREETING
        self._error: typing.Optional[ProtocolError] = None
        self.handshake_flags = 0
        self.client_flags = 0
        self.tls_active = False
        self.structured_replies = False
        #: context id -> name, selected by the last SET_META_CONTEXT
        self.meta_contexts: typing.Dict[int, str] = {}
        self._contexts_export: typing.Optional[str] = None
        self._option = 0
        self._option_name: typing.Optional[str] = None
        self._pending_contexts: typing.Dict[int, str] = {}
        self._info_export: typing.Optional[typing.Tuple[int, int]] = None
        self._info_block_size: typing.Optional[
            typing.Tuple[int, int, int]] = None
        self.export_name: typing.Optional[str] = None
        self.export_size = 0
        self.transmission_flags = 0
        self.minimum_block = const.NBD_DEFAULT_MIN_BLOCK
        self.preferred_block = const.NBD_DEFAULT_PREFERRED_BLOCK
        self.maximum_payload = const.NBD_DEFAULT_MAX_PAYLOAD
        self._next_handle = 1
        self._inflight: typing.Dict[int, _Request] = {}
        # reply being received: (handle, request, chunk flags) or None
        self._bulk: typing.Optional[typing.Tuple[int, _Request, int]] = None

    # -- introspection ------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def requests_in_flight(self) -> int:
        return len(self._inflight)

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: Buffer) -> None:
        """Add received bytes; ``b''`` means the server closed its side."""
        state = self._state
        if state is ClientState.ERROR:
            raise LocalProtocolError('connection is in ERROR state')
        if state is ClientState.TLS_PENDING and data:
            raise LocalProtocolError('bytes after STARTTLS belong to TLS')
        if state is ClientState.CLOSED:
            return
        self._in.feed(data)

    def next_event(self) -> typing.Union[Event, Pending]:
        """Parse the next event, or NEED_DATA (PAUSED while TLS starts)."""
        state = self._state
        if (state is ClientState.TRANSMISSION
                or state is ClientState.DISCONNECTED):
            return self._next_reply()
        if state is ClientState.OPTION_REPLY:
            return self._next_option_reply()
        if state is ClientState.GREETING:
            return self._next_greeting()
        if state is ClientState.ERROR:
            return self._error
        if state is ClientState.CLOSED:
            return ConnectionClosed()
        if state is ClientState.TLS_PENDING:
            # Whatever arrives now is TLS: see take_trailing_data().
            return PAUSED
        # SEND_FLAGS, OPTIONS: the server must stay silent.
        if self._in.buf:
            return self._fail('server sent data while it was our turn')
        return self._need()

    def _fail(self, message: str) -> ProtocolError:
        self._error = ProtocolError(message)
        self._state = ClientState.ERROR
        return self._error

    def _need(self) -> typing.Union[Pending, Event]:
        inb = self._in
        if not inb.eof:
            return NEED_DATA
        if inb.idle():
            self._state = ClientState.CLOSED
            return ConnectionClosed()
        return self._fail('connection closed in the middle of a message')

    # -- handshake ------------------------------------------------------------

    def _next_greeting(self) -> typing.Union[Event, Pending]:
        buf = self._in.buf
        if len(buf) < 18:
            return self._need()
        magic, newstyle, flags = wire.GREETING.unpack_from(buf)
        del buf[:18]
        if magic != const.NBDMAGIC:
            return self._fail('not an NBD server (magic 0x%016x)' % magic)
        if newstyle != const.IHAVEOPT:
            return self._fail('oldstyle negotiation is not supported')
        self.handshake_flags = flags
        self._state = ClientState.SEND_FLAGS
        return ServerGreeting(flags)

    def send_client_flags(self) -> bytes:
        """Our 32-bit client flags, matching what the server offered.

        "NBD_FLAG_C_NO_ZEROES: MUST NOT be set if the server did not set
        NBD_FLAG_NO_ZEROES."
        """
        if self._state is not ClientState.SEND_FLAGS:
            raise LocalProtocolError('client flags are sent once, after '
                                     'the greeting')
        flags = 0
        if self.handshake_flags & const.NBD_FLAG_FIXED_NEWSTYLE:
            flags |= const.NBD_FLAG_C_FIXED_NEWSTYLE
        if (self._want_no_zeroes
                and self.handshake_flags & const.NBD_FLAG_NO_ZEROES):
            flags |= const.NBD_FLAG_C_NO_ZEROES
        self.client_flags = flags
        self._state = ClientState.OPTIONS
        return wire.U32.pack(flags)

    def _send_option(self, option: int, data: bytes = b'') -> bytes:
        if self._state is not ClientState.OPTIONS:
            raise LocalProtocolError(
                'an option can only be sent when the previous one was '
                'answered (state %s)' % self._state.name)
        if (option != const.NBD_OPT_EXPORT_NAME
                and not self.client_flags & const.NBD_FLAG_C_FIXED_NEWSTYLE):
            raise LocalProtocolError('server lacks fixed newstyle: only '
                                     'NBD_OPT_EXPORT_NAME is possible')
        self._option = option
        self._state = ClientState.OPTION_REPLY
        self._info_export = None
        self._info_block_size = None
        self._pending_contexts = {}
        return wire.OPTION_HEADER.pack(const.IHAVEOPT, option,
                                       len(data)) + data

    def opt_raw(self, option: int, data: bytes = b'') -> bytes:
        """Any option with any data (tests, unknown options)."""
        self._option_name = None
        return self._send_option(option, data)

    def opt_abort(self) -> bytes:
        return self._send_option(const.NBD_OPT_ABORT)

    def opt_list(self) -> bytes:
        return self._send_option(const.NBD_OPT_LIST)

    def opt_starttls(self) -> bytes:
        if self.tls_active:
            # "The client MUST NOT issue NBD_OPT_STARTTLS if TLS has
            # already been initiated."
            raise LocalProtocolError('TLS is already active')
        return self._send_option(const.NBD_OPT_STARTTLS)

    def opt_structured_reply(self) -> bytes:
        return self._send_option(const.NBD_OPT_STRUCTURED_REPLY)

    def _info_data(self, name: str, info_requests: typing.Iterable[int]
                   ) -> bytes:
        raw = encode_string(name, 'export name')
        requests = tuple(info_requests)
        return (wire.U32.pack(len(raw)) + raw + wire.U16.pack(len(requests))
                + struct.pack('>%dH' % len(requests), *requests))

    def opt_info(self, name: str, info_requests: typing.Iterable[int] = (
            const.NBD_INFO_BLOCK_SIZE,)) -> bytes:
        self._option_name = name
        return self._send_option(const.NBD_OPT_INFO,
                                 self._info_data(name, info_requests))

    def opt_go(self, name: str, info_requests: typing.Iterable[int] = (
            const.NBD_INFO_BLOCK_SIZE,)) -> bytes:
        """NBD_OPT_GO; success enters transmission (TransmissionReady).

        Asks for NBD_INFO_BLOCK_SIZE by default, which commits us to the
        server's size constraints (which we then enforce on ourselves).
        """
        self._option_name = name
        return self._send_option(const.NBD_OPT_GO,
                                 self._info_data(name, info_requests))

    def _meta_data(self, name: str, queries: typing.Iterable[str]) -> bytes:
        raw = encode_string(name, 'export name')
        parts = [wire.U32.pack(len(raw)), raw]
        encoded = [encode_string(q, 'query') for q in queries]
        parts.append(wire.U32.pack(len(encoded)))
        for query in encoded:
            parts.append(wire.U32.pack(len(query)))
            parts.append(query)
        return b''.join(parts)

    def opt_list_meta_context(self, name: str,
                              queries: typing.Iterable[str] = ()) -> bytes:
        self._option_name = name
        return self._send_option(const.NBD_OPT_LIST_META_CONTEXT,
                                 self._meta_data(name, queries))

    def opt_set_meta_context(self, name: str, queries: typing.Iterable[
            str] = (const.NBD_META_BASE_ALLOCATION,)) -> bytes:
        if not self.structured_replies:
            # "This option MUST NOT be requested unless structured replies
            # have been negotiated first."
            raise LocalProtocolError('negotiate structured replies first')
        self._option_name = name
        out = self._send_option(const.NBD_OPT_SET_META_CONTEXT,
                                self._meta_data(name, queries))
        # "replaces all previously-set metadata contexts (including when
        # this command fails)"
        self.meta_contexts = {}
        self._contexts_export = None
        return out

    def opt_export_name(self, name: str) -> bytes:
        """NBD_OPT_EXPORT_NAME: the old way in; a refusal is a close."""
        self._option_name = name
        return self._send_option(const.NBD_OPT_EXPORT_NAME,
                                 encode_string(name, 'export name'))

    def take_trailing_data(self) -> bytes:
        if self._state is not ClientState.TLS_PENDING:
            raise LocalProtocolError('only valid after STARTTLS is acked')
        data = bytes(self._in.buf)
        self._in.buf.clear()
        return data

    def tls_established(self) -> None:
        """TLS is up: option haggling resumes, earlier state forgotten."""
        if self._state is not ClientState.TLS_PENDING:
            raise LocalProtocolError('STARTTLS was not acknowledged')
        self.tls_active = True
        self.structured_replies = False
        self.meta_contexts = {}
        self._contexts_export = None
        self._in = wire.InboundBuffer()
        self._state = ClientState.OPTIONS

    def close(self) -> None:
        self._state = ClientState.CLOSED
        self._inflight.clear()

    def _next_option_reply(self) -> typing.Union[Event, Pending]:
        buf = self._in.buf
        if self._option == const.NBD_OPT_EXPORT_NAME:
            return self._next_export_name_reply()
        if len(buf) < 20:
            return self._need()
        magic, option, reply, length = wire.OPTION_REPLY.unpack_from(buf)
        if magic != const.NBD_REP_MAGIC:
            return self._fail('bad option reply magic 0x%x' % magic)
        if option != self._option:
            return self._fail('reply for option %d while %d is pending'
                              % (option, self._option))
        if length > MAX_OPTION_REPLY:
            return self._fail('option reply of %d bytes' % length)
        if len(buf) < 20 + length:
            return self._need()
        data = bytes(buf[20:20 + length])
        del buf[:20 + length]
        if reply & const.NBD_REP_FLAG_ERROR:
            self._state = ClientState.OPTIONS
            self._pending_contexts = {}
            return OptionError(option, reply,
                               data.decode('utf-8', 'replace'))
        if reply == const.NBD_REP_ACK:
            return self._option_acked(option, data)
        if reply == const.NBD_REP_SERVER and option == const.NBD_OPT_LIST:
            return self._rep_server(data)
        if reply == const.NBD_REP_INFO and option in (const.NBD_OPT_INFO,
                                                      const.NBD_OPT_GO):
            return self._rep_info(data)
        if reply == const.NBD_REP_META_CONTEXT and option in (
                const.NBD_OPT_LIST_META_CONTEXT,
                const.NBD_OPT_SET_META_CONTEXT):
            return self._rep_meta_context(option, data)
        return self._fail('unexpected reply type 0x%x to option %d'
                          % (reply, option))

    def _option_acked(self, option: int, data: bytes
                      ) -> typing.Union[Event, Pending]:
        if data:
            return self._fail('NBD_REP_ACK with data')
        self._state = ClientState.OPTIONS
        if option == const.NBD_OPT_STRUCTURED_REPLY:
            self.structured_replies = True
        elif option == const.NBD_OPT_SET_META_CONTEXT:
            self.meta_contexts = self._pending_contexts
            self._contexts_export = self._option_name
        elif option == const.NBD_OPT_STARTTLS:
            self._state = ClientState.TLS_PENDING
        elif option == const.NBD_OPT_ABORT:
            self._state = ClientState.CLOSED
        elif option in (const.NBD_OPT_INFO, const.NBD_OPT_GO):
            if self._info_export is None:
                return self._fail('ACK without NBD_INFO_EXPORT')
            if option == const.NBD_OPT_GO:
                size, flags = self._info_export
                return self._ready(size, flags)
        self._pending_contexts = {}
        return OptionAck(option)

    def _rep_server(self, data: bytes) -> typing.Union[Event, Pending]:
        if len(data) < 4:
            return self._fail('short NBD_REP_SERVER')
        (name_len,) = wire.U32.unpack_from(data)
        if name_len > len(data) - 4:
            return self._fail('NBD_REP_SERVER name overruns the reply')
        name = decode_string(data[4:4 + name_len])
        if name is None:
            return self._fail('invalid export name in NBD_REP_SERVER')
        return ServerExport(name, data[4 + name_len:].decode('utf-8',
                                                             'replace'))

    def _rep_info(self, data: bytes) -> typing.Union[Event, Pending]:
        if len(data) < 2:
            return self._fail('NBD_REP_INFO shorter than 2 bytes')
        (info,) = wire.U16.unpack_from(data)
        if info == const.NBD_INFO_EXPORT:
            if len(data) != 12:
                return self._fail('NBD_INFO_EXPORT length is not 12')
            size, flags = _INFO_EXPORT.unpack_from(data, 2)
            self._info_export = (size, flags)
            return ExportInfo(size, flags)
        if info == const.NBD_INFO_BLOCK_SIZE:
            if len(data) != 14:
                return self._fail('NBD_INFO_BLOCK_SIZE length is not 14')
            sizes = _INFO_BLOCK_SIZE.unpack_from(data, 2)
            minimum, preferred, maximum = sizes
            if (minimum & (minimum - 1) or not 0 < minimum <= 65536
                    or preferred & (preferred - 1)
                    or preferred < max(minimum, 512)
                    or maximum < preferred):
                return self._fail('invalid block sizes %r' % (sizes,))
            self._info_block_size = sizes
            return BlockSizeInfo(minimum, preferred, maximum)
        text = data[2:].decode('utf-8', 'replace')
        if info == const.NBD_INFO_NAME:
            return ExportNameInfo(text)
        if info == const.NBD_INFO_DESCRIPTION:
            return ExportDescription(text)
        return UnknownInfo(info, data[2:])

    def _rep_meta_context(self, option: int, data: bytes
                          ) -> typing.Union[Event, Pending]:
        if len(data) < 4:
            return self._fail('short NBD_REP_META_CONTEXT')
        (context_id,) = wire.U32.unpack_from(data)
        name = decode_string(data[4:])
        if name is None:
            return self._fail('invalid context name')
        if option == const.NBD_OPT_SET_META_CONTEXT:
            if context_id in self._pending_contexts:
                return self._fail('context id %d used twice' % context_id)
            self._pending_contexts[context_id] = name
        return MetaContext(context_id, name)

    def _next_export_name_reply(self) -> typing.Union[Event, Pending]:
        buf = self._in.buf
        need = 10
        if not self.client_flags & const.NBD_FLAG_C_NO_ZEROES:
            need += const.NBD_EXPORT_NAME_PADDING
        if len(buf) < need:
            # A refused NBD_OPT_EXPORT_NAME is a closed connection.
            return self._need()
        size, flags = wire.EXPORT_NAME_REPLY.unpack_from(buf)
        del buf[:need]
        return self._ready(size, flags)

    def _ready(self, size: int, flags: int) -> TransmissionReady:
        self.export_name = self._option_name
        self.export_size = size
        self.transmission_flags = flags
        if self._info_block_size is not None:
            (self.minimum_block, self.preferred_block,
             self.maximum_payload) = self._info_block_size
        if self._contexts_export != self.export_name:
            self.meta_contexts = {}
        self._state = ClientState.TRANSMISSION
        return TransmissionReady(size, flags, self.minimum_block,
                                 self.preferred_block, self.maximum_payload)

    # -- transmission: requests -----------------------------------------------

    def _new_handle(self) -> int:
        handle = self._next_handle
        while handle in self._inflight:
            handle = (handle + 1) & _MAX_U64
        self._next_handle = (handle + 1) & _MAX_U64
        return handle

    def _check(self, kind: int, flags: int, offset: int, length: int
               ) -> None:
        tflags = self.transmission_flags
        fua = const.NBD_CMD_FLAG_FUA if tflags & const.NBD_FLAG_SEND_FUA \
            else 0
        needs = {
            const.NBD_CMD_FLUSH: const.NBD_FLAG_SEND_FLUSH,
            const.NBD_CMD_TRIM: const.NBD_FLAG_SEND_TRIM,
            const.NBD_CMD_WRITE_ZEROES: const.NBD_FLAG_SEND_WRITE_ZEROES,
            const.NBD_CMD_CACHE: const.NBD_FLAG_SEND_CACHE,
        }.get(kind, 0)
        if needs and not tflags & needs:
            raise LocalProtocolError('server did not advertise command %d'
                                     % kind)
        allowed = fua
        if kind == const.NBD_CMD_READ and tflags & const.NBD_FLAG_SEND_DF:
            allowed |= const.NBD_CMD_FLAG_DF
        elif kind == const.NBD_CMD_WRITE_ZEROES:
            allowed |= const.NBD_CMD_FLAG_NO_HOLE
            if tflags & const.NBD_FLAG_SEND_FAST_ZERO:
                allowed |= const.NBD_CMD_FLAG_FAST_ZERO
        elif kind == const.NBD_CMD_BLOCK_STATUS:
            if not self.meta_contexts:
                raise LocalProtocolError('no metadata context selected')
            allowed |= const.NBD_CMD_FLAG_REQ_ONE
        if flags & ~allowed:
            raise LocalProtocolError('flags 0x%x not valid here' % flags)
        if kind in _MODIFYING and tflags & const.NBD_FLAG_READ_ONLY:
            raise LocalProtocolError('export is read-only')
        if kind == const.NBD_CMD_FLUSH:
            return
        if length <= 0 or offset < 0 or offset + length > self.export_size:
            raise LocalProtocolError('range [%d, +%d) not inside the '
                                     'export' % (offset, length))
        if (offset | length) & (self.minimum_block - 1):
            raise LocalProtocolError('not aligned to the minimum block')
        if kind in _DATA_COMMANDS and length > self.maximum_payload:
            raise LocalProtocolError('longer than the maximum payload')

    def send_request(self, kind: int, offset: int = 0, length: int = 0,
                     flags: int = 0, data: typing.Optional[Buffer] = None,
                     validate: bool = True) -> typing.Tuple[int, bytes]:
        """Any request, as (handle, header bytes).

        A WRITE payload is not included: send *data* after the header (or
        use write()).

        validate=False sends what the spec forbids, for testing servers;
        the reply is still parsed.
        """
        if self._state is not ClientState.TRANSMISSION:
            raise LocalProtocolError('not in transmission (state %s)'
                                     % self._state.name)
        if data is not None:
            length = len(data)
        if validate and kind != const.NBD_CMD_DISC:
            self._check(kind, flags, offset, length)
        handle = self._new_handle()
        header = wire.REQUEST.pack(const.NBD_REQUEST_MAGIC, flags, kind,
                                   handle, offset, length)
        if kind == const.NBD_CMD_DISC:
            self._state = ClientState.DISCONNECTED
        else:
            self._inflight[handle] = _Request(kind, offset, length, flags)
        return handle, header

    def read(self, offset: int, length: int, flags: int = 0
             ) -> typing.Tuple[int, bytes]:
        return self.send_request(const.NBD_CMD_READ, offset, length, flags)

    def write(self, offset: int, data: Buffer, flags: int = 0
              ) -> typing.Tuple[int, typing.List[Buffer]]:
        """(handle, [header, data]): *data* is not copied."""
        handle, header = self.send_request(const.NBD_CMD_WRITE, offset,
                                           flags=flags, data=data)
        return handle, [header, data]

    def flush(self, flags: int = 0) -> typing.Tuple[int, bytes]:
        return self.send_request(const.NBD_CMD_FLUSH, flags=flags)

    def trim(self, offset: int, length: int, flags: int = 0
             ) -> typing.Tuple[int, bytes]:
        return self.send_request(const.NBD_CMD_TRIM, offset, length, flags)

    def cache(self, offset: int, length: int, flags: int = 0
              ) -> typing.Tuple[int, bytes]:
        return self.send_request(const.NBD_CMD_CACHE, offset, length, flags)

    def write_zeroes(self, offset: int, length: int, flags: int = 0
                     ) -> typing.Tuple[int, bytes]:
        return self.send_request(const.NBD_CMD_WRITE_ZEROES, offset, length,
                                 flags)

    def block_status(self, offset: int, length: int, flags: int = 0
                     ) -> typing.Tuple[int, bytes]:
        return self.send_request(const.NBD_CMD_BLOCK_STATUS, offset, length,
                                 flags)

    def disconnect(self) -> bytes:
        """NBD_CMD_DISC; nothing may be sent after it, no reply comes."""
        return self.send_request(const.NBD_CMD_DISC)[1]

    # -- transmission: replies ------------------------------------------------

    def _next_reply(self) -> typing.Union[Event, Pending]:
        # Chunks without NBD_REPLY_FLAG_DONE produce no event: loop on.
        while True:
            result = self._next_message()
            if result is not None:
                return result

    def _next_message(self) -> typing.Union[Event, Pending, None]:
        inb = self._in
        if self._bulk is not None:
            if inb.sink_pos < len(inb.sink):
                return self._need()
            inb.end_sink()
            handle, request, chunk_flags = self._bulk
            self._bulk = None
            return self._after_chunk(handle, request, chunk_flags)
        buf = inb.buf
        if len(buf) < 4:
            return self._need()
        (magic,) = wire.U32.unpack_from(buf)
        if magic == const.NBD_SIMPLE_REPLY_MAGIC:
            return self._simple_reply()
        if magic == const.NBD_STRUCTURED_REPLY_MAGIC:
            return self._structured_chunk()
        return self._fail('bad reply magic 0x%08x' % magic)

    def _simple_reply(self) -> typing.Union[Event, Pending, None]:
        inb = self._in
        buf = inb.buf
        if len(buf) < 16:
            return self._need()
        _magic, error, handle = wire.SIMPLE_REPLY.unpack_from(buf)
        request = self._inflight.get(handle)
        if request is None:
            return self._fail('simple reply for unknown handle %d' % handle)
        kind = request.kind
        if kind == const.NBD_CMD_READ and self.structured_replies:
            # "MUST NOT use a simple reply for NBD_CMD_READ"
            return self._fail('simple reply to a READ')
        if kind == const.NBD_CMD_BLOCK_STATUS and not error:
            return self._fail('simple success reply to BLOCK_STATUS')
        del buf[:16]
        if error:
            del self._inflight[handle]
            return CommandFailed(handle, error, '')
        if kind != const.NBD_CMD_READ:
            del self._inflight[handle]
            return CommandComplete(handle)
        request.buffer = bytearray(request.length)
        request.covered = request.length
        if inb.start_sink(memoryview(request.buffer)):
            return self._finish(handle, request)
        self._bulk = (handle, request, const.NBD_REPLY_FLAG_DONE)
        return self._need()

    def _structured_chunk(self) -> typing.Union[Event, Pending, None]:
        inb = self._in
        buf = inb.buf
        if len(buf) < 20:
            return self._need()
        _magic, flags, kind, handle, length = wire.CHUNK.unpack_from(buf)
        if not self.structured_replies:
            return self._fail('structured reply was not negotiated')
        request = self._inflight.get(handle)
        if request is None:
            return self._fail('chunk for unknown handle %d' % handle)
        if kind == const.NBD_REPLY_TYPE_OFFSET_DATA:
            if request.kind != const.NBD_CMD_READ or length < 9:
                return self._fail('invalid OFFSET_DATA chunk')
            if len(buf) < 28:
                return self._need()
            (offset,) = _U64.unpack_from(buf, 20)
            size = length - 8
            failure = self._claim(request, offset, size)
            if failure:
                return self._fail(failure)
            del buf[:28]
            start = offset - request.offset
            target = memoryview(request.buffer)[start:start + size]
            if inb.start_sink(target):
                return self._after_chunk(handle, request, flags)
            self._bulk = (handle, request, flags)
            return self._need()
        if length > MAX_SMALL_REPLY:
            return self._fail('reply chunk of %d bytes' % length)
        if len(buf) < 20 + length:
            return self._need()
        payload = bytes(buf[20:20 + length])
        del buf[:20 + length]
        failure = self._small_chunk(request, kind, flags, payload)
        if failure:
            return self._fail(failure)
        return self._after_chunk(handle, request, flags)

    def _claim(self, request: _Request, offset: int, size: int
               ) -> typing.Optional[str]:
        """Record a content chunk; the spec forbids overlap and overrun."""
        if request.buffer is None:
            request.buffer = bytearray(request.length)
        end = offset + size
        if offset < request.offset or end > request.offset + request.length:
            return 'content chunk outside the request'
        if request.flags & const.NBD_CMD_FLAG_DF and request.content_chunks:
            return 'more than one content chunk despite NBD_CMD_FLAG_DF'
        intervals = request.intervals
        index = bisect.bisect_left(intervals, (offset, end))
        if index and intervals[index - 1][1] > offset:
            return 'overlapping content chunks'
        if index < len(intervals) and intervals[index][0] < end:
            return 'overlapping content chunks'
        intervals.insert(index, (offset, end))
        request.covered += size
        request.content_chunks += 1
        return None

    def _small_chunk(self, request: _Request, kind: int, flags: int,
                     payload: bytes) -> typing.Optional[str]:
        length = len(payload)
        if kind == const.NBD_REPLY_TYPE_NONE:
            if length or not flags & const.NBD_REPLY_FLAG_DONE:
                return 'NONE chunk with data or without DONE'
            return None
        if kind == const.NBD_REPLY_TYPE_OFFSET_HOLE:
            if request.kind != const.NBD_CMD_READ or length != 12:
                return 'invalid OFFSET_HOLE chunk'
            offset, size = struct.unpack('>QI', payload)
            if not size:
                return 'empty hole'
            # the buffer is zero-filled already: a hole costs nothing
            return self._claim(request, offset, size)
        if kind == const.NBD_REPLY_TYPE_BLOCK_STATUS:
            return self._status_chunk(request, payload)
        if kind & const.NBD_REPLY_TYPE_FLAG_ERROR:
            if length < 6:
                return 'error chunk shorter than 6 bytes'
            error, msg_len = _ERROR_HEAD.unpack_from(payload)
            if msg_len > length - 6:
                return 'error message overruns the chunk'
            if not error:
                return 'error chunk with error 0'
            offset = None
            if kind == const.NBD_REPLY_TYPE_ERROR_OFFSET:
                if length != 14 + msg_len:
                    return 'malformed ERROR_OFFSET chunk'
                (offset,) = _U64.unpack_from(payload, 6 + msg_len)
                if not (request.offset <= offset
                        < request.offset + max(request.length, 1)):
                    return 'error offset outside the request'
            if not request.error:
                request.error = error
                request.message = payload[6:6 + msg_len].decode(
                    'utf-8', 'replace')
                request.error_offset = offset
            return None
        return 'unexpected chunk type %d' % kind

    def _status_chunk(self, request: _Request, payload: bytes
                      ) -> typing.Optional[str]:
        length = len(payload)
        if (request.kind != const.NBD_CMD_BLOCK_STATUS or length < 12
                or (length - 4) % 8):
            return 'invalid BLOCK_STATUS chunk'
        (context_id,) = wire.U32.unpack_from(payload)
        name = self.meta_contexts.get(context_id)
        if name is None:
            return 'status for unknown context id %d' % context_id
        if name in request.extents:
            return 'two status chunks for context %r' % name
        count = (length - 4) // 8
        words = struct.unpack_from('>%dI' % (2 * count), payload, 4)
        extents = tuple(zip(words[0::2], words[1::2]))
        if any(size == 0 for size, _flags in extents):
            return 'zero-length extent'
        if request.flags & const.NBD_CMD_FLAG_REQ_ONE and (
                count != 1 or extents[0][0] > request.length):
            return 'NBD_CMD_FLAG_REQ_ONE not honoured'
        if sum(size for size, _flags in extents[:-1]) >= request.length:
            # "the sum of the length fields of the first N-1 extents (if
            # any) MUST be less than the requested length"
            return 'too many extents'
        request.extents[name] = extents
        return None

    def _after_chunk(self, handle: int, request: _Request, flags: int
                     ) -> typing.Union[Event, Pending, None]:
        if not flags & const.NBD_REPLY_FLAG_DONE:
            return None
        return self._finish(handle, request)

    def _finish(self, handle: int, request: _Request
                ) -> typing.Union[Event, Pending]:
        del self._inflight[handle]
        if request.error:
            return CommandFailed(handle, request.error, request.message,
                                 request.error_offset)
        kind = request.kind
        if kind == const.NBD_CMD_READ:
            if request.covered != request.length:
                # "not enough data before claiming success"
                return self._fail('read reply does not cover the request')
            if request.buffer is None:
                request.buffer = bytearray()
            return ReadComplete(handle, request.buffer)
        if kind == const.NBD_CMD_BLOCK_STATUS:
            if set(request.extents) != set(self.meta_contexts.values()):
                return self._fail('block status lacks a context')
            return BlockStatusComplete(handle, request.extents)
        return CommandComplete(handle)
