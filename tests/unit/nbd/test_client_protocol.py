"""The client-side NBD core against hand-written server bytes.

The server side is spelled out as bytes here (not produced by the server
core) so that a mistake shared by both cores cannot hide.
"""

import struct

import pytest

from storage_engine.nbd import client_protocol as client
from storage_engine.nbd.client_protocol import ClientState
from storage_engine.nbd import constants as const
from storage_engine.nbd.protocol import LocalProtocolError
from tests.unit.nbd.events import drain
from tests.unit.nbd.events import one

MiB = 1 << 20
GREETING = b'NBDMAGICIHAVEOPT\x00\x03'
ALL_FLAGS = (const.NBD_FLAG_HAS_FLAGS | const.NBD_FLAG_SEND_FLUSH
             | const.NBD_FLAG_SEND_FUA | const.NBD_FLAG_SEND_TRIM
             | const.NBD_FLAG_SEND_WRITE_ZEROES | const.NBD_FLAG_SEND_CACHE
             | const.NBD_FLAG_SEND_DF)


def rep(option, reply, data=b''):
    return struct.pack('>QIII', const.NBD_REP_MAGIC, option, reply,
                       len(data)) + data


def info_export(option, size, flags):
    return rep(option, const.NBD_REP_INFO,
               struct.pack('>HQH', const.NBD_INFO_EXPORT, size, flags))


def simple(handle, error=0):
    return struct.pack('>IIQ', const.NBD_SIMPLE_REPLY_MAGIC, error, handle)


def chunk(handle, kind, payload=b'', flags=const.NBD_REPLY_FLAG_DONE):
    return struct.pack('>IHHQI', const.NBD_STRUCTURED_REPLY_MAGIC, flags,
                       kind, handle, len(payload)) + payload


def data_chunk(handle, offset, data, flags=0):
    return chunk(handle, const.NBD_REPLY_TYPE_OFFSET_DATA,
                 struct.pack('>Q', offset) + data, flags)


def hole_chunk(handle, offset, size, flags=0):
    return chunk(handle, const.NBD_REPLY_TYPE_OFFSET_HOLE,
                 struct.pack('>QI', offset, size), flags)


def error_chunk(handle, error, message=b'', kind=const.NBD_REPLY_TYPE_ERROR,
                tail=b'', flags=const.NBD_REPLY_FLAG_DONE):
    return chunk(handle, kind, struct.pack('>IH', error, len(message))
                 + message + tail, flags)


def negotiating(greeting=GREETING):
    conn = client.ClientConnection()
    one(conn, greeting)
    conn.send_client_flags()
    return conn


def transmitting(size=MiB, flags=ALL_FLAGS, structured=False,
                 contexts=()):
    conn = negotiating()
    if structured:
        conn.opt_structured_reply()
        one(conn, rep(const.NBD_OPT_STRUCTURED_REPLY, const.NBD_REP_ACK))
    if contexts:
        conn.opt_set_meta_context('vol', [name for _id, name in contexts])
        for context_id, name in contexts:
            one(conn, rep(const.NBD_OPT_SET_META_CONTEXT,
                          const.NBD_REP_META_CONTEXT,
                          struct.pack('>I', context_id) + name.encode()))
        one(conn, rep(const.NBD_OPT_SET_META_CONTEXT, const.NBD_REP_ACK))
    conn.opt_go('vol', ())
    conn.receive_data(info_export(const.NBD_OPT_GO, size, flags)
                      + rep(const.NBD_OPT_GO, const.NBD_REP_ACK))
    assert isinstance(drain(conn)[-1], client.TransmissionReady)
    return conn


# -- handshake ----------------------------------------------------------------

def test_greeting_then_client_flags_match_the_server_offer():
    conn = client.ClientConnection()
    conn.receive_data(GREETING[:10])
    assert conn.next_event() is client.NEED_DATA
    event = one(conn, GREETING[10:])
    assert event == client.ServerGreeting(3) and event.fixed_newstyle
    assert conn.send_client_flags() == b'\0\0\0\x03'
    with pytest.raises(LocalProtocolError):
        conn.send_client_flags()
    conn = client.ClientConnection()
    one(conn, b'NBDMAGICIHAVEOPT\x00\x01')
    # "MUST NOT be set if the server did not set NBD_FLAG_NO_ZEROES"
    assert conn.send_client_flags() == b'\0\0\0\x01'


@pytest.mark.parametrize('greeting', [
    b'HTTP/1.1 200 OK\r\n\r\n',
    b'NBDMAGIC' + struct.pack('>Q', const.NBD_CLISERV_MAGIC) + b'\0\0',
])
def test_not_a_newstyle_server_is_a_protocol_error(greeting):
    conn = client.ClientConnection()
    assert isinstance(one(conn, greeting), client.ProtocolError)
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b'x')


def test_option_requests_are_byte_exact():
    conn = negotiating()
    assert conn.opt_go('vol') == struct.pack(
        '>QIII3sHH', const.IHAVEOPT, const.NBD_OPT_GO, 11, 3, b'vol', 1,
        const.NBD_INFO_BLOCK_SIZE)
    conn = negotiating()
    assert conn.opt_list_meta_context('v', ['base:']) == struct.pack(
        '>QII', const.IHAVEOPT, const.NBD_OPT_LIST_META_CONTEXT,
        18) + b'\0\0\0\x01v\0\0\0\x01\0\0\0\x05base:'
    conn = negotiating()
    assert conn.opt_export_name('disk') == struct.pack(
        '>QII', const.IHAVEOPT, const.NBD_OPT_EXPORT_NAME, 4) + b'disk'


def test_one_option_at_a_time():
    conn = negotiating()
    conn.opt_list()
    with pytest.raises(LocalProtocolError):
        conn.opt_abort()
    with pytest.raises(LocalProtocolError):
        conn.read(0, 512)


def test_list_collects_entries_until_ack():
    conn = negotiating()
    conn.opt_list()
    conn.receive_data(
        rep(const.NBD_OPT_LIST, const.NBD_REP_SERVER, b'\0\0\0\x02v1')
        + rep(const.NBD_OPT_LIST, const.NBD_REP_SERVER,
              b'\0\0\0\x02v2big disk')
        + rep(const.NBD_OPT_LIST, const.NBD_REP_ACK))
    assert drain(conn) == [client.ServerExport('v1', ''),
                           client.ServerExport('v2', 'big disk'),
                           client.OptionAck(const.NBD_OPT_LIST)]
    assert conn.state is ClientState.OPTIONS


def test_info_replies_are_typed():
    conn = negotiating()
    conn.opt_info('vol', (1, 2, 3))
    conn.receive_data(
        info_export(const.NBD_OPT_INFO, MiB, 1)
        + rep(const.NBD_OPT_INFO, const.NBD_REP_INFO, b'\0\x01canon')
        + rep(const.NBD_OPT_INFO, const.NBD_REP_INFO, b'\0\x02text')
        + rep(const.NBD_OPT_INFO, const.NBD_REP_INFO,
              struct.pack('>HIII', 3, 512, 4096, MiB))
        + rep(const.NBD_OPT_INFO, const.NBD_REP_INFO, b'\0\x63??')
        + rep(const.NBD_OPT_INFO, const.NBD_REP_ACK))
    assert drain(conn) == [
        client.ExportInfo(MiB, 1), client.ExportNameInfo('canon'),
        client.ExportDescription('text'),
        client.BlockSizeInfo(512, 4096, MiB),
        client.UnknownInfo(0x63, b'??'),
        client.OptionAck(const.NBD_OPT_INFO)]


def test_go_enters_transmission_with_block_sizes():
    conn = negotiating()
    conn.opt_go('vol')
    conn.receive_data(info_export(const.NBD_OPT_GO, 8 * MiB, 0x5)
                      + rep(const.NBD_OPT_GO, const.NBD_REP_INFO,
                            struct.pack('>HIII', 3, 4096, 4096, MiB))
                      + rep(const.NBD_OPT_GO, const.NBD_REP_ACK))
    assert drain(conn)[-1] == client.TransmissionReady(8 * MiB, 5, 4096,
                                                       4096, MiB)
    assert conn.state is ClientState.TRANSMISSION
    with pytest.raises(LocalProtocolError):
        conn.read(512, 4096)            # we committed to 4096 alignment
    with pytest.raises(LocalProtocolError):
        conn.read(0, 2 * MiB)           # and to the maximum payload


def test_go_error_keeps_negotiating():
    conn = negotiating()
    conn.opt_go('nope')
    event = one(conn, rep(const.NBD_OPT_GO, const.NBD_REP_ERR_UNKNOWN,
                          b'no such export'))
    assert event == client.OptionError(
        const.NBD_OPT_GO, const.NBD_REP_ERR_UNKNOWN, 'no such export')
    assert conn.state is ClientState.OPTIONS


@pytest.mark.parametrize('reply', [
    rep(const.NBD_OPT_GO, const.NBD_REP_ACK),            # no INFO_EXPORT
    rep(const.NBD_OPT_LIST, const.NBD_REP_ACK),          # wrong option
    rep(const.NBD_OPT_GO, const.NBD_REP_SERVER, b'\0\0\0\0'),
    rep(const.NBD_OPT_GO, const.NBD_REP_INFO, b'\0\0\0'),  # short export
    rep(const.NBD_OPT_GO, const.NBD_REP_INFO,
        struct.pack('>HIII', 3, 3, 4096, MiB)),          # bad block size
    rep(const.NBD_OPT_GO, 77),                           # unknown type
    struct.pack('>QIII', 1, const.NBD_OPT_GO, 1, 0),     # bad magic
    rep(const.NBD_OPT_GO, const.NBD_REP_INFO, bytes(70000)),
])
def test_bad_option_replies_are_protocol_errors(reply):
    conn = negotiating()
    conn.opt_go('vol')
    assert isinstance(drain_with(conn, reply)[-1], client.ProtocolError)


def drain_with(conn, data):
    conn.receive_data(data)
    return drain(conn)


def test_structured_reply_and_meta_context_negotiation():
    conn = negotiating()
    with pytest.raises(LocalProtocolError):
        conn.opt_set_meta_context('vol')
    conn.opt_structured_reply()
    one(conn, rep(const.NBD_OPT_STRUCTURED_REPLY, const.NBD_REP_ACK))
    assert conn.structured_replies
    conn.opt_set_meta_context('vol')
    assert one(conn, rep(const.NBD_OPT_SET_META_CONTEXT,
                         const.NBD_REP_META_CONTEXT,
                         b'\0\0\0\x07base:allocation')) == \
        client.MetaContext(7, 'base:allocation')
    assert conn.meta_contexts == {}
    one(conn, rep(const.NBD_OPT_SET_META_CONTEXT, const.NBD_REP_ACK))
    assert conn.meta_contexts == {7: 'base:allocation'}
    # a failed SET still replaces the selection
    conn.opt_set_meta_context('vol')
    one(conn, rep(const.NBD_OPT_SET_META_CONTEXT, const.NBD_REP_ERR_INVALID))
    assert conn.meta_contexts == {}


def test_starttls_restart_forgets_negotiated_state():
    conn = negotiating()
    conn.opt_structured_reply()
    one(conn, rep(const.NBD_OPT_STRUCTURED_REPLY, const.NBD_REP_ACK))
    conn.opt_starttls()
    conn.receive_data(rep(const.NBD_OPT_STARTTLS, const.NBD_REP_ACK)
                      + b'\x16\x03')
    assert one(conn) == client.OptionAck(const.NBD_OPT_STARTTLS)
    assert conn.state is ClientState.TLS_PENDING
    assert conn.next_event() is client.PAUSED
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b'\x16')
    assert conn.take_trailing_data() == b'\x16\x03'
    conn.tls_established()
    assert conn.tls_active and not conn.structured_replies
    with pytest.raises(LocalProtocolError):
        conn.opt_starttls()
    assert conn.opt_list()


def test_abort_ack_closes():
    conn = negotiating()
    conn.opt_abort()
    assert drain_with(conn, rep(const.NBD_OPT_ABORT, const.NBD_REP_ACK)) == [
        client.OptionAck(const.NBD_OPT_ABORT), client.ConnectionClosed()]
    assert conn.state is ClientState.CLOSED


@pytest.mark.parametrize('greeting, padding', [
    (GREETING, 0), (b'NBDMAGICIHAVEOPT\x00\x01', 124)])
def test_export_name_reply_with_and_without_padding(greeting, padding):
    conn = negotiating(greeting)
    conn.opt_export_name('disk')
    reply = struct.pack('>QH', MiB, 3) + bytes(padding)
    conn.receive_data(reply[:-1])
    assert conn.next_event() is client.NEED_DATA
    assert one(conn, reply[-1:]) == client.TransmissionReady(
        MiB, 3, 1, 4096, 1 << 25)
    assert conn.export_name == 'disk'


def test_refused_export_name_is_a_closed_connection():
    conn = negotiating()
    conn.opt_export_name('disk')
    conn.receive_data(b'')
    assert isinstance(conn.next_event(), client.ConnectionClosed)


def test_server_speaking_out_of_turn_is_a_protocol_error():
    conn = negotiating()
    assert isinstance(one(conn, b'x'), client.ProtocolError)


# -- transmission: requests ---------------------------------------------------

def test_requests_are_byte_exact_with_fresh_handles():
    conn = transmitting(structured=True, contexts=[(1, 'base:allocation')])
    handle, header = conn.read(4096, 512, const.NBD_CMD_FLAG_FUA)
    assert header == struct.pack('>IHHQQI', const.NBD_REQUEST_MAGIC, 1, 0,
                                 handle, 4096, 512)
    data = b'z' * 512
    handle2, pieces = conn.write(0, data)
    assert pieces[0] == struct.pack('>IHHQQI', const.NBD_REQUEST_MAGIC, 0,
                                    1, handle2, 0, 512)
    assert pieces[1] is data
    handles = {handle, handle2, conn.flush()[0], conn.trim(0, 512)[0],
               conn.write_zeroes(0, 512, const.NBD_CMD_FLAG_NO_HOLE)[0],
               conn.cache(0, 512)[0],
               conn.block_status(0, MiB, const.NBD_CMD_FLAG_REQ_ONE)[0]}
    assert len(handles) == 7 == conn.requests_in_flight
    assert conn.disconnect() == struct.pack(
        '>IHHQQI', const.NBD_REQUEST_MAGIC, 0, 2, 8, 0, 0)
    assert conn.state is ClientState.DISCONNECTED
    with pytest.raises(LocalProtocolError):
        conn.flush()


@pytest.mark.parametrize('call', [
    lambda c: c.read(MiB - 512, 1024),                 # beyond the end
    lambda c: c.read(0, 0),                            # empty
    lambda c: c.read(0, 512, const.NBD_CMD_FLAG_NO_HOLE),
    lambda c: c.block_status(0, 512),                  # no context
    lambda c: c.write_zeroes(0, 512, const.NBD_CMD_FLAG_FAST_ZERO),
])
def test_requests_the_spec_forbids_are_local_errors(call):
    conn = transmitting()
    with pytest.raises(LocalProtocolError):
        call(conn)
    assert conn.requests_in_flight == 0


def test_read_only_and_unadvertised_commands_are_local_errors():
    conn = transmitting(flags=const.NBD_FLAG_HAS_FLAGS
                        | const.NBD_FLAG_READ_ONLY)
    for call in (lambda: conn.write(0, b'x'), lambda: conn.flush(),
                 lambda: conn.trim(0, 512)):
        with pytest.raises(LocalProtocolError):
            call()


def test_validation_can_be_skipped_to_probe_a_server():
    conn = transmitting()
    handle, header = conn.send_request(99, 0, 0, 0xFFFF, validate=False)
    assert struct.unpack('>IHHQQI', header)[1:3] == (0xFFFF, 99)
    assert one(conn, simple(handle, const.NBD_EINVAL)) == \
        client.CommandFailed(handle, const.NBD_EINVAL, '')


# -- transmission: simple replies ---------------------------------------------

def test_simple_read_reply_streams_into_one_buffer():
    conn = transmitting()
    handle, _ = conn.read(0, 64 * 1024)
    stream = simple(handle) + bytes(range(256)) * 256
    for start in range(0, len(stream) - 1000, 1000):
        conn.receive_data(stream[start:start + 1000])
        assert conn.next_event() is client.NEED_DATA
        assert len(conn._in.buf) <= 1000
    event = one(conn, stream[start + 1000:])
    assert event.handle == handle
    assert bytes(event.data) == bytes(range(256)) * 256


def test_simple_replies_for_other_commands():
    conn = transmitting()
    write, _ = conn.write(0, b'a' * 512)
    flush, _ = conn.flush()
    read, _ = conn.read(0, 512)
    conn.receive_data(simple(flush) + simple(read, const.NBD_EIO)
                      + simple(write))
    assert drain(conn) == [
        client.CommandComplete(flush),
        client.CommandFailed(read, const.NBD_EIO, ''),
        client.CommandComplete(write)]
    assert conn.requests_in_flight == 0


@pytest.mark.parametrize('reply', [
    simple(99),                                          # unknown handle
    struct.pack('>IIQ', 0x12345678, 0, 1),               # bad magic
    chunk(1, const.NBD_REPLY_TYPE_NONE),                 # not negotiated
])
def test_bad_simple_replies_are_protocol_errors(reply):
    conn = transmitting()
    conn.read(0, 512)
    assert isinstance(one(conn, reply), client.ProtocolError)


def test_eof_with_a_partial_reply_is_a_protocol_error():
    conn = transmitting()
    handle, _ = conn.read(0, 512)
    conn.receive_data(simple(handle) + b'x')
    conn.receive_data(b'')
    assert isinstance(conn.next_event(), client.ProtocolError)


# -- transmission: structured replies -----------------------------------------

def test_structured_read_reassembles_data_and_holes_in_any_order():
    conn = transmitting(structured=True)
    handle, _ = conn.read(1024, 3072)
    conn.receive_data(data_chunk(handle, 3072, b'c' * 1024)
                      + hole_chunk(handle, 2048, 1024)
                      + data_chunk(handle, 1024, b'a' * 1024)
                      + chunk(handle, const.NBD_REPLY_TYPE_NONE))
    event = one(conn)
    assert bytes(event.data) == b'a' * 1024 + bytes(1024) + b'c' * 1024


def test_interleaved_chunks_of_two_reads():
    conn = transmitting(structured=True)
    first, _ = conn.read(0, 1024)
    second, _ = conn.read(1024, 1024)
    conn.receive_data(data_chunk(first, 0, b'1' * 512)
                      + data_chunk(second, 1024, b'2' * 1024,
                                   const.NBD_REPLY_FLAG_DONE)
                      + data_chunk(first, 512, b'1' * 512,
                                   const.NBD_REPLY_FLAG_DONE))
    events = drain(conn)
    assert [(e.handle, bytes(e.data)) for e in events] == [
        (second, b'2' * 1024), (first, b'1' * 1024)]


def test_structured_errors_with_message_and_offset():
    conn = transmitting(structured=True)
    read, _ = conn.read(0, 1024)
    write, _ = conn.write(0, b'x' * 512)
    odd, _ = conn.flush()
    conn.receive_data(
        data_chunk(read, 0, b'x' * 512)
        + error_chunk(read, const.NBD_EIO, b'disk',
                      const.NBD_REPLY_TYPE_ERROR_OFFSET,
                      struct.pack('>Q', 512), flags=0)
        + chunk(read, const.NBD_REPLY_TYPE_NONE)
        + error_chunk(write, const.NBD_ENOSPC, b'full')
        # "an unknown or unexpected type with bit 15 set" is an error
        + error_chunk(odd, 1234, kind=0x8000 | 77))
    assert drain(conn) == [
        client.CommandFailed(read, const.NBD_EIO, 'disk', 512),
        client.CommandFailed(write, const.NBD_ENOSPC, 'full'),
        client.CommandFailed(odd, 1234, '')]


def test_block_status_collects_extents_per_context():
    conn = transmitting(structured=True, contexts=[
        (5, 'base:allocation'), (9, 'x-test:dirty')])
    handle, _ = conn.block_status(0, 8192)
    conn.receive_data(
        chunk(handle, const.NBD_REPLY_TYPE_BLOCK_STATUS,
              struct.pack('>III', 9, 8192, 1), flags=0)
        + chunk(handle, const.NBD_REPLY_TYPE_BLOCK_STATUS,
                struct.pack('>IIIII', 5, 4096, 3, 8192, 0)))
    assert one(conn) == client.BlockStatusComplete(handle, {
        'base:allocation': ((4096, 3), (8192, 0)),
        'x-test:dirty': ((8192, 1),)})


@pytest.mark.parametrize('make', [
    # overlapping content chunks
    lambda h: data_chunk(h, 0, b'a' * 600) + data_chunk(
        h, 512, b'b' * 512, const.NBD_REPLY_FLAG_DONE),
    # success without covering the whole request
    lambda h: data_chunk(h, 0, b'a' * 512, const.NBD_REPLY_FLAG_DONE),
    # outside the request
    lambda h: hole_chunk(h, 1024, 512, const.NBD_REPLY_FLAG_DONE),
    lambda h: data_chunk(h, 1023, b'ab', const.NBD_REPLY_FLAG_DONE),
    # malformed chunks
    lambda h: chunk(h, const.NBD_REPLY_TYPE_OFFSET_HOLE, b'\0' * 11),
    lambda h: hole_chunk(h, 0, 0),
    lambda h: chunk(h, const.NBD_REPLY_TYPE_OFFSET_DATA, b'\0' * 8),
    lambda h: chunk(h, const.NBD_REPLY_TYPE_NONE, flags=0),
    lambda h: chunk(h, const.NBD_REPLY_TYPE_NONE, b'x'),
    lambda h: error_chunk(h, 0),
    lambda h: chunk(h, const.NBD_REPLY_TYPE_ERROR, b'\0\0\0\x05\0\x09ab'),
    lambda h: chunk(h, 77),                      # unknown, not an error
    lambda h: chunk(h, const.NBD_REPLY_TYPE_BLOCK_STATUS,
                    struct.pack('>III', 1, 512, 0)),
    lambda h: simple(h),                         # simple reply to a READ
    lambda h: chunk(h, 0, bytes(client.MAX_SMALL_REPLY + 1)),
])
def test_invalid_read_replies_are_protocol_errors(make):
    conn = transmitting(structured=True)
    handle, _ = conn.read(0, 1024)
    assert isinstance(drain_with(conn, make(handle))[-1],
                      client.ProtocolError)


def test_df_read_with_two_content_chunks_is_a_protocol_error():
    conn = transmitting(structured=True)
    handle, _ = conn.read(0, 1024, const.NBD_CMD_FLAG_DF)
    conn.receive_data(data_chunk(handle, 0, b'a' * 512)
                      + hole_chunk(handle, 512, 512,
                                   const.NBD_REPLY_FLAG_DONE))
    assert isinstance(drain(conn)[-1], client.ProtocolError)


@pytest.mark.parametrize('payload, flags', [
    (struct.pack('>III', 2, 512, 0), 0),                 # unknown context
    (struct.pack('>IIIII', 1, 512, 0, 512, 3), const.NBD_CMD_FLAG_REQ_ONE),
    (struct.pack('>III', 1, 8192, 0), const.NBD_CMD_FLAG_REQ_ONE),
    (struct.pack('>III', 1, 0, 0), 0),                   # empty extent
    (struct.pack('>IIIII', 1, 4096, 0, 512, 3), 0),      # extra extent
])
def test_invalid_block_status_replies_are_protocol_errors(payload, flags):
    conn = transmitting(structured=True, contexts=[(1, 'base:allocation')])
    handle, _ = conn.block_status(0, 4096, flags)
    reply = chunk(handle, const.NBD_REPLY_TYPE_BLOCK_STATUS, payload)
    assert isinstance(drain_with(conn, reply)[-1], client.ProtocolError)


def test_block_status_missing_a_context_is_a_protocol_error():
    conn = transmitting(structured=True, contexts=[
        (1, 'base:allocation'), (2, 'x-test:dirty')])
    handle, _ = conn.block_status(0, 4096)
    reply = chunk(handle, const.NBD_REPLY_TYPE_BLOCK_STATUS,
                  struct.pack('>III', 1, 4096, 0))
    assert isinstance(drain_with(conn, reply)[-1], client.ProtocolError)


def test_large_structured_read_streams_into_place():
    conn = transmitting(size=64 * MiB, structured=True)
    handle, _ = conn.read(0, 4 * MiB)
    payload = bytes(range(256)) * (4 * MiB // 256)
    stream = data_chunk(handle, 0, payload, const.NBD_REPLY_FLAG_DONE)
    piece = 64 * 1024
    for start in range(0, len(stream) - piece, piece):
        conn.receive_data(stream[start:start + piece])
        assert conn.next_event() is client.NEED_DATA
        assert len(conn._in.buf) <= piece
    event = one(conn, stream[start + piece:])
    assert event.data == payload
