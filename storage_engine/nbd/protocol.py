"""Server side of the NBD protocol as a sans-IO state machine.

The model is h11: :class:`ServerConnection` never touches a socket. The I/O
layer feeds it whatever bytes arrived (:meth:`ServerConnection.receive_data`)
and pulls typed events out (:meth:`ServerConnection.next_event`); it decides
what to answer and calls a method that returns the bytes to write. Keeping
every rule of the protocol here, and no I/O, is what lets the unit tests and
the fuzzers drive the whole protocol at memory speed, and lets the asyncio
layer stay a thin loop.

Phases and what the I/O layer sees::

    initiate() -> greeting bytes
    ClientFlags                          (informational)
    repeat: option event -> PAUSED until the I/O layer answers it with
            ack_option() / reject_option() (plus send_server(),
            send_info_*(), accept_meta_context() before that), or
            accept_export_name() for ExportName, or close()
    StartTLS acked -> TLS_PENDING: take_trailing_data(), wrap the
            transport, tls_established(), then feed decrypted bytes
    Go acked / ExportName accepted -> TRANSMISSION
    Read/Write/Flush/... events, InvalidCommand(error) for requests the
    core refused; replies in any order with reply_*()
    Disconnect -> finish the in-flight replies, then close

Errors are split the h11 way. A peer that breaks the stream so that it
cannot be parsed any further yields a :class:`ProtocolError` *event* (the
connection must be dropped); a peer that sends a well-framed but invalid
option or request yields :class:`InvalidOption` / :class:`InvalidCommand`
carrying the error code to answer with, and the connection goes on. Calls
from our own side that the protocol does not allow in the current state
raise :class:`LocalProtocolError`: that is a bug in the I/O layer.

Decisions where the spec leaves a choice (quotes from NetworkBlockDevice/nbd
``doc/proto.md``):

* A WRITE the core refuses (too long, beyond the end, read-only, bad
  flags...) still has its payload on the wire. The core skips exactly
  *length* bytes as they arrive, without buffering them, and then emits
  :class:`InvalidCommand`: the spec wants commands outside the constraints
  to be errored "cleanly ... without corrupting data", says a payload up to
  2^25 "SHOULD NOT be considered a denial of service attack", and a party
  "MUST NOT initiate a hard disconnect save where set out". Skipping keeps
  memory bounded at any declared length, so there is no reason to drop.
* Beyond the end of the export: NBD_ENOSPC for WRITE and WRITE_ZEROES
  ("SHOULD return NBD_ENOSPC if it receives a write request including one
  or more sectors beyond the size of the device"), NBD_EINVAL for READ,
  TRIM, CACHE and BLOCK_STATUS ("SHOULD return NBD_EINVAL if it receives a
  read or trim request including one or more sectors beyond the size").
* READ/WRITE longer than the maximum payload: NBD_EINVAL, since "The server
  SHOULD NOT return NBD_EOVERFLOW except ... NBD_CMD_FLAG_DF ... or when a
  command without payload requests a length larger". TRIM, WRITE_ZEROES,
  CACHE and BLOCK_STATUS carry no payload and are not limited.
* Zero-length requests (behaviour "unspecified") get NBD_EINVAL.
* Option data above :data:`MAX_OPTION_LENGTH` is skipped unbuffered and
  refused with NBD_REP_ERR_TOO_BIG ("The request or the reply is too large
  to process"); NBD_OPT_EXPORT_NAME cannot be refused, so there it is a
  :class:`ProtocolError`. Options that must carry no data but do, and
  malformed INFO/GO/*_META_CONTEXT payloads, are NBD_REP_ERR_INVALID.
* A client that did not set NBD_FLAG_C_FIXED_NEWSTYLE may only send
  NBD_OPT_EXPORT_NAME; anything else ends the connection, as it cannot
  parse option replies.
"""

import dataclasses
import enum
import struct
import typing

from storage_engine.nbd import constants as const
from storage_engine.nbd import wire
from storage_engine.nbd.wire import Buffer  # noqa: F401 (part of the API)
from storage_engine.nbd.wire import decode_string
from storage_engine.nbd.wire import encode_string
from storage_engine.nbd.wire import LocalProtocolError


#: Option payloads above this are skipped unread and answered with
#: NBD_REP_ERR_TOO_BIG. A legitimate option is a 4096-byte name plus a few
#: queries, far below this; the limit keeps a hostile client from making us
#: buffer 4 GiB during the handshake.
MAX_OPTION_LENGTH = 64 * 1024


class Pending(enum.Enum):
    """What :meth:`next_event` returns when it has no event to give."""

    #: More bytes are needed before the next event can be parsed.
    NEED_DATA = 'NEED_DATA'
    #: An option is waiting for our answer; no more options are parsed
    #: until the answer is serialised (the spec has the client wait for it).
    PAUSED = 'PAUSED'


NEED_DATA = Pending.NEED_DATA
PAUSED = Pending.PAUSED


class ServerState(enum.Enum):
    START = 'START'                  # greeting not produced yet
    HANDSHAKE = 'HANDSHAKE'          # waiting for the client flags
    OPTIONS = 'OPTIONS'              # waiting for an option
    OPTION_REPLY = 'OPTION_REPLY'    # the I/O layer owes an answer
    TLS_PENDING = 'TLS_PENDING'      # STARTTLS acked, TLS not up yet
    TRANSMISSION = 'TRANSMISSION'
    DISCONNECTED = 'DISCONNECTED'    # NBD_CMD_DISC received
    CLOSED = 'CLOSED'
    ERROR = 'ERROR'


# -- events -----------------------------------------------------------------

_event = dataclasses.dataclass(frozen=True, slots=True)


class Event:
    """Base of every event; events are immutable values."""

    __slots__ = ()


@_event
class ProtocolError(Event):
    """The peer broke the framing; the connection must be dropped."""

    message: str


@_event
class ConnectionClosed(Event):
    """The peer closed its side cleanly, between two messages."""


@_event
class ClientFlags(Event):
    """The client flags arrived; purely informational."""

    flags: int

    @property
    def fixed_newstyle(self) -> bool:
        return bool(self.flags & const.NBD_FLAG_C_FIXED_NEWSTYLE)

    @property
    def no_zeroes(self) -> bool:
        return bool(self.flags & const.NBD_FLAG_C_NO_ZEROES)


@_event
class ExportName(Event):
    """NBD_OPT_EXPORT_NAME: accept_export_name() or close() (no errors)."""

    name: str


@_event
class Abort(Event):
    """NBD_OPT_ABORT: answer ack_option(), then close."""


@_event
class List(Event):
    """NBD_OPT_LIST: send_server() per export, then ack_option()."""


@_event
class Info(Event):
    """NBD_OPT_INFO: send_info_*() then ack_option(), or reject_option()."""

    name: str
    info_requests: typing.Tuple[int, ...]


@_event
class Go(Event):
    """NBD_OPT_GO: as Info, but ack_option() enters transmission."""

    name: str
    info_requests: typing.Tuple[int, ...]


@_event
class StructuredReply(Event):
    """NBD_OPT_STRUCTURED_REPLY: ack_option() turns structured replies on."""


@_event
class ListMetaContext(Event):
    """NBD_OPT_LIST_META_CONTEXT: accept_meta_context() per match, ack."""

    export_name: str
    queries: typing.Tuple[str, ...]


@_event
class SetMetaContext(Event):
    """NBD_OPT_SET_META_CONTEXT: accept_meta_context() selects, then ack."""

    export_name: str
    queries: typing.Tuple[str, ...]


@_event
class StartTLS(Event):
    """NBD_OPT_STARTTLS: ack_option() (then TLS) or reject_option()."""


@_event
class UnknownOption(Event):
    """An option this core does not know: answer NBD_REP_ERR_UNSUP."""

    option: int


@_event
class InvalidOption(Event):
    """A known option the core refused; answer reject_option(error)."""

    option: int
    error: int
    message: str


@_event
class Command(Event):
    """A transmission request that passed validation; reply with reply_*()."""

    handle: int
    offset: int
    length: int
    flags: int

    @property
    def fua(self) -> bool:
        return bool(self.flags & const.NBD_CMD_FLAG_FUA)

    @property
    def no_hole(self) -> bool:
        return bool(self.flags & const.NBD_CMD_FLAG_NO_HOLE)

    @property
    def df(self) -> bool:
        return bool(self.flags & const.NBD_CMD_FLAG_DF)

    @property
    def req_one(self) -> bool:
        return bool(self.flags & const.NBD_CMD_FLAG_REQ_ONE)

    @property
    def fast_zero(self) -> bool:
        return bool(self.flags & const.NBD_CMD_FLAG_FAST_ZERO)


@_event
class Read(Command):
    """NBD_CMD_READ: reply_read(), reply_read_extents() or chunk calls."""


@_event
class Write(Command):
    """NBD_CMD_WRITE with its whole payload (``len(data) == length``)."""

    data: Buffer = dataclasses.field(repr=False)


@_event
class Disconnect(Command):
    """NBD_CMD_DISC: no reply; finish in-flight requests and close."""


@_event
class Flush(Command):
    """NBD_CMD_FLUSH: reply_ok() once acknowledged writes are durable."""


@_event
class Trim(Command):
    """NBD_CMD_TRIM."""


@_event
class Cache(Command):
    """NBD_CMD_CACHE: a hint; reply_ok() even if nothing is cached."""


@_event
class WriteZeroes(Command):
    """NBD_CMD_WRITE_ZEROES (see no_hole and fast_zero)."""


@_event
class BlockStatus(Command):
    """NBD_CMD_BLOCK_STATUS: reply_block_status() per selected context."""


@_event
class InvalidCommand(Event):
    """A request the core refused: answer reply_error(handle, error).

    Any WRITE payload has already been consumed, so the stream is in sync
    and the next request will parse normally.
    """

    handle: int
    type: int
    flags: int
    offset: int
    length: int
    error: int
    message: str


OptionEvent = typing.Union[
    ExportName, Abort, List, Info, Go, StructuredReply, ListMetaContext,
    SetMetaContext, StartTLS, UnknownOption, InvalidOption]


# -- wire formats -----------------------------------------------------------

_INFO_EXPORT = struct.Struct('>HQH')
_INFO_BLOCK_SIZE = struct.Struct('>HIII')
_CHUNK_DATA = struct.Struct('>IHHQIQ')        # header + offset
_CHUNK_HOLE = struct.Struct('>IHHQIQI')       # header + offset + size
_CHUNK_ERROR = struct.Struct('>IHHQIIH')      # header + error + msglen
_CHUNK_STATUS = struct.Struct('>IHHQII')      # header + context id

_MAX_U32 = 0xFFFFFFFF
_MAX_U64 = 0xFFFFFFFFFFFFFFFF
_ZEROES = bytes(1 << 20)
_PADDING = bytes(const.NBD_EXPORT_NAME_PADDING)

_KNOWN_CLIENT_FLAGS = (const.NBD_FLAG_C_FIXED_NEWSTYLE
                       | const.NBD_FLAG_C_NO_ZEROES)
_KNOWN_TRANSMISSION_FLAGS = (
    const.NBD_FLAG_HAS_FLAGS | const.NBD_FLAG_READ_ONLY
    | const.NBD_FLAG_SEND_FLUSH | const.NBD_FLAG_SEND_FUA
    | const.NBD_FLAG_ROTATIONAL | const.NBD_FLAG_SEND_TRIM
    | const.NBD_FLAG_SEND_WRITE_ZEROES | const.NBD_FLAG_SEND_DF
    | const.NBD_FLAG_CAN_MULTI_CONN | const.NBD_FLAG_SEND_CACHE
    | const.NBD_FLAG_SEND_FAST_ZERO)

_COMMAND_EVENTS = {
    const.NBD_CMD_READ: Read,
    const.NBD_CMD_DISC: Disconnect,
    const.NBD_CMD_FLUSH: Flush,
    const.NBD_CMD_TRIM: Trim,
    const.NBD_CMD_CACHE: Cache,
    const.NBD_CMD_WRITE_ZEROES: WriteZeroes,
    const.NBD_CMD_BLOCK_STATUS: BlockStatus,
}
# Requests that change data: refused with EPERM on a read-only export.
_MODIFYING = frozenset((const.NBD_CMD_WRITE, const.NBD_CMD_TRIM,
                        const.NBD_CMD_WRITE_ZEROES))
# "SHOULD return NBD_ENOSPC if it receives a write request including one
# or more sectors beyond the size of the device" (Error values), and the
# same sentence for NBD_CMD_WRITE_ZEROES; reads, trims, cache and block
# status beyond the end are NBD_EINVAL.
_ENOSPC_BEYOND_END = frozenset((const.NBD_CMD_WRITE,
                                const.NBD_CMD_WRITE_ZEROES))


def zero_pieces(length: int) -> typing.List[Buffer]:
    """Zero bytes for a reply, as views of one shared buffer (no alloc)."""
    pieces: typing.List[Buffer] = []
    step = len(_ZEROES)
    while length > 0:
        n = min(length, step)
        pieces.append(memoryview(_ZEROES)[:n])
        length -= n
    return pieces


class ServerConnection:
    """One NBD connection, server side, with no I/O.

    *max_payload* bounds READ and WRITE lengths (larger ones get
    NBD_EINVAL); the spec says any payload up to 2^25 SHOULD be accepted,
    hence the default. If the I/O layer advertises NBD_INFO_BLOCK_SIZE
    during NBD_OPT_GO, the advertised minimum block size and maximum
    payload are enforced instead.
    """

    def __init__(self, *,
                 max_payload: int = const.NBD_DEFAULT_MAX_PAYLOAD,
                 max_option_length: int = MAX_OPTION_LENGTH,
                 payload_buffer: typing.Callable[[int], typing.Any] = None
                 ) -> None:
        """``payload_buffer(length)`` gives the writable buffer (exactly
        ``length`` bytes) a WRITE payload is received into; the I/O layer
        may pass one that reuses memory. Default: a new bytearray.
        """
        if not 0 < max_payload <= _MAX_U32:
            raise ValueError('max_payload must be within 1..2^32-1')
        self.max_payload = max_payload
        self.max_option_length = max_option_length
        self._payload_buffer = payload_buffer or bytearray
        self._in = wire.InboundBuffer()
        self._state = ServerState.START
        self._error: typing.Optional[ProtocolError] = None
        self.client_flags = 0
        self.tls_active = False
        self.structured_replies = False
        # name -> id of the contexts selected by the last SET_META_CONTEXT
        self._contexts: typing.Dict[str, int] = {}
        self._contexts_export: typing.Optional[str] = None
        self._next_context_id = 1
        # the option being answered
        self._option: typing.Optional[OptionEvent] = None
        self._option_code = 0
        self._skipped_option: typing.Optional[OptionEvent] = None
        self._sent_infos: typing.Set[int] = set()
        self._info_export: typing.Optional[typing.Tuple[int, int]] = None
        self._info_block_size: typing.Optional[
            typing.Tuple[int, int, int]] = None
        self._pending_contexts: typing.Dict[str, int] = {}
        # transmission
        self.export_name: typing.Optional[str] = None
        self.export_size = 0
        self.transmission_flags = 0
        self.minimum_block = const.NBD_DEFAULT_MIN_BLOCK
        self._align_mask = 0
        self._allowed_flags: typing.Dict[int, typing.Optional[int]] = {}
        self._pending_write: typing.Optional[
            typing.Tuple[int, int, int, int]] = None
        self._pending_invalid: typing.Optional[InvalidCommand] = None
        self._inflight: typing.Dict[int, Event] = {}
        self._inflight_dups: typing.Dict[int, typing.List[Event]] = {}

    # -- introspection ------------------------------------------------------

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def meta_contexts(self) -> typing.Dict[str, int]:
        """Selected metadata contexts (name -> id), as negotiated so far."""
        return dict(self._contexts)

    @property
    def requests_in_flight(self) -> int:
        return len(self._inflight) + sum(
            len(v) for v in self._inflight_dups.values())

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: Buffer) -> None:
        """Add received bytes; ``b''`` means the peer closed its side."""
        state = self._state
        if state is ServerState.ERROR:
            raise LocalProtocolError('connection is in ERROR state')
        if state is ServerState.TLS_PENDING and data:
            raise LocalProtocolError(
                'bytes after STARTTLS belong to the TLS layer: call '
                'tls_established() and feed the decrypted stream')
        if state is ServerState.CLOSED:
            return
        self._in.feed(data)

    def next_event(self) -> typing.Union[Event, Pending]:
        """Parse the next event, or say why there is none (NEED_DATA...)."""
        state = self._state
        if state is ServerState.TRANSMISSION:
            return self._next_request()
        if state is ServerState.OPTIONS:
            return self._next_option()
        if state is ServerState.OPTION_REPLY:
            return PAUSED
        if state is ServerState.TLS_PENDING:
            return PAUSED
        if state is ServerState.HANDSHAKE:
            return self._next_client_flags()
        if state is ServerState.DISCONNECTED:
            if self._in.buf or self._in.skip or self._in.sink is not None:
                return self._fail('data received after NBD_CMD_DISC')
            return ConnectionClosed() if self._in.eof else NEED_DATA
        if state is ServerState.CLOSED:
            return ConnectionClosed()
        if state is ServerState.ERROR:
            return self._error
        raise LocalProtocolError('call initiate() before parsing')

    def _fail(self, message: str) -> ProtocolError:
        self._error = ProtocolError(message)
        self._state = ServerState.ERROR
        self._inflight.clear()
        self._inflight_dups.clear()
        return self._error

    def _need(self) -> typing.Union[Pending, Event]:
        inb = self._in
        if not inb.eof:
            return NEED_DATA
        if inb.idle():
            self._state = ServerState.CLOSED
            return ConnectionClosed()
        return self._fail('connection closed in the middle of a message')

    # -- handshake ------------------------------------------------------------

    def initiate(self) -> bytes:
        """The server greeting: NBDMAGIC, IHAVEOPT, handshake flags."""
        if self._state is not ServerState.START:
            raise LocalProtocolError('greeting already sent')
        self._state = ServerState.HANDSHAKE
        return wire.GREETING.pack(
            const.NBDMAGIC, const.IHAVEOPT,
            const.NBD_FLAG_FIXED_NEWSTYLE | const.NBD_FLAG_NO_ZEROES)

    def _next_client_flags(self) -> typing.Union[Event, Pending]:
        buf = self._in.buf
        if len(buf) < 4:
            return self._need()
        (flags,) = wire.U32.unpack_from(buf)
        del buf[:4]
        # "the server MUST drop the TCP connection if the client sets an
        # unknown flag, or a flag that does not match something advertised"
        if flags & ~_KNOWN_CLIENT_FLAGS:
            return self._fail('unknown client flags 0x%08x' % flags)
        self.client_flags = flags
        self._state = ServerState.OPTIONS
        return ClientFlags(flags)

    def _next_option(self) -> typing.Union[Event, Pending]:
        inb = self._in
        if self._skipped_option is not None:
            if inb.skip:
                return self._need()
            event = self._skipped_option
            self._skipped_option = None
            return self._deliver_option(event)
        buf = inb.buf
        if len(buf) < 16:
            return self._need()
        magic, option, length = wire.OPTION_HEADER.unpack_from(buf)
        if magic != const.IHAVEOPT:
            return self._fail('bad option magic 0x%016x' % magic)
        fixed = self.client_flags & const.NBD_FLAG_C_FIXED_NEWSTYLE
        if not fixed and option != const.NBD_OPT_EXPORT_NAME:
            # Without fixed newstyle the client cannot parse option
            # replies, and NBD_OPT_EXPORT_NAME is "the only valid option
            # in nonfixed newstyle negotiation": close, as old servers do.
            return self._fail('option %d from a client without fixed '
                              'newstyle negotiation' % option)
        if length > self.max_option_length:
            if option == const.NBD_OPT_EXPORT_NAME:
                # Cannot be answered with an error: terminate.
                return self._fail('NBD_OPT_EXPORT_NAME data too long')
            del buf[:16]
            event = self._oversized_option(option)
            if not inb.start_skip(length):
                self._skipped_option = event
                return self._need()
            return self._deliver_option(event)
        if len(buf) < 16 + length:
            return self._need()
        data = bytes(buf[16:16 + length])
        del buf[:16 + length]
        event = self._parse_option(option, data)
        if isinstance(event, ProtocolError):
            return event
        return self._deliver_option(event)

    def _oversized_option(self, option: int) -> OptionEvent:
        if option == const.NBD_OPT_ABORT:
            # "a server SHOULD ignore any data sent by the client"
            return Abort()
        if option not in _OPTION_PARSERS:
            return UnknownOption(option)
        if option == const.NBD_OPT_SET_META_CONTEXT:
            self._contexts = {}
        return InvalidOption(option, const.NBD_REP_ERR_TOO_BIG,
                             'option data longer than %d bytes'
                             % self.max_option_length)

    def _deliver_option(self, event: OptionEvent) -> OptionEvent:
        self._state = ServerState.OPTION_REPLY
        self._option = event
        self._option_code = _option_code(event)
        self._sent_infos = set()
        self._info_export = None
        self._info_block_size = None
        self._pending_contexts = {}
        return event

    def _parse_option(self, option: int, data: bytes
                      ) -> typing.Union[OptionEvent, ProtocolError]:
        parser = _OPTION_PARSERS.get(option)
        if parser is None:
            return UnknownOption(option)
        return parser(self, option, data)

    def _opt_export_name(self, option: int, data: bytes
                         ) -> typing.Union[ExportName, ProtocolError]:
        name = decode_string(data)
        if name is None:
            return self._fail('invalid export name in NBD_OPT_EXPORT_NAME')
        return ExportName(name)

    def _opt_abort(self, option: int, data: bytes) -> Abort:
        return Abort()

    def _opt_no_data(self, option: int, data: bytes) -> OptionEvent:
        # NBD_OPT_LIST, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY: "The
        # client MUST NOT send any additional data with the option, and
        # the server SHOULD reject a request that includes data with
        # NBD_REP_ERR_INVALID."
        if data:
            return InvalidOption(option, const.NBD_REP_ERR_INVALID,
                                 'option takes no data')
        if option == const.NBD_OPT_LIST:
            return List()
        if option == const.NBD_OPT_STRUCTURED_REPLY:
            return StructuredReply()
        if self.tls_active:
            # "If the server receives NBD_OPT_STARTTLS when TLS has already
            # been negotiated, it MUST reply with NBD_REP_ERR_INVALID."
            return InvalidOption(option, const.NBD_REP_ERR_INVALID,
                                 'TLS is already active')
        return StartTLS()

    def _opt_info_go(self, option: int, data: bytes) -> OptionEvent:
        size = len(data)
        if size < 6:
            return InvalidOption(option, const.NBD_REP_ERR_INVALID,
                                 'option data shorter than 6 bytes')
        (name_len,) = wire.U32.unpack_from(data)
        # "length of name ... MUST be no larger than the option data
        # length - 6"
        if name_len > size - 6:
            return InvalidOption(option, const.NBD_REP_ERR_INVALID,
                                 'export name overruns the option data')
        name = decode_string(data[4:4 + name_len])
        if name is None:
            return InvalidOption(option, const.NBD_REP_ERR_INVALID,
                                 'export name is not a valid string')
        (count,) = wire.U16.unpack_from(data, 4 + name_len)
        if size != 6 + name_len + 2 * count:
            return InvalidOption(option, const.NBD_REP_ERR_INVALID,
                                 'information request count does not '
                                 'match the option length')
        requests = struct.unpack_from('>%dH' % count, data, 6 + name_len)
        if option == const.NBD_OPT_GO:
            return Go(name, requests)
        return Info(name, requests)

    def _opt_meta_context(self, option: int, data: bytes) -> OptionEvent:
        if option == const.NBD_OPT_SET_META_CONTEXT:
            # "Issuing this command replaces all previously-set metadata
            # contexts (including when this command fails)"
            self._contexts = {}
            self._contexts_export = None
        parsed = _parse_meta_context_data(data)
        if isinstance(parsed, str):
            return InvalidOption(option, const.NBD_REP_ERR_INVALID, parsed)
        name, queries = parsed
        if option == const.NBD_OPT_LIST_META_CONTEXT:
            return ListMetaContext(name, queries)
        if not self.structured_replies:
            # "This option MUST NOT be requested unless structured replies
            # have been negotiated first. ... a server SHOULD send
            # NBD_REP_ERR_INVALID."
            return InvalidOption(option, const.NBD_REP_ERR_INVALID,
                                 'structured replies not negotiated')
        return SetMetaContext(name, queries)

    # -- answering options ----------------------------------------------------

    def _answering(self, *kinds: type) -> OptionEvent:
        if self._state is not ServerState.OPTION_REPLY:
            raise LocalProtocolError('no option is waiting for an answer '
                                     '(state %s)' % self._state.name)
        event = self._option
        if kinds and not isinstance(event, kinds):
            raise LocalProtocolError('not a valid answer to %s'
                                     % type(event).__name__)
        return event

    def _option_reply(self, reply_type: int, data: bytes = b'') -> bytes:
        return wire.OPTION_REPLY.pack(const.NBD_REP_MAGIC, self._option_code,
                                      reply_type, len(data)) + data

    def ack_option(self) -> bytes:
        """Final NBD_REP_ACK for the current option, with its effects.

        STRUCTURED_REPLY turns structured replies on; SET_META_CONTEXT
        commits the accepted contexts; STARTTLS moves to TLS_PENDING; GO
        enters transmission (with the NBD_INFO_EXPORT values sent); ABORT
        closes.
        """
        event = self._answering(Abort, List, Info, Go, StructuredReply,
                                ListMetaContext, SetMetaContext, StartTLS)
        if isinstance(event, (Info, Go)) and self._info_export is None:
            # "the server MUST send at least one NBD_REP_INFO, with an
            # NBD_INFO_EXPORT information type" before NBD_REP_ACK
            raise LocalProtocolError('send_info_export() must come before '
                                     'the ACK of INFO/GO')
        out = self._option_reply(const.NBD_REP_ACK)
        self._option = None
        self._state = ServerState.OPTIONS
        if isinstance(event, Abort):
            self._state = ServerState.CLOSED
        elif isinstance(event, StructuredReply):
            self.structured_replies = True
        elif isinstance(event, SetMetaContext):
            self._contexts = self._pending_contexts
            self._contexts_export = event.export_name
        elif isinstance(event, StartTLS):
            self._state = ServerState.TLS_PENDING
        elif isinstance(event, Go):
            size, flags = self._info_export
            self._enter_transmission(event.name, size, flags,
                                     self._info_block_size)
        self._pending_contexts = {}
        return out

    def reject_option(self, error: int, message: str = '') -> bytes:
        """Final error reply (an NBD_REP_ERR_* code) for the option."""
        event = self._answering(List, Info, Go, StructuredReply,
                                ListMetaContext, SetMetaContext, StartTLS,
                                UnknownOption, InvalidOption)
        if not error & const.NBD_REP_FLAG_ERROR or error > _MAX_U32:
            raise LocalProtocolError('0x%x is not an error reply' % error)
        if error == const.NBD_REP_ERR_TLS_REQD and self.tls_active:
            # "The server MUST NOT send NBD_REP_ERR_TLS_REQD in reply to
            # any option if TLS has already been initiated."
            raise LocalProtocolError('TLS_REQD once TLS is active')
        if error == const.NBD_REP_ERR_BLOCK_SIZE_REQD and (
                not isinstance(event, (Info, Go))
                or const.NBD_INFO_BLOCK_SIZE in event.info_requests):
            # "The server MUST NOT send this error if size constraints
            # were requested with NBD_INFO_BLOCK_SIZE"
            raise LocalProtocolError('BLOCK_SIZE_REQD not allowed here')
        out = self._option_reply(error, encode_string(message, 'message'))
        self._option = None
        self._pending_contexts = {}
        self._state = ServerState.OPTIONS
        return out

    def send_server(self, name: str, description: str = '') -> bytes:
        """One NBD_REP_SERVER entry in answer to NBD_OPT_LIST."""
        self._answering(List)
        raw = encode_string(name, 'export name')
        return self._option_reply(
            const.NBD_REP_SERVER,
            wire.U32.pack(len(raw)) + raw +
            encode_string(description, 'description'))

    def _info(self, info_type: int, payload: bytes) -> bytes:
        self._answering(Info, Go)
        if info_type in self._sent_infos:
            # "A particular information type SHOULD only appear once"
            raise LocalProtocolError('information type %d already sent'
                                     % info_type)
        self._sent_infos.add(info_type)
        return self._option_reply(const.NBD_REP_INFO, payload)

    def send_info_export(self, size: int, flags: int) -> bytes:
        """NBD_INFO_EXPORT: export size and transmission flags.

        NBD_FLAG_HAS_FLAGS is added ("MUST always be 1"). For GO these are
        the values the transmission phase is validated against.
        """
        self._answering(Info, Go)
        flags = self._check_export(size, flags)
        out = self._info(const.NBD_INFO_EXPORT, _INFO_EXPORT.pack(
            const.NBD_INFO_EXPORT, size, flags))
        self._info_export = (size, flags)
        return out

    def send_info_name(self, name: str) -> bytes:
        """NBD_INFO_NAME: the canonical name of the export."""
        return self._info(const.NBD_INFO_NAME, wire.U16.pack(
            const.NBD_INFO_NAME) + encode_string(name, 'export name'))

    def send_info_description(self, description: str) -> bytes:
        """NBD_INFO_DESCRIPTION: text for a human."""
        return self._info(const.NBD_INFO_DESCRIPTION, wire.U16.pack(
            const.NBD_INFO_DESCRIPTION) + encode_string(description,
                                                        'description'))

    def send_info_block_size(self, minimum: int, preferred: int,
                             maximum: int) -> bytes:
        """NBD_INFO_BLOCK_SIZE; for GO, also what will be enforced."""
        self._answering(Info, Go)
        # "Size constraints": minimum a power of 2 <= 2^16; preferred a
        # power of 2 >= max(minimum, 512); maximum >= preferred.
        if (not _power_of_two(minimum) or minimum > const.NBD_MAX_MIN_BLOCK
                or not _power_of_two(preferred)
                or preferred < max(minimum, 512)
                or not preferred <= maximum <= _MAX_U32):
            raise LocalProtocolError('invalid block sizes %d/%d/%d'
                                     % (minimum, preferred, maximum))
        if maximum > self.max_payload:
            raise LocalProtocolError(
                'cannot advertise a maximum payload above max_payload=%d'
                % self.max_payload)
        out = self._info(const.NBD_INFO_BLOCK_SIZE, _INFO_BLOCK_SIZE.pack(
            const.NBD_INFO_BLOCK_SIZE, minimum, preferred, maximum))
        self._info_block_size = (minimum, preferred, maximum)
        return out

    def accept_meta_context(self, name: str) -> bytes:
        """NBD_REP_META_CONTEXT for a context matching the client's query.

        For SET_META_CONTEXT the core assigns the context id and selects
        the context once the option is acked; for LIST the id is 0 ("SHOULD
        be set to zero").
        """
        event = self._answering(ListMetaContext, SetMetaContext)
        raw = encode_string(name, 'context name')
        if b':' not in raw[1:]:
            raise LocalProtocolError('context name needs a namespace')
        if isinstance(event, ListMetaContext):
            context_id = 0
        else:
            if name in self._pending_contexts:
                raise LocalProtocolError('context %r already selected'
                                         % name)
            context_id = self._next_context_id
            self._next_context_id = (context_id % _MAX_U32) + 1
            self._pending_contexts[name] = context_id
        return self._option_reply(const.NBD_REP_META_CONTEXT,
                                  wire.U32.pack(context_id) + raw)

    def accept_export_name(self, size: int, flags: int) -> bytes:
        """Answer NBD_OPT_EXPORT_NAME and enter transmission.

        To refuse the export call close(): the spec leaves no error reply
        ("the server MUST terminate the session").
        """
        event = self._answering(ExportName)
        flags = self._check_export(size, flags)
        out = wire.EXPORT_NAME_REPLY.pack(size, flags)
        # "124 bytes, zeroes (reserved) (unless NBD_FLAG_C_NO_ZEROES was
        # negotiated by the client)"
        if not self.client_flags & const.NBD_FLAG_C_NO_ZEROES:
            out += _PADDING
        self._option = None
        self._enter_transmission(event.name, size, flags, None)
        return out

    def take_trailing_data(self) -> bytes:
        """Bytes received after STARTTLS: the start of the TLS stream."""
        if self._state is not ServerState.TLS_PENDING:
            raise LocalProtocolError('only valid after STARTTLS is acked')
        data = bytes(self._in.buf)
        self._in.buf.clear()
        return data

    def tls_established(self) -> None:
        """The transport is now TLS: resume option haggling over it.

        "When this command succeeds, the server MUST NOT preserve any
        negotiation state (such as a request for NBD_OPT_STRUCTURED_REPLY,
        or metadata contexts from NBD_OPT_SET_META_CONTEXT)".
        """
        if self._state is not ServerState.TLS_PENDING:
            raise LocalProtocolError('STARTTLS was not acknowledged')
        if self._in.buf:
            raise LocalProtocolError('take_trailing_data() first')
        self.tls_active = True
        self.structured_replies = False
        self._contexts = {}
        self._contexts_export = None
        self._in = wire.InboundBuffer()
        self._state = ServerState.OPTIONS

    def close(self) -> None:
        """We drop the connection (e.g. refusing NBD_OPT_EXPORT_NAME)."""
        self._state = ServerState.CLOSED
        self._inflight.clear()
        self._inflight_dups.clear()

    def _check_export(self, size: int, flags: int) -> int:
        flags |= const.NBD_FLAG_HAS_FLAGS
        if not 0 <= size <= _MAX_U64:
            raise LocalProtocolError('export size out of range')
        if flags & ~_KNOWN_TRANSMISSION_FLAGS:
            raise LocalProtocolError('unknown transmission flags 0x%x'
                                     % flags)
        if flags & const.NBD_FLAG_SEND_DF and not self.structured_replies:
            # "MUST leave this flag clear if structured replies have not
            # been negotiated"
            raise LocalProtocolError('NBD_FLAG_SEND_DF needs structured '
                                     'replies')
        if (flags & const.NBD_FLAG_SEND_FAST_ZERO
                and not flags & const.NBD_FLAG_SEND_WRITE_ZEROES):
            raise LocalProtocolError('NBD_FLAG_SEND_FAST_ZERO needs '
                                     'NBD_FLAG_SEND_WRITE_ZEROES')
        return flags

    def _enter_transmission(self, name: str, size: int, flags: int,
                            block_size: typing.Optional[
                                typing.Tuple[int, int, int]]) -> None:
        self.export_name = name
        self.export_size = size
        self.transmission_flags = flags
        if block_size is not None:
            self.minimum_block = block_size[0]
            self.max_payload = block_size[2]
        self._align_mask = self.minimum_block - 1
        if self._contexts_export != name:
            # BLOCK_STATUS needs contexts selected "for the same export
            # name used to enter transmission phase".
            self._contexts = {}
        fua = const.NBD_CMD_FLAG_FUA if flags & const.NBD_FLAG_SEND_FUA \
            else 0
        allowed: typing.Dict[int, typing.Optional[int]] = {
            const.NBD_CMD_READ: fua | (
                const.NBD_CMD_FLAG_DF if flags & const.NBD_FLAG_SEND_DF
                else 0),
            const.NBD_CMD_WRITE: fua,
            const.NBD_CMD_FLUSH: (
                fua if flags & const.NBD_FLAG_SEND_FLUSH else None),
            const.NBD_CMD_TRIM: (
                fua if flags & const.NBD_FLAG_SEND_TRIM else None),
            # Some clients send CACHE without NBD_FLAG_SEND_CACHE (the spec
            # notes it); accept it, since it is only a hint.
            const.NBD_CMD_CACHE: fua,
            const.NBD_CMD_WRITE_ZEROES: None,
            const.NBD_CMD_BLOCK_STATUS: (
                fua | const.NBD_CMD_FLAG_REQ_ONE if self._contexts
                else None),
        }
        if flags & const.NBD_FLAG_SEND_WRITE_ZEROES:
            allowed[const.NBD_CMD_WRITE_ZEROES] = (
                fua | const.NBD_CMD_FLAG_NO_HOLE | (
                    const.NBD_CMD_FLAG_FAST_ZERO
                    if flags & const.NBD_FLAG_SEND_FAST_ZERO else 0))
        self._allowed_flags = allowed
        self._state = ServerState.TRANSMISSION

    # -- transmission: parsing ------------------------------------------------

    def _next_request(self) -> typing.Union[Event, Pending]:
        inb = self._in
        if self._pending_write is not None:
            if not inb.sink_full():
                return self._need()
            flags, handle, offset, length = self._pending_write
            self._pending_write = None
            event: Event = Write(handle, offset, length, flags,
                                 inb.end_sink())
            self._track(handle, event)
            return event
        if self._pending_invalid is not None:
            if inb.skip:
                return self._need()
            event = self._pending_invalid
            self._pending_invalid = None
            self._track(event.handle, event)
            return event
        buf = inb.buf
        if len(buf) < 28:
            return self._need()
        magic, flags, kind, handle, offset, length = \
            wire.REQUEST.unpack_from(buf)
        if magic != const.NBD_REQUEST_MAGIC:
            return self._fail('bad request magic 0x%08x' % magic)
        del buf[:28]
        if kind == const.NBD_CMD_DISC:
            # No reply is possible, so odd fields are not answered; "A
            # client MUST NOT send anything ... after NBD_CMD_DISC".
            self._state = ServerState.DISCONNECTED
            return Disconnect(handle, offset, length, flags)
        refusal = self._check_request(kind, flags, offset, length)
        if kind == const.NBD_CMD_WRITE:
            if refusal is not None:
                # The payload follows the header whatever we think of it:
                # drop it as it arrives so that the next header parses.
                event = InvalidCommand(handle, kind, flags, offset, length,
                                       refusal[0], refusal[1])
                if not inb.start_skip(length):
                    self._pending_invalid = event
                    return self._need()
                self._track(handle, event)
                return event
            if len(buf) >= length:
                event = Write(handle, offset, length, flags, inb.take(length))
                self._track(handle, event)
                return event
            # The rest of the payload goes straight into its buffer as it
            # arrives (start_sink cannot fill it: the bytes are not here).
            inb.start_sink(self._payload_buffer(length))
            self._pending_write = (flags, handle, offset, length)
            return self._need()
        if refusal is not None:
            event = InvalidCommand(handle, kind, flags, offset, length,
                                   refusal[0], refusal[1])
        else:
            event = _COMMAND_EVENTS[kind](handle, offset, length, flags)
        self._track(handle, event)
        return event

    def _check_request(self, kind: int, flags: int, offset: int,
                       length: int) -> typing.Optional[typing.Tuple[int, str]]:
        """None if the request is valid, else (NBD errno, message).

        Rules from "Request types", "Size constraints" and "Error values".
        """
        allowed = self._allowed_flags.get(kind, -1)
        if allowed == -1:
            # "The server SHOULD return NBD_EINVAL if it receives an
            # unknown command."
            return const.NBD_EINVAL, 'unknown command %d' % kind
        if allowed is None:
            if kind == const.NBD_CMD_BLOCK_STATUS:
                # "Servers SHOULD reply with NBD_EINVAL to clients sending
                # NBD_CMD_BLOCK_STATUS without selecting at least one
                # metadata context."
                return const.NBD_EINVAL, 'no metadata context selected'
            return const.NBD_EINVAL, 'command %d not advertised' % kind
        if flags & ~allowed:
            # "SHOULD return NBD_EINVAL if it receives an unknown command
            # flag ... or a flag not explicitly documented as applicable"
            return const.NBD_EINVAL, 'flags 0x%x not valid here' % flags
        if kind == const.NBD_CMD_FLUSH:
            if offset or length:
                # "length and offset are reserved, and MUST be set to
                # all-zero"
                return const.NBD_EINVAL, 'FLUSH with offset or length'
            return None
        if (kind in _MODIFYING
                and self.transmission_flags & const.NBD_FLAG_READ_ONLY):
            # "SHOULD return NBD_EPERM if it receives a write or trim
            # request on a read-only export" (write zeroes: same).
            return const.NBD_EPERM, 'export is read-only'
        if not length:
            # Zero lengths are "unspecified" by the spec; refusing them
            # keeps zero-sized I/O out of the storage layer.
            return const.NBD_EINVAL, 'zero length'
        if offset + length > self.export_size:
            if kind in _ENOSPC_BEYOND_END:
                return const.NBD_ENOSPC, 'beyond the end of the export'
            return const.NBD_EINVAL, 'beyond the end of the export'
        if (offset | length) & self._align_mask:
            # "SHOULD report an NBD_EINVAL error if the client's request is
            # not aligned to advertised minimum block size boundaries"
            return const.NBD_EINVAL, 'not aligned to the minimum block'
        if length > self.max_payload and (kind == const.NBD_CMD_READ
                                          or kind == const.NBD_CMD_WRITE):
            # "the client MUST NOT request a length larger than the maximum
            # payload size". EINVAL, not EOVERFLOW: "The server SHOULD NOT
            # return NBD_EOVERFLOW except ... NBD_CMD_FLAG_DF ... or when a
            # command without payload requests a length larger".
            return const.NBD_EINVAL, 'longer than the maximum payload'
        return None

    def _track(self, handle: int, event: Event) -> None:
        prev = self._inflight.setdefault(handle, event)
        if prev is not event:
            # Cookies SHOULD be unique among in-flight requests; tolerate
            # reuse and answer the oldest first.
            self._inflight_dups.setdefault(handle, []).append(event)

    # -- transmission: replies ------------------------------------------------

    def _lookup(self, handle: int, kinds: typing.Tuple[type, ...]) -> Event:
        state = self._state
        if (state is not ServerState.TRANSMISSION
                and state is not ServerState.DISCONNECTED):
            raise LocalProtocolError('not in transmission (state %s)'
                                     % state.name)
        event = self._inflight.get(handle)
        if event is None:
            raise LocalProtocolError('no request in flight with handle %d'
                                     % handle)
        if type(event) not in kinds:
            raise LocalProtocolError('wrong reply for %s'
                                     % type(event).__name__)
        return event

    def _retire(self, handle: int) -> None:
        dups = self._inflight_dups.get(handle) if self._inflight_dups \
            else None
        if dups:
            self._inflight[handle] = dups.pop(0)
            if not dups:
                del self._inflight_dups[handle]
        else:
            del self._inflight[handle]

    def reply_ok(self, handle: int) -> bytes:
        """Success for a request without reply data (write, flush, ...)."""
        self._lookup(handle, (Write, Flush, Trim, Cache, WriteZeroes))
        self._retire(handle)
        return wire.SIMPLE_REPLY.pack(const.NBD_SIMPLE_REPLY_MAGIC, 0, handle)

    def reply_error(self, handle: int, error: int, message: str = ''
                    ) -> bytes:
        """Final error reply for any request (structured if negotiated).

        Structured replies forbid a simple reply to NBD_CMD_READ "even for
        the case of an early NBD_EINVAL" and "SHOULD prefer sending errors
        via a structured reply", so once negotiated every error is an
        NBD_REPLY_TYPE_ERROR chunk (carrying *message*).
        """
        self._lookup(handle, _ALL_REPLYABLE)
        if not 0 < error <= _MAX_U32:
            raise LocalProtocolError('error must be a nonzero NBD errno')
        if self.structured_replies:
            raw = encode_string(message, 'message')
            out = _CHUNK_ERROR.pack(
                const.NBD_STRUCTURED_REPLY_MAGIC, const.NBD_REPLY_FLAG_DONE,
                const.NBD_REPLY_TYPE_ERROR, handle, 6 + len(raw), error,
                len(raw)) + raw
        else:
            out = wire.SIMPLE_REPLY.pack(const.NBD_SIMPLE_REPLY_MAGIC, error,
                                         handle)
        self._retire(handle)
        return out

    def reply_read(self, handle: int, data: Buffer) -> typing.List[Buffer]:
        """All the data of a READ, as [header, data] for writev.

        *data* is passed through uncopied; with structured replies it is
        one NBD_REPLY_TYPE_OFFSET_DATA chunk with NBD_REPLY_FLAG_DONE.
        """
        event = self._lookup(handle, (Read,))
        length = len(data)
        if length != event.length:
            raise LocalProtocolError('read reply of %d bytes for a %d-byte '
                                     'request' % (length, event.length))
        self._retire(handle)
        if self.structured_replies:
            return [_CHUNK_DATA.pack(
                const.NBD_STRUCTURED_REPLY_MAGIC, const.NBD_REPLY_FLAG_DONE,
                const.NBD_REPLY_TYPE_OFFSET_DATA, handle, 8 + length,
                event.offset), data]
        return [wire.SIMPLE_REPLY.pack(const.NBD_SIMPLE_REPLY_MAGIC, 0,
                                       handle), data]

    def reply_read_extents(self, handle: int, extents: typing.Iterable[
            typing.Tuple[int, int, typing.Optional[Buffer]]]
    ) -> typing.List[Buffer]:
        """Answer a READ from (offset, length, data-or-None) extents.

        The extents must tile the request exactly; ``None`` marks a hole.
        With structured replies, holes become NBD_REPLY_TYPE_OFFSET_HOLE
        chunks (adjacent holes merged) and data extents OFFSET_DATA chunks,
        the last chunk carrying NBD_REPLY_FLAG_DONE; with NBD_CMD_FLAG_DF
        there is at most one content chunk, as the flag requires. Without
        structured replies the holes are sent as zeroes in a simple reply.
        """
        event = self._lookup(handle, (Read,))
        start = event.offset
        end = start + event.length
        segments: typing.List[
            typing.Tuple[int, int, typing.Optional[Buffer]]] = []
        pos = start
        for offset, length, data in extents:
            if offset != pos or length <= 0 or offset + length > end:
                raise LocalProtocolError('extents must tile the request '
                                         '[%d, %d)' % (start, end))
            if data is not None and len(data) != length:
                raise LocalProtocolError('extent data length mismatch')
            if data is None and segments and segments[-1][2] is None:
                segments[-1] = (segments[-1][0], segments[-1][1] + length,
                                None)
            else:
                segments.append((offset, length, data))
            pos += length
        if pos != end:
            raise LocalProtocolError('extents do not cover the request')
        self._retire(handle)
        if not self.structured_replies:
            pieces: typing.List[Buffer] = [wire.SIMPLE_REPLY.pack(
                const.NBD_SIMPLE_REPLY_MAGIC, 0, handle)]
            for _offset, length, data in segments:
                if data is None:
                    pieces.extend(zero_pieces(length))
                else:
                    pieces.append(data)
            return pieces
        if event.flags & const.NBD_CMD_FLAG_DF and len(segments) > 1:
            # "If the area being read contains both data and a hole, the
            # server MUST use NBD_REPLY_TYPE_OFFSET_DATA with the zeroes
            # explicitly present."
            joined = bytearray(event.length)
            for offset, length, data in segments:
                if data is not None:
                    joined[offset - start:offset - start + length] = data
            segments = [(start, event.length, joined)]
        pieces = []
        last = len(segments) - 1
        for index, (offset, length, data) in enumerate(segments):
            flags = const.NBD_REPLY_FLAG_DONE if index == last else 0
            if data is None:
                pieces.append(_CHUNK_HOLE.pack(
                    const.NBD_STRUCTURED_REPLY_MAGIC, flags,
                    const.NBD_REPLY_TYPE_OFFSET_HOLE, handle, 12, offset,
                    length))
            else:
                pieces.append(_CHUNK_DATA.pack(
                    const.NBD_STRUCTURED_REPLY_MAGIC, flags,
                    const.NBD_REPLY_TYPE_OFFSET_DATA, handle, 8 + length,
                    offset))
                pieces.append(data)
        return pieces

    def reply_block_status(self, handle: int, extents: typing.Iterable[
            typing.Tuple[int, int, int]],
            context: str = const.NBD_META_BASE_ALLOCATION,
            final: bool = True) -> bytes:
        """One NBD_REPLY_TYPE_BLOCK_STATUS chunk from extents.

        *extents* are (offset, length, status) in offset order. For
        ``base:allocation`` the status is NBD_STATE_HOLE | NBD_STATE_ZERO
        for unallocated space and 0 for data. Extents
        before the request are skipped, the first and last are clipped to
        the request, neighbours with equal status are merged; with
        NBD_CMD_FLAG_REQ_ONE only the first descriptor is sent. Send one
        chunk per selected context, *final* on the last one.
        """
        event = self._lookup(handle, (BlockStatus,))
        context_id = self._contexts.get(context)
        if context_id is None:
            raise LocalProtocolError('context %r was not selected'
                                     % context)
        start = event.offset
        end = start + event.length
        words: typing.List[int] = []
        pos = start
        limit = 2 * const.NBD_MAX_BLOCK_STATUS_EXTENTS
        for offset, length, status in extents:
            extent_end = offset + length
            if length <= 0 or extent_end <= pos:
                continue
            if offset > pos:
                raise LocalProtocolError('gap in the extents at %d' % pos)
            size = min(extent_end, end) - pos
            status &= _MAX_U32
            if words and words[-1] == status:
                words[-2] += size
            elif len(words) < limit:
                words.append(size)
                words.append(status)
            else:
                break
            pos += size
            if pos >= end:
                break
        if not words:
            raise LocalProtocolError('no extent covers offset %d' % start)
        if event.flags & const.NBD_CMD_FLAG_REQ_ONE:
            del words[2:]
        if final:
            self._retire(handle)
        count = len(words)
        return _CHUNK_STATUS.pack(
            const.NBD_STRUCTURED_REPLY_MAGIC,
            const.NBD_REPLY_FLAG_DONE if final else 0,
            const.NBD_REPLY_TYPE_BLOCK_STATUS, handle, 4 + 4 * count,
            context_id) + struct.pack('>%dI' % count, *words)

    # Lower-level structured chunks, for a read served piece by piece.

    def _structured(self, handle: int, kinds: typing.Tuple[type, ...]
                    ) -> Event:
        event = self._lookup(handle, kinds)
        if not self.structured_replies:
            raise LocalProtocolError('structured replies not negotiated')
        return event

    def _in_request(self, event: Event, offset: int, length: int) -> None:
        if (length <= 0 or offset < event.offset
                or offset + length > event.offset + event.length):
            raise LocalProtocolError('chunk outside the request')

    def reply_chunk_data(self, handle: int, offset: int, data: Buffer,
                         final: bool = False) -> typing.List[Buffer]:
        """One NBD_REPLY_TYPE_OFFSET_DATA chunk of a READ reply."""
        event = self._structured(handle, (Read,))
        self._in_request(event, offset, len(data))
        if final:
            self._retire(handle)
        return [_CHUNK_DATA.pack(
            const.NBD_STRUCTURED_REPLY_MAGIC,
            const.NBD_REPLY_FLAG_DONE if final else 0,
            const.NBD_REPLY_TYPE_OFFSET_DATA, handle, 8 + len(data),
            offset), data]

    def reply_chunk_hole(self, handle: int, offset: int, length: int,
                         final: bool = False) -> bytes:
        """One NBD_REPLY_TYPE_OFFSET_HOLE chunk of a READ reply."""
        event = self._structured(handle, (Read,))
        self._in_request(event, offset, length)
        if final:
            self._retire(handle)
        return _CHUNK_HOLE.pack(
            const.NBD_STRUCTURED_REPLY_MAGIC,
            const.NBD_REPLY_FLAG_DONE if final else 0,
            const.NBD_REPLY_TYPE_OFFSET_HOLE, handle, 12, offset, length)

    def reply_chunk_error_offset(self, handle: int, error: int,
                                 offset: int, message: str = '',
                                 final: bool = False) -> bytes:
        """NBD_REPLY_TYPE_ERROR_OFFSET: the request failed at *offset*."""
        event = self._structured(handle, (Read, Write, Trim, Cache,
                                          WriteZeroes, BlockStatus))
        self._in_request(event, offset, 1)
        if not 0 < error <= _MAX_U32:
            raise LocalProtocolError('error must be a nonzero NBD errno')
        raw = encode_string(message, 'message')
        if final:
            self._retire(handle)
        return _CHUNK_ERROR.pack(
            const.NBD_STRUCTURED_REPLY_MAGIC,
            const.NBD_REPLY_FLAG_DONE if final else 0,
            const.NBD_REPLY_TYPE_ERROR_OFFSET, handle, 14 + len(raw),
            error, len(raw)) + raw + struct.pack('>Q', offset)

    def reply_chunk_done(self, handle: int) -> bytes:
        """NBD_REPLY_TYPE_NONE with NBD_REPLY_FLAG_DONE: end of a reply."""
        self._structured(handle, _ALL_REPLYABLE)
        self._retire(handle)
        return wire.CHUNK.pack(const.NBD_STRUCTURED_REPLY_MAGIC,
                               const.NBD_REPLY_FLAG_DONE,
                               const.NBD_REPLY_TYPE_NONE, handle, 0)


_ALL_REPLYABLE = (Read, Write, Flush, Trim, Cache, WriteZeroes, BlockStatus,
                  InvalidCommand)

_OPTION_PARSERS: typing.Dict[int, typing.Callable[
    [ServerConnection, int, bytes],
    typing.Union[OptionEvent, ProtocolError]]] = {
    const.NBD_OPT_EXPORT_NAME: ServerConnection._opt_export_name,
    const.NBD_OPT_ABORT: ServerConnection._opt_abort,
    const.NBD_OPT_LIST: ServerConnection._opt_no_data,
    const.NBD_OPT_STARTTLS: ServerConnection._opt_no_data,
    const.NBD_OPT_INFO: ServerConnection._opt_info_go,
    const.NBD_OPT_GO: ServerConnection._opt_info_go,
    const.NBD_OPT_STRUCTURED_REPLY: ServerConnection._opt_no_data,
    const.NBD_OPT_LIST_META_CONTEXT: ServerConnection._opt_meta_context,
    const.NBD_OPT_SET_META_CONTEXT: ServerConnection._opt_meta_context,
}

_OPTION_CODES = {
    ExportName: const.NBD_OPT_EXPORT_NAME,
    Abort: const.NBD_OPT_ABORT,
    List: const.NBD_OPT_LIST,
    StartTLS: const.NBD_OPT_STARTTLS,
    Info: const.NBD_OPT_INFO,
    Go: const.NBD_OPT_GO,
    StructuredReply: const.NBD_OPT_STRUCTURED_REPLY,
    ListMetaContext: const.NBD_OPT_LIST_META_CONTEXT,
    SetMetaContext: const.NBD_OPT_SET_META_CONTEXT,
}


def _option_code(event: OptionEvent) -> int:
    if isinstance(event, (UnknownOption, InvalidOption)):
        return event.option
    return _OPTION_CODES[type(event)]


def _power_of_two(value: int) -> bool:
    return value > 0 and not value & (value - 1)


def _parse_meta_context_data(data: bytes) -> typing.Union[
        str, typing.Tuple[str, typing.Tuple[str, ...]]]:
    """Export name and queries of a *_META_CONTEXT option, or an error.

    "If the option request is syntactically invalid (such as a query
    length that would require reading beyond the original length given in
    the option header), the server MUST fail the request with
    NBD_REP_ERR_INVALID."
    """
    size = len(data)
    if size < 8:
        return 'option data shorter than 8 bytes'
    (name_len,) = wire.U32.unpack_from(data)
    if name_len > size - 8:
        return 'export name overruns the option data'
    name = decode_string(data[4:4 + name_len])
    if name is None:
        return 'export name is not a valid string'
    pos = 4 + name_len
    (count,) = wire.U32.unpack_from(data, pos)
    pos += 4
    # Each query needs at least its 4-byte length: bound the count first.
    if count > (size - pos) // 4:
        return 'query count overruns the option data'
    queries = []
    for _ in range(count):
        if pos + 4 > size:
            return 'query overruns the option data'
        (query_len,) = wire.U32.unpack_from(data, pos)
        pos += 4
        if query_len > size - pos:
            return 'query overruns the option data'
        query = decode_string(data[pos:pos + query_len])
        if query is None:
            return 'query is not a valid string'
        queries.append(query)
        pos += query_len
    if pos != size:
        return 'trailing bytes after the queries'
    return name, tuple(queries)
