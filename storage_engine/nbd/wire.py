"""What both NBD protocol cores share: framing, strings, the receive buffer.

No I/O here either (see protocol.py for the sans-IO design).
"""

import struct
import typing

from storage_engine.nbd import constants as const

Buffer = typing.Union[bytes, bytearray, memoryview]


class LocalProtocolError(Exception):
    """Our side asked the core to do something the protocol forbids now.

    Raised by the serialising methods (never by parsing): the state of the
    connection is left unchanged, so the caller may recover, but usually
    this is a bug in the I/O layer.
    """


U16 = struct.Struct('>H')
U32 = struct.Struct('>I')
GREETING = struct.Struct('>QQH')
OPTION_HEADER = struct.Struct('>QII')
OPTION_REPLY = struct.Struct('>QIII')
EXPORT_NAME_REPLY = struct.Struct('>QH')
REQUEST = struct.Struct('>IHHQQI')
SIMPLE_REPLY = struct.Struct('>IIQ')
CHUNK = struct.Struct('>IHHQI')


def decode_string(raw: Buffer) -> typing.Optional[str]:
    """Decode a protocol string, or None if the spec forbids it.

    "a sequence of UTF-8 code points, which is not NUL terminated, MUST NOT
    contain NUL characters ... MUST be no longer than 4096 bytes".
    """
    if len(raw) > const.NBD_MAX_STRING or b'\0' in raw:
        return None
    try:
        return bytes(raw).decode('utf-8')
    except UnicodeDecodeError:
        return None


def encode_string(text: str, what: str = 'string') -> bytes:
    """Encode a string we send, refusing what the spec forbids."""
    raw = text.encode('utf-8')
    if len(raw) > const.NBD_MAX_STRING or b'\0' in raw:
        raise LocalProtocolError('%s is longer than %d bytes or contains NUL'
                                 % (what, const.NBD_MAX_STRING))
    return raw


class InboundBuffer:
    """Received bytes not parsed yet, plus two shortcuts for payloads.

    A large payload (a WRITE on the server, read data on the client) is
    copied straight from the received chunk into its final buffer (the
    *sink*) instead of being appended to the parse buffer first; a payload
    that must be thrown away (an invalid WRITE) is dropped as it arrives
    (*skip*). Both keep memory bounded and cost one copy at most.
    """

    __slots__ = ('buf', 'eof', 'sink', 'sink_pos', 'skip')

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.sink: typing.Optional[typing.Any] = None
        self.sink_pos = 0
        self.skip = 0

    def feed(self, data: Buffer) -> None:
        n = len(data)
        if not n:
            self.eof = True
            return
        if self.eof:
            raise LocalProtocolError('data received after end of file')
        if self.skip:
            if n <= self.skip:
                self.skip -= n
                return
            data = memoryview(data)[self.skip:]
            self.skip = 0
            n = len(data)
        sink = self.sink
        if sink is not None:
            pos = self.sink_pos
            room = len(sink) - pos
            if room:
                if n <= room:
                    sink[pos:pos + n] = data
                    self.sink_pos = pos + n
                    return
                sink[pos:] = memoryview(data)[:room]
                self.sink_pos = pos + room
                data = memoryview(data)[room:]
        self.buf += data

    def take(self, n: int) -> bytes:
        """Remove and return the first *n* buffered bytes (one copy)."""
        with memoryview(self.buf) as view:
            out = view[:n].tobytes()
        del self.buf[:n]
        return out

    def start_sink(self, target: typing.Any) -> bool:
        """Route the next len(target) bytes into *target*; True if full."""
        n = len(target)
        have = min(n, len(self.buf))
        if have:
            with memoryview(self.buf) as view:
                target[:have] = view[:have]
            del self.buf[:have]
        if have == n:
            return True
        self.sink = target
        self.sink_pos = have
        return False

    def sink_full(self) -> bool:
        return self.sink_pos == len(self.sink)

    def end_sink(self) -> typing.Any:
        target = self.sink
        self.sink = None
        self.sink_pos = 0
        return target

    def start_skip(self, n: int) -> bool:
        """Discard the next *n* bytes; True if they were all buffered."""
        have = min(n, len(self.buf))
        del self.buf[:have]
        self.skip = n - have
        return not self.skip

    def idle(self) -> bool:
        """True between messages: nothing buffered or half-received."""
        return not self.buf and self.sink is None and not self.skip
