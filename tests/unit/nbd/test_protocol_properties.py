"""Properties of the NBD cores, checked with hypothesis.

1. How the bytes are split across receive_data() calls never changes the
   events (the I/O layer gets whatever recv() returns).
2. Arbitrary bytes never make either core raise: a peer can only cause
   events (at worst ProtocolError), and after EOF every stream ends in
   ConnectionClosed or ProtocolError.
3. The client core and the server core talk to each other in memory over
   a dict-backed fake disk, with pipelined requests answered out of order:
   reads return what was written, block status matches the allocation.
"""

import struct

from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st

from storage_engine.nbd import client_protocol as client
from storage_engine.nbd import constants as const
from storage_engine.nbd import protocol

SIZE = 64 * 1024
SECTOR = 512
MAX_PAYLOAD = 8192
EXPORT_FLAGS = (const.NBD_FLAG_SEND_FLUSH | const.NBD_FLAG_SEND_FUA
                | const.NBD_FLAG_SEND_TRIM | const.NBD_FLAG_SEND_WRITE_ZEROES
                | const.NBD_FLAG_SEND_FAST_ZERO | const.NBD_FLAG_SEND_CACHE)
HOLE = const.NBD_STATE_HOLE | const.NBD_STATE_ZERO
FAST = settings(deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow])


class FakeDisk:
    """Sparse storage: 512-byte sectors in a dict, absent means zeroes."""

    def __init__(self):
        self.sectors = {}

    def write(self, offset, data):
        pos = 0
        while pos < len(data):
            index, start = divmod(offset + pos, SECTOR)
            n = min(SECTOR - start, len(data) - pos)
            sector = self.sectors.setdefault(index, bytearray(SECTOR))
            sector[start:start + n] = data[pos:pos + n]
            pos += n

    def discard(self, offset, length):
        """Trim / write zeroes: whole sectors become holes."""
        pos, end = offset, offset + length
        while pos < end:
            index, start = divmod(pos, SECTOR)
            n = min(SECTOR - start, end - pos)
            if n == SECTOR:
                self.sectors.pop(index, None)
            elif index in self.sectors:
                self.sectors[index][start:start + n] = bytes(n)
            pos += n

    def extents(self, offset, length, merge=True):
        """(offset, length, data-or-None) runs covering the range."""
        runs = []
        pos, end = offset, offset + length
        while pos < end:
            index, start = divmod(pos, SECTOR)
            n = min(SECTOR - start, end - pos)
            sector = self.sectors.get(index)
            piece = None if sector is None else bytes(sector[start:start + n])
            if merge and runs and (runs[-1][2] is None) == (piece is None):
                last = runs[-1]
                runs[-1] = (last[0], last[1] + n,
                            None if piece is None else last[2] + piece)
            else:
                runs.append((pos, n, piece))
            pos += n
        return runs

    def status(self, offset, length):
        return [(o, n, HOLE if d is None else 0)
                for o, n, d in self.extents(offset, length)]


def answer(server, event, disk=None, read_mode=0):
    """What a minimal I/O layer would answer; returns the bytes."""
    if isinstance(event, protocol.Command) and disk is None:
        disk = FakeDisk()
    if isinstance(event, protocol.ExportName):
        return server.accept_export_name(SIZE, EXPORT_FLAGS)
    if isinstance(event, protocol.Abort):
        return server.ack_option()
    if isinstance(event, protocol.List):
        return server.send_server('vol') + server.ack_option()
    if isinstance(event, (protocol.Info, protocol.Go)):
        out = server.send_info_export(SIZE, EXPORT_FLAGS)
        if const.NBD_INFO_BLOCK_SIZE in event.info_requests:
            out += server.send_info_block_size(SECTOR, 4096, MAX_PAYLOAD)
        return out + server.ack_option()
    if isinstance(event, protocol.StructuredReply):
        return server.ack_option()
    if isinstance(event, (protocol.ListMetaContext,
                          protocol.SetMetaContext)):
        out = b''
        if const.NBD_META_BASE_ALLOCATION in event.queries:
            out = server.accept_meta_context(const.NBD_META_BASE_ALLOCATION)
        return out + server.ack_option()
    if isinstance(event, protocol.StartTLS):
        return server.reject_option(const.NBD_REP_ERR_POLICY)
    if isinstance(event, protocol.UnknownOption):
        return server.reject_option(const.NBD_REP_ERR_UNSUP)
    if isinstance(event, protocol.InvalidOption):
        return server.reject_option(event.error, event.message)
    if isinstance(event, protocol.InvalidCommand):
        return server.reply_error(event.handle, event.error, event.message)
    if isinstance(event, protocol.Read):
        if read_mode:
            # mode 2: one extent per sector, so the core must merge holes
            return b''.join(server.reply_read_extents(
                event.handle, disk.extents(event.offset, event.length,
                                           merge=read_mode == 1)))
        data = b''.join(d or bytes(n) for _o, n, d in disk.extents(
            event.offset, event.length))
        return b''.join(server.reply_read(event.handle, data))
    if isinstance(event, protocol.Write):
        disk.write(event.offset, bytes(event.data))
        return server.reply_ok(event.handle)
    if isinstance(event, (protocol.Trim, protocol.WriteZeroes)):
        disk.discard(event.offset, event.length)
        return server.reply_ok(event.handle)
    if isinstance(event, (protocol.Flush, protocol.Cache)):
        return server.reply_ok(event.handle)
    if isinstance(event, protocol.BlockStatus):
        return server.reply_block_status(
            event.handle, disk.status(event.offset, event.length))
    return b''


def run_server(chunks, max_payload=MAX_PAYLOAD):
    """Feed *chunks* to a fresh server that answers everything."""
    server = protocol.ServerConnection(max_payload=max_payload)
    server.initiate()
    disk = FakeDisk()
    events = []
    for data in chunks:
        if server.state in (protocol.ServerState.ERROR,
                            protocol.ServerState.CLOSED):
            break
        server.receive_data(data)
        while True:
            event = server.next_event()
            if event is protocol.NEED_DATA or event is protocol.PAUSED:
                break
            assert isinstance(event, protocol.Event)
            events.append(event)
            if isinstance(event, (protocol.ProtocolError,
                                  protocol.ConnectionClosed)):
                return events
            answer(server, event, disk)
    return events


def opt(code, data=b''):
    return struct.pack('>QII', const.IHAVEOPT, code, len(data)) + data


def go(name, infos=()):
    raw = name.encode()
    return opt(const.NBD_OPT_GO, struct.pack('>I', len(raw)) + raw
               + struct.pack('>H', len(infos))
               + struct.pack('>%dH' % len(infos), *infos))


def set_meta(name, queries):
    raw = name.encode()
    data = struct.pack('>I', len(raw)) + raw + struct.pack('>I',
                                                           len(queries))
    for query in queries:
        data += struct.pack('>I', len(query)) + query.encode()
    return opt(const.NBD_OPT_SET_META_CONTEXT, data)


HANDSHAKE = (b'\0\0\0\x03' + opt(const.NBD_OPT_LIST)
             + opt(const.NBD_OPT_STRUCTURED_REPLY)
             + set_meta('vol', ['base:allocation']) + go('vol'))

kinds = st.sampled_from([
    const.NBD_CMD_READ, const.NBD_CMD_WRITE, const.NBD_CMD_FLUSH,
    const.NBD_CMD_TRIM, const.NBD_CMD_CACHE, const.NBD_CMD_WRITE_ZEROES,
    const.NBD_CMD_BLOCK_STATUS, 9])
cmd_flags = st.sampled_from([0, 0, 0, const.NBD_CMD_FLAG_FUA,
                             const.NBD_CMD_FLAG_NO_HOLE,
                             const.NBD_CMD_FLAG_REQ_ONE,
                             const.NBD_CMD_FLAG_FAST_ZERO, 1 << 10])
offsets = st.one_of(st.integers(0, SIZE // SECTOR).map(lambda s: s * SECTOR),
                    st.integers(0, (1 << 64) - 1))
lengths = st.one_of(st.integers(0, 2 * MAX_PAYLOAD // SECTOR).map(
    lambda s: s * SECTOR), st.integers(0, 3000))


@st.composite
def requests(draw):
    kind = draw(kinds)
    offset = draw(offsets)
    length = draw(lengths)
    header = struct.pack('>IHHQQI', const.NBD_REQUEST_MAGIC, draw(cmd_flags),
                         kind, draw(st.integers(0, (1 << 64) - 1)), offset,
                         length)
    if kind == const.NBD_CMD_WRITE:
        return header + bytes([draw(st.integers(0, 255))]) * length
    return header


def flip(data, index, bit):
    index = len(HANDSHAKE) + index % (len(data) - len(HANDSHAKE))
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1:]


def split(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points + [len(data)]:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces if p]


# -- 1. splitting does not change the events --------------------------------

@FAST
@given(st.lists(requests(), max_size=12),
       st.lists(st.integers(0, 1 << 20), max_size=30),
       st.integers(1, 97))
def test_any_split_of_a_stream_gives_the_same_events(reqs, cuts, step):
    stream = HANDSHAKE + b''.join(reqs)
    whole = run_server([stream])
    assert [type(e) for e in whole[:5]] == [
        protocol.ClientFlags, protocol.List, protocol.StructuredReply,
        protocol.SetMetaContext, protocol.Go]
    # well-framed requests: one event each, valid or refused, never a
    # lost sync (a refused WRITE's payload is skipped, not parsed)
    assert len(whole) == 5 + len(reqs)
    assert not any(isinstance(e, protocol.ProtocolError) for e in whole)
    assert run_server(split(stream, cuts)) == whole
    assert run_server([stream[i:i + step]
                       for i in range(0, len(stream), step)]) == whole


# -- 2. arbitrary bytes only ever produce events -----------------------------

option_codes = st.sampled_from(list(range(0, 13)) + [0xFFFFFFFF])


@st.composite
def option_streams(draw):
    parts = [b'\0\0\0' + bytes([draw(st.sampled_from([0, 1, 2, 3, 4]))])]
    for _ in range(draw(st.integers(0, 6))):
        code = draw(option_codes)
        data = draw(st.binary(max_size=40))
        length = draw(st.sampled_from([len(data), len(data),
                                       draw(st.integers(0, (1 << 32) - 1))]))
        parts.append(struct.pack('>QII', draw(st.sampled_from(
            [const.IHAVEOPT] * 9 + [0])), code, length) + data)
    return b''.join(parts)


garbage = st.one_of(
    st.binary(max_size=300),
    option_streams(),
    st.builds(lambda a, b: HANDSHAKE + a + b,
              st.lists(requests(), max_size=6).map(b''.join),
              st.binary(max_size=100)),
    st.builds(lambda a: b'\0\0\0\x03' + opt(const.NBD_OPT_EXPORT_NAME) + a,
              st.one_of(st.binary(max_size=300),
                        st.binary(min_size=28, max_size=300))),
    # well-formed requests with one byte flipped somewhere
    st.builds(lambda reqs, index, bit: flip(HANDSHAKE + reqs, index, bit),
              st.lists(requests(), min_size=1, max_size=4).map(b''.join),
              st.integers(0, 1 << 16), st.integers(0, 7)),
)


@FAST
@given(garbage, st.lists(st.integers(0, 1 << 16), max_size=10))
def test_server_turns_any_bytes_into_events(data, cuts):
    events = run_server(split(data, cuts) + [b''])
    # EOF was fed: the stream must have ended one way or the other
    assert isinstance(events[-1], (protocol.ConnectionClosed,
                                   protocol.ProtocolError)), events[-5:]


def client_in(state, structured):
    conn = client.ClientConnection()
    if state == 'greeting':
        return conn, {}
    conn.receive_data(b'NBDMAGICIHAVEOPT\x00\x03')
    conn.next_event()
    conn.send_client_flags()
    if structured:
        conn.opt_structured_reply()
        conn.receive_data(struct.pack('>QIII', const.NBD_REP_MAGIC, 8, 1, 0))
        conn.next_event()
        conn.opt_set_meta_context('vol')
        conn.receive_data(
            struct.pack('>QIII', const.NBD_REP_MAGIC, 10, 4, 19)
            + b'\0\0\0\x01base:allocation'
            + struct.pack('>QIII', const.NBD_REP_MAGIC, 10, 1, 0))
        assert conn.next_event() and conn.next_event()
    conn.opt_go('vol', ())
    if state == 'options':
        return conn, {}
    conn.receive_data(
        struct.pack('>QIIIHQH', const.NBD_REP_MAGIC, 7, 3, 12, 0, SIZE,
                    1 | EXPORT_FLAGS)
        + struct.pack('>QIII', const.NBD_REP_MAGIC, 7, 1, 0))
    conn.next_event()
    assert isinstance(conn.next_event(), client.TransmissionReady)
    handles = {}
    for call in (lambda: conn.read(0, 1024), lambda: conn.flush(),
                 lambda: conn.write(512, b'x' * 512),
                 lambda: conn.block_status(0, 4096) if structured
                 else conn.trim(0, 512)):
        handle, _ = call()
        handles[handle] = True
    return conn, handles


@st.composite
def reply_streams(draw, handles):
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        handle = draw(st.sampled_from(sorted(handles) + [77]))
        if draw(st.booleans()):
            parts.append(struct.pack('>IIQ', const.NBD_SIMPLE_REPLY_MAGIC,
                                     draw(st.sampled_from([0, 5])), handle))
        else:
            payload = draw(st.binary(max_size=40))
            parts.append(struct.pack(
                '>IHHQI', const.NBD_STRUCTURED_REPLY_MAGIC,
                draw(st.integers(0, 3)),
                draw(st.sampled_from([0, 1, 2, 5, 0x8001, 0x8002, 0x8055,
                                      9])),
                handle, draw(st.sampled_from([len(payload)] * 3 + [
                    draw(st.integers(0, (1 << 32) - 1))]))) + payload)
        parts.append(draw(st.binary(max_size=16)))
    return b''.join(parts)


@FAST
@given(st.sampled_from(['greeting', 'options', 'transmission']),
       st.booleans(), st.data())
def test_client_turns_any_bytes_into_events(state, structured, data):
    conn, handles = client_in(state, structured)
    if handles:
        stream = data.draw(reply_streams(handles))
    else:
        stream = data.draw(st.binary(max_size=200))
    cuts = data.draw(st.lists(st.integers(0, 1 << 12), max_size=8))
    events = []
    for piece in split(stream, cuts) + [b'']:
        conn.receive_data(piece)
        event = conn.next_event()
        while event is not client.NEED_DATA:
            assert isinstance(event, protocol.Event)
            events.append(event)
            if isinstance(event, (client.ProtocolError,
                                  client.ConnectionClosed)):
                break
            event = conn.next_event()
        if events and isinstance(events[-1], (client.ProtocolError,
                                              client.ConnectionClosed)):
            break
    assert isinstance(events[-1], (client.ProtocolError,
                                   client.ConnectionClosed))


# -- 3. client and server against a fake disk ---------------------------------

@st.composite
def operations(draw, structured):
    names = ['read', 'read', 'write', 'write', 'trim', 'zero', 'flush']
    if structured:
        names += ['status', 'status']
    name = draw(st.sampled_from(names))
    first = draw(st.integers(0, SIZE // SECTOR - 1))
    count = draw(st.integers(1, min(MAX_PAYLOAD // SECTOR,
                                    SIZE // SECTOR - first)))
    if name == 'write':
        return (name, first * SECTOR, draw(st.binary(
            min_size=count * SECTOR, max_size=count * SECTOR)))
    if name == 'status':
        return (name, first * SECTOR, count * SECTOR, draw(st.booleans()))
    return (name, first * SECTOR, count * SECTOR)


def pump(source_bytes, sink):
    if source_bytes:
        sink.receive_data(source_bytes)


def client_events(conn):
    out = []
    while True:
        event = conn.next_event()
        if event is client.NEED_DATA:
            return out
        assert not isinstance(event, client.ProtocolError), event
        out.append(event)


@settings(deadline=None, max_examples=100,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.booleans(), st.sampled_from([0, 1, 2]), st.data())
def test_client_and_server_agree_on_the_disk(structured, block_size,
                                             read_mode, data):
    server = protocol.ServerConnection(max_payload=MAX_PAYLOAD)
    conn = client.ClientConnection()
    disk = FakeDisk()
    # what the client should see: contents, and allocation (a second
    # disk updated in request order, as the server's is)
    model = bytearray(SIZE)
    shadow = FakeDisk()

    def to_server(payload):
        if isinstance(payload, list):
            payload = b''.join(payload)
        server.receive_data(payload)
        replies = []
        while True:
            event = server.next_event()
            if event is protocol.NEED_DATA or event is protocol.PAUSED:
                return replies
            assert not isinstance(event, (protocol.ProtocolError,
                                          protocol.InvalidCommand,
                                          protocol.InvalidOption)), event
            replies.append(answer(server, event, disk, read_mode))

    # handshake, every message through both cores
    pump(server.initiate(), conn)
    assert isinstance(client_events(conn)[0], client.ServerGreeting)
    to_server(conn.send_client_flags())
    if structured:
        pump(b''.join(to_server(conn.opt_structured_reply())), conn)
        client_events(conn)
        pump(b''.join(to_server(conn.opt_set_meta_context('vol'))), conn)
        client_events(conn)
        assert server.meta_contexts == {'base:allocation': 1}
    infos = (const.NBD_INFO_BLOCK_SIZE,) if block_size else ()
    pump(b''.join(to_server(conn.opt_go('vol', infos))), conn)
    ready = client_events(conn)[-1]
    assert ready.export_size == SIZE
    assert server.state is protocol.ServerState.TRANSMISSION

    batches = data.draw(st.lists(st.lists(operations(structured), min_size=1,
                                          max_size=6), max_size=6))
    for batch in batches:
        expected = {}
        wire = []
        for name, offset, arg, *req_one in batch:
            if name == 'read':
                handle, header = conn.read(offset, arg)
                expected[handle] = ('read', bytes(model[offset:offset + arg]))
            elif name == 'write':
                handle, pieces = conn.write(offset, arg)
                header = b''.join(pieces)
                model[offset:offset + len(arg)] = arg
                shadow.write(offset, arg)
                expected[handle] = ('ok', None)
            elif name in ('trim', 'zero'):
                call = conn.trim if name == 'trim' else conn.write_zeroes
                handle, header = call(offset, arg)
                model[offset:offset + arg] = bytes(arg)
                shadow.discard(offset, arg)
                expected[handle] = ('ok', None)
            elif name == 'flush':
                handle, header = conn.flush()
                expected[handle] = ('ok', None)
            else:
                flags = const.NBD_CMD_FLAG_REQ_ONE if req_one[0] else 0
                handle, header = conn.block_status(offset, arg, flags)
                status = tuple((n, f) for _o, n, f in shadow.status(
                    offset, arg))
                expected[handle] = ('status', (
                    status[:1] if flags else status,
                    bytes(model[offset:offset + arg])))
            wire.append(header)
        # the whole batch in one go (pipelining), replies shuffled
        replies = to_server(b''.join(wire))
        order = data.draw(st.permutations(range(len(replies))))
        pump(b''.join(replies[i] for i in order), conn)
        events = client_events(conn)
        assert sorted(e.handle for e in events) == sorted(expected)
        for event in events:
            what, value = expected[event.handle]
            if what == 'read':
                assert isinstance(event, client.ReadComplete)
                assert bytes(event.data) == value
            elif what == 'ok':
                assert isinstance(event, client.CommandComplete)
            else:
                assert isinstance(event, client.BlockStatusComplete)
                status, content = value
                extents = event.extents['base:allocation']
                assert extents == status
                pos = 0
                for n, flags in extents:
                    if flags & const.NBD_STATE_ZERO:
                        assert content[pos:pos + n] == bytes(n)
                    pos += n
        assert conn.requests_in_flight == server.requests_in_flight == 0

    to_server(conn.disconnect())
    assert server.state is protocol.ServerState.DISCONNECTED
    server.receive_data(b'')
    assert isinstance(server.next_event(), protocol.ConnectionClosed)
