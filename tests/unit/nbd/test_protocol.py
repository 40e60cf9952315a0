"""The server-side NBD core, driven byte by byte as a client would.

Where the spec fixes the bytes (greeting, option replies, reply headers)
the tests compare bytes; elsewhere they assert the events the I/O layer
would act on. Spec quotes are from NetworkBlockDevice/nbd doc/proto.md.
"""

import struct

import pytest

from storage_engine.nbd import constants as const
from storage_engine.nbd import protocol
from storage_engine.nbd.protocol import LocalProtocolError
from storage_engine.nbd.protocol import ServerState
from tests.unit.nbd.events import drain
from tests.unit.nbd.events import one

MiB = 1 << 20
ALL_FLAGS = (const.NBD_FLAG_SEND_FLUSH | const.NBD_FLAG_SEND_FUA
             | const.NBD_FLAG_SEND_TRIM | const.NBD_FLAG_SEND_WRITE_ZEROES
             | const.NBD_FLAG_SEND_FAST_ZERO | const.NBD_FLAG_SEND_CACHE)


def option(code, data=b''):
    return struct.pack('>QII', const.IHAVEOPT, code, len(data)) + data


def option_reply(code, reply, data=b''):
    return struct.pack('>QIII', const.NBD_REP_MAGIC, code, reply,
                       len(data)) + data


def go_data(name, infos=()):
    raw = name.encode()
    return (struct.pack('>I', len(raw)) + raw + struct.pack('>H', len(infos))
            + struct.pack('>%dH' % len(infos), *infos))


def meta_data(name, queries):
    raw = name.encode()
    out = struct.pack('>I', len(raw)) + raw + struct.pack('>I', len(queries))
    for query in queries:
        out += struct.pack('>I', len(query)) + query.encode()
    return out


def request(kind, handle=1, offset=0, length=0, flags=0,
            magic=const.NBD_REQUEST_MAGIC):
    return struct.pack('>IHHQQI', magic, flags, kind, handle, offset, length)


def simple_reply(handle, error=0):
    return struct.pack('>IIQ', const.NBD_SIMPLE_REPLY_MAGIC, error, handle)


def chunk(handle, kind, payload=b'', flags=const.NBD_REPLY_FLAG_DONE):
    return struct.pack('>IHHQI', const.NBD_STRUCTURED_REPLY_MAGIC, flags,
                       kind, handle, len(payload)) + payload


def negotiating(client_flags=3, **kwargs):
    """A server that has sent its greeting and got the client flags."""
    conn = protocol.ServerConnection(**kwargs)
    conn.initiate()
    assert one(conn, struct.pack('>I', client_flags)) == \
        protocol.ClientFlags(client_flags)
    return conn


def transmitting(size=MiB, flags=ALL_FLAGS, structured=False,
                 contexts=(), block_size=None, **kwargs):
    """A server in transmission, negotiated through NBD_OPT_GO."""
    conn = negotiating(**kwargs)
    if structured:
        assert one(conn, option(const.NBD_OPT_STRUCTURED_REPLY)) == \
            protocol.StructuredReply()
        conn.ack_option()
    if contexts:
        one(conn, option(const.NBD_OPT_SET_META_CONTEXT,
                         meta_data('vol', list(contexts))))
        for name in contexts:
            conn.accept_meta_context(name)
        conn.ack_option()
    infos = (const.NBD_INFO_BLOCK_SIZE,) if block_size else ()
    assert one(conn, option(const.NBD_OPT_GO, go_data('vol', infos))) == \
        protocol.Go('vol', infos)
    conn.send_info_export(size, flags)
    if block_size:
        conn.send_info_block_size(*block_size)
    conn.ack_option()
    assert conn.state is ServerState.TRANSMISSION
    return conn


# -- handshake --------------------------------------------------------------

def test_greeting_is_fixed_newstyle_with_no_zeroes():
    conn = protocol.ServerConnection()
    assert conn.initiate() == b'NBDMAGICIHAVEOPT\x00\x03'
    with pytest.raises(LocalProtocolError):
        conn.initiate()


def test_parsing_before_the_greeting_is_a_local_error():
    with pytest.raises(LocalProtocolError):
        protocol.ServerConnection().next_event()


def test_client_flags_are_reported():
    conn = protocol.ServerConnection()
    conn.initiate()
    conn.receive_data(b'\x00\x00')
    assert conn.next_event() is protocol.NEED_DATA
    event = one(conn, b'\x00\x03')
    assert event.fixed_newstyle and event.no_zeroes
    assert conn.state is ServerState.OPTIONS


@pytest.mark.parametrize('flags', [4, 0x80000000, 0xFFFFFFFF])
def test_unknown_client_flags_end_the_connection(flags):
    conn = protocol.ServerConnection()
    conn.initiate()
    event = one(conn, struct.pack('>I', flags))
    assert isinstance(event, protocol.ProtocolError)
    assert conn.state is ServerState.ERROR
    assert conn.next_event() == event
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b'more')


def test_bad_option_magic_is_a_protocol_error():
    conn = negotiating()
    event = one(conn, struct.pack('>QII', 0x1234, 7, 0))
    assert isinstance(event, protocol.ProtocolError)


def test_export_name_reply_has_zero_padding_without_no_zeroes():
    conn = negotiating(client_flags=const.NBD_FLAG_C_FIXED_NEWSTYLE)
    assert one(conn, option(const.NBD_OPT_EXPORT_NAME, b'disk')) == \
        protocol.ExportName('disk')
    out = conn.accept_export_name(MiB, const.NBD_FLAG_SEND_FLUSH)
    assert out == struct.pack('>QH', MiB, 0x5) + bytes(124)
    assert conn.state is ServerState.TRANSMISSION
    assert conn.export_name == 'disk'


def test_export_name_reply_honours_no_zeroes():
    conn = negotiating(client_flags=3)
    one(conn, option(const.NBD_OPT_EXPORT_NAME))
    assert conn.accept_export_name(512, 0) == struct.pack('>QH', 512, 1)


def test_export_name_can_only_be_refused_by_closing():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_EXPORT_NAME, b'nope'))
    with pytest.raises(LocalProtocolError):
        conn.reject_option(const.NBD_REP_ERR_UNKNOWN)
    with pytest.raises(LocalProtocolError):
        conn.ack_option()
    conn.close()
    assert conn.state is ServerState.CLOSED
    assert isinstance(conn.next_event(), protocol.ConnectionClosed)


@pytest.mark.parametrize('name', [b'a' * 4097, b'\xff\xfe', b'a\0b'])
def test_invalid_export_name_option_drops_the_connection(name):
    # NBD_OPT_EXPORT_NAME cannot be answered with an error.
    conn = negotiating()
    assert isinstance(one(conn, option(const.NBD_OPT_EXPORT_NAME, name)),
                      protocol.ProtocolError)


def test_oversized_export_name_is_dropped_before_buffering():
    conn = negotiating()
    header = struct.pack('>QII', const.IHAVEOPT, const.NBD_OPT_EXPORT_NAME,
                         1 << 30)
    assert isinstance(one(conn, header), protocol.ProtocolError)


def test_client_without_fixed_newstyle_may_only_send_export_name():
    conn = negotiating(client_flags=0)
    assert isinstance(one(conn, option(const.NBD_OPT_LIST)),
                      protocol.ProtocolError)
    conn = negotiating(client_flags=0)
    one(conn, option(const.NBD_OPT_EXPORT_NAME, b'x'))
    assert len(conn.accept_export_name(MiB, 0)) == 10 + 124


def test_abort_is_acked_and_closes():
    conn = negotiating()
    # "a server SHOULD ignore any data sent by the client"
    assert one(conn, option(const.NBD_OPT_ABORT, b'junk')) == \
        protocol.Abort()
    with pytest.raises(LocalProtocolError):
        conn.reject_option(const.NBD_REP_ERR_POLICY)
    assert conn.ack_option() == option_reply(const.NBD_OPT_ABORT,
                                             const.NBD_REP_ACK)
    assert conn.state is ServerState.CLOSED
    conn.receive_data(b'')
    assert isinstance(conn.next_event(), protocol.ConnectionClosed)


def test_list_sends_server_entries_then_ack():
    conn = negotiating()
    assert one(conn, option(const.NBD_OPT_LIST)) == protocol.List()
    assert conn.send_server('vol1') == option_reply(
        const.NBD_OPT_LIST, const.NBD_REP_SERVER, b'\0\0\0\x04vol1')
    assert conn.send_server('v2', 'a disk') == option_reply(
        const.NBD_OPT_LIST, const.NBD_REP_SERVER, b'\0\0\0\x02v2a disk')
    assert conn.ack_option() == option_reply(const.NBD_OPT_LIST,
                                             const.NBD_REP_ACK)
    assert conn.state is ServerState.OPTIONS


def test_list_with_data_is_invalid_and_negotiation_goes_on():
    conn = negotiating()
    event = one(conn, option(const.NBD_OPT_LIST, b'x') + option(
        const.NBD_OPT_STRUCTURED_REPLY))
    assert event.option == const.NBD_OPT_LIST
    assert event.error == const.NBD_REP_ERR_INVALID
    with pytest.raises(LocalProtocolError):
        conn.ack_option()
    assert conn.reject_option(event.error) == option_reply(
        const.NBD_OPT_LIST, const.NBD_REP_ERR_INVALID)
    assert one(conn) == protocol.StructuredReply()


def test_options_wait_for_the_answer_to_the_previous_one():
    conn = negotiating()
    conn.receive_data(option(const.NBD_OPT_LIST) + option(
        const.NBD_OPT_ABORT))
    assert conn.next_event() == protocol.List()
    assert conn.next_event() is protocol.PAUSED
    conn.ack_option()
    assert conn.next_event() == protocol.Abort()


def test_unknown_option_is_reported_and_the_next_one_parses():
    # "Servers that receive messages which they do not implement MUST
    # reply to them with NBD_REP_ERR_UNSUP, and MUST NOT fail to parse the
    # next message received."
    conn = negotiating()
    conn.receive_data(option(99, b'payload') + option(
        const.NBD_OPT_PEEK_EXPORT) + option(const.NBD_OPT_LIST))
    assert conn.next_event() == protocol.UnknownOption(99)
    assert conn.reject_option(const.NBD_REP_ERR_UNSUP) == option_reply(
        99, const.NBD_REP_ERR_UNSUP)
    assert conn.next_event() == protocol.UnknownOption(
        const.NBD_OPT_PEEK_EXPORT)
    conn.reject_option(const.NBD_REP_ERR_UNSUP, 'no peeking')
    assert conn.next_event() == protocol.List()


def test_error_reply_carries_the_message():
    conn = negotiating()
    one(conn, option(42))
    assert conn.reject_option(const.NBD_REP_ERR_UNSUP, 'why') == \
        option_reply(42, const.NBD_REP_ERR_UNSUP, b'why')


def test_reject_needs_an_error_code():
    conn = negotiating()
    one(conn, option(42))
    with pytest.raises(LocalProtocolError):
        conn.reject_option(const.NBD_REP_ACK)
    with pytest.raises(LocalProtocolError):
        conn.reject_option(const.NBD_REP_ERR_UNSUP, 'x' * 5000)


@pytest.mark.parametrize('code', [const.NBD_OPT_LIST, 77,
                                  const.NBD_OPT_GO])
def test_oversized_option_data_is_skipped_and_refused(code):
    conn = negotiating()
    size = protocol.MAX_OPTION_LENGTH + 1
    stream = option(code, bytes(size)) + option(const.NBD_OPT_ABORT)
    # arrive in pieces: the payload is dropped, not buffered
    for start in range(0, len(stream) - 1000, 1000):
        conn.receive_data(stream[start:start + 1000])
        assert conn.next_event() is protocol.NEED_DATA
        assert len(conn._in.buf) < 1000
    conn.receive_data(stream[start + 1000:])
    event = conn.next_event()
    if code == 77:
        assert event == protocol.UnknownOption(77)
    else:
        assert event == protocol.InvalidOption(
            code, const.NBD_REP_ERR_TOO_BIG, event.message)
    conn.reject_option(const.NBD_REP_ERR_TOO_BIG)
    assert conn.next_event() == protocol.Abort()


def test_eof_between_options_is_a_clean_close():
    conn = negotiating()
    conn.receive_data(b'')
    assert isinstance(conn.next_event(), protocol.ConnectionClosed)


def test_eof_inside_an_option_is_a_protocol_error():
    conn = negotiating()
    conn.receive_data(option(const.NBD_OPT_GO, go_data('v'))[:-1])
    conn.receive_data(b'')
    assert isinstance(conn.next_event(), protocol.ProtocolError)


# -- INFO and GO -------------------------------------------------------------

def test_info_replies_are_byte_exact_and_info_stays_in_options():
    conn = negotiating()
    event = one(conn, option(const.NBD_OPT_INFO, go_data(
        'vol', (const.NBD_INFO_NAME, const.NBD_INFO_BLOCK_SIZE))))
    assert event == protocol.Info('vol', (1, 3))
    assert conn.send_info_export(MiB, const.NBD_FLAG_READ_ONLY) == \
        option_reply(const.NBD_OPT_INFO, const.NBD_REP_INFO,
                     struct.pack('>HQH', 0, MiB, 3))
    assert conn.send_info_name('vol') == option_reply(
        const.NBD_OPT_INFO, const.NBD_REP_INFO, b'\0\x01vol')
    assert conn.send_info_description('d') == option_reply(
        const.NBD_OPT_INFO, const.NBD_REP_INFO, b'\0\x02d')
    assert conn.send_info_block_size(512, 4096, MiB) == option_reply(
        const.NBD_OPT_INFO, const.NBD_REP_INFO,
        struct.pack('>HIII', 3, 512, 4096, MiB))
    with pytest.raises(LocalProtocolError):
        conn.send_info_name('twice')
    conn.ack_option()
    assert conn.state is ServerState.OPTIONS


def test_go_enters_transmission_with_the_advertised_export():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_GO, go_data('')))
    with pytest.raises(LocalProtocolError):
        # "MUST send at least one NBD_REP_INFO, with NBD_INFO_EXPORT"
        conn.ack_option()
    conn.send_info_export(8 * MiB, const.NBD_FLAG_SEND_FLUSH)
    assert conn.ack_option() == option_reply(const.NBD_OPT_GO,
                                             const.NBD_REP_ACK)
    assert conn.state is ServerState.TRANSMISSION
    assert conn.export_size == 8 * MiB
    assert conn.transmission_flags == 0x5
    assert conn.export_name == ''


def test_go_refused_keeps_negotiating():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_GO, go_data('missing')))
    assert conn.reject_option(const.NBD_REP_ERR_UNKNOWN) == option_reply(
        const.NBD_OPT_GO, const.NBD_REP_ERR_UNKNOWN)
    assert one(conn, option(const.NBD_OPT_LIST)) == protocol.List()


def test_block_size_required_only_when_not_requested():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_GO, go_data('v', (3,))))
    with pytest.raises(LocalProtocolError):
        conn.reject_option(const.NBD_REP_ERR_BLOCK_SIZE_REQD)
    conn.reject_option(const.NBD_REP_ERR_UNKNOWN)
    one(conn, option(const.NBD_OPT_GO, go_data('v')))
    assert conn.reject_option(const.NBD_REP_ERR_BLOCK_SIZE_REQD)


@pytest.mark.parametrize('sizes', [(3, 4096, MiB), (512, 256, MiB),
                                   (512, 4096, 1024), (1 << 17, 1 << 17,
                                                       1 << 20),
                                   (512, 4096, 1 << 26)])
def test_invalid_block_sizes_are_refused_locally(sizes):
    conn = negotiating()
    one(conn, option(const.NBD_OPT_GO, go_data('v', (3,))))
    with pytest.raises(LocalProtocolError):
        conn.send_info_block_size(*sizes)


def test_export_flags_are_checked():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_GO, go_data('v')))
    with pytest.raises(LocalProtocolError):
        # "MUST leave this flag clear if structured replies have not been
        # negotiated"
        conn.send_info_export(MiB, const.NBD_FLAG_SEND_DF)
    with pytest.raises(LocalProtocolError):
        conn.send_info_export(MiB, const.NBD_FLAG_SEND_FAST_ZERO)
    with pytest.raises(LocalProtocolError):
        conn.send_info_export(MiB, 1 << 15)


@pytest.mark.parametrize('data', [
    b'',
    b'\0\0\0\x00\0',                               # shorter than 6
    b'\0\0\0\x05ab\0\0',                           # name overruns
    b'\0\0\0\x01a\0\x02\0\x03',                    # count says 2, has 1
    b'\0\0\0\x01a\0\x00\0\x03',                    # count says 0, has 1
    b'\0\0\0\x02\xff\xfe\0\0',                     # not UTF-8
    b'\0\0\0\x02a\0\0\0',                          # NUL in the name
    struct.pack('>I', 4097) + b'a' * 4097 + b'\0\0',  # name too long
])
@pytest.mark.parametrize('code', [const.NBD_OPT_INFO, const.NBD_OPT_GO])
def test_malformed_info_and_go_are_invalid(code, data):
    conn = negotiating()
    event = one(conn, option(code, data) + option(const.NBD_OPT_LIST))
    assert isinstance(event, protocol.InvalidOption)
    assert (event.option, event.error) == (code, const.NBD_REP_ERR_INVALID)
    assert conn.reject_option(event.error, event.message).startswith(
        option_reply(code, const.NBD_REP_ERR_INVALID)[:16])
    assert one(conn) == protocol.List()


# -- structured replies and metadata contexts --------------------------------

def test_structured_reply_is_remembered():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_STRUCTURED_REPLY))
    assert not conn.structured_replies
    assert conn.ack_option() == option_reply(
        const.NBD_OPT_STRUCTURED_REPLY, const.NBD_REP_ACK)
    assert conn.structured_replies


def test_structured_reply_with_data_is_invalid():
    conn = negotiating()
    event = one(conn, option(const.NBD_OPT_STRUCTURED_REPLY, b'x'))
    assert event.error == const.NBD_REP_ERR_INVALID
    conn.reject_option(event.error)
    assert not conn.structured_replies


def test_set_meta_context_needs_structured_replies():
    conn = negotiating()
    event = one(conn, option(const.NBD_OPT_SET_META_CONTEXT,
                             meta_data('vol', ['base:allocation'])))
    assert event.error == const.NBD_REP_ERR_INVALID


def test_set_meta_context_assigns_ids_and_selects_on_ack():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_STRUCTURED_REPLY))
    conn.ack_option()
    event = one(conn, option(const.NBD_OPT_SET_META_CONTEXT, meta_data(
        'vol', ['base:allocation', 'x-unknown:thing'])))
    assert event == protocol.SetMetaContext(
        'vol', ('base:allocation', 'x-unknown:thing'))
    out = conn.accept_meta_context('base:allocation')
    assert out == option_reply(const.NBD_OPT_SET_META_CONTEXT,
                               const.NBD_REP_META_CONTEXT,
                               b'\0\0\0\x01base:allocation')
    with pytest.raises(LocalProtocolError):
        conn.accept_meta_context('base:allocation')
    assert conn.meta_contexts == {}
    conn.ack_option()
    assert conn.meta_contexts == {'base:allocation': 1}


def test_set_meta_context_replaces_even_when_it_fails():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_STRUCTURED_REPLY))
    conn.ack_option()
    one(conn, option(const.NBD_OPT_SET_META_CONTEXT,
                     meta_data('vol', ['base:allocation'])))
    conn.accept_meta_context('base:allocation')
    conn.ack_option()
    one(conn, option(const.NBD_OPT_SET_META_CONTEXT,
                     meta_data('vol', ['base:allocation'])))
    conn.reject_option(const.NBD_REP_ERR_TOO_BIG)
    assert conn.meta_contexts == {}


def test_list_meta_context_uses_id_zero_and_selects_nothing():
    conn = negotiating()
    event = one(conn, option(const.NBD_OPT_LIST_META_CONTEXT,
                             meta_data('vol', ['base:'])))
    assert event == protocol.ListMetaContext('vol', ('base:',))
    assert conn.accept_meta_context('base:allocation') == option_reply(
        const.NBD_OPT_LIST_META_CONTEXT, const.NBD_REP_META_CONTEXT,
        b'\0\0\0\0base:allocation')
    conn.ack_option()
    assert conn.meta_contexts == {}


@pytest.mark.parametrize('data', [
    b'\0\0\0\0\0\0\0',                               # shorter than 8
    b'\0\0\0\x09vol\0\0\0\0',                        # name overruns
    b'\0\0\0\x00\0\0\0\x01',                         # a query is missing
    b'\0\0\0\x00\0\0\0\x01\0\0\0\x09base:',          # query overruns
    b'\0\0\0\x00\0\0\0\x00extra',                    # trailing bytes
    b'\0\0\0\x00\0\0\0\x01\0\0\0\x02\xff\xff',       # query not UTF-8
    b'\0\0\0\x00\xff\xff\xff\xff',                   # absurd count
])
@pytest.mark.parametrize('code', [const.NBD_OPT_LIST_META_CONTEXT,
                                  const.NBD_OPT_SET_META_CONTEXT])
def test_malformed_meta_context_options_are_invalid(code, data):
    # "If the option request is syntactically invalid ... the server MUST
    # fail the request with NBD_REP_ERR_INVALID."
    conn = negotiating()
    one(conn, option(const.NBD_OPT_STRUCTURED_REPLY))
    conn.ack_option()
    event = one(conn, option(code, data))
    assert isinstance(event, protocol.InvalidOption)
    assert event.error == const.NBD_REP_ERR_INVALID
    conn.reject_option(event.error)
    assert conn.state is ServerState.OPTIONS


def test_context_name_must_have_a_namespace():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_LIST_META_CONTEXT, meta_data('v', [])))
    with pytest.raises(LocalProtocolError):
        conn.accept_meta_context('allocation')


def test_contexts_for_another_export_are_dropped_at_go():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_STRUCTURED_REPLY))
    conn.ack_option()
    one(conn, option(const.NBD_OPT_SET_META_CONTEXT,
                     meta_data('other', ['base:allocation'])))
    conn.accept_meta_context('base:allocation')
    conn.ack_option()
    one(conn, option(const.NBD_OPT_GO, go_data('vol')))
    conn.send_info_export(MiB, 0)
    conn.ack_option()
    event = one(conn, request(const.NBD_CMD_BLOCK_STATUS, 1, 0, 4096))
    assert event.error == const.NBD_EINVAL


# -- STARTTLS -----------------------------------------------------------------

def test_starttls_restarts_negotiation_over_tls():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_STRUCTURED_REPLY))
    conn.ack_option()
    assert one(conn, option(const.NBD_OPT_STARTTLS)) == protocol.StartTLS()
    conn.receive_data(b'\x16\x03\x01')       # a ClientHello, early
    assert conn.ack_option() == option_reply(const.NBD_OPT_STARTTLS,
                                             const.NBD_REP_ACK)
    assert conn.state is ServerState.TLS_PENDING
    assert conn.next_event() is protocol.PAUSED
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b'\x16')
    with pytest.raises(LocalProtocolError):
        conn.tls_established()               # trailing bytes not taken
    assert conn.take_trailing_data() == b'\x16\x03\x01'
    conn.tls_established()
    # "the server MUST NOT preserve any negotiation state"
    assert conn.tls_active and not conn.structured_replies
    event = one(conn, option(const.NBD_OPT_STARTTLS))
    # "If the server receives NBD_OPT_STARTTLS when TLS has already been
    # negotiated, it MUST reply with NBD_REP_ERR_INVALID."
    assert event.error == const.NBD_REP_ERR_INVALID
    with pytest.raises(LocalProtocolError):
        conn.reject_option(const.NBD_REP_ERR_TLS_REQD)
    conn.reject_option(event.error)
    assert one(conn, option(const.NBD_OPT_GO, go_data('v'))).name == 'v'


def test_starttls_refused_keeps_plain_negotiation():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_STARTTLS))
    assert conn.reject_option(const.NBD_REP_ERR_POLICY) == option_reply(
        const.NBD_OPT_STARTTLS, const.NBD_REP_ERR_POLICY)
    assert not conn.tls_active
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    one(conn, option(const.NBD_OPT_LIST))


def test_forced_tls_answers_other_options_with_tls_reqd():
    conn = negotiating()
    one(conn, option(const.NBD_OPT_GO, go_data('v')))
    assert conn.reject_option(const.NBD_REP_ERR_TLS_REQD) == option_reply(
        const.NBD_OPT_GO, const.NBD_REP_ERR_TLS_REQD)


def test_answers_without_a_pending_option_are_local_errors():
    conn = negotiating()
    for call in (conn.ack_option, lambda: conn.send_server('x'),
                 lambda: conn.reject_option(const.NBD_REP_ERR_UNSUP),
                 lambda: conn.accept_export_name(1, 0),
                 lambda: conn.send_info_export(1, 0),
                 lambda: conn.reply_ok(1)):
        with pytest.raises(LocalProtocolError):
            call()
    one(conn, option(const.NBD_OPT_LIST))
    with pytest.raises(LocalProtocolError):
        conn.send_info_export(1, 0)
    with pytest.raises(LocalProtocolError):
        conn.accept_meta_context('base:allocation')


# -- transmission: requests ---------------------------------------------------

@pytest.mark.parametrize('kind, cls, flags', [
    (const.NBD_CMD_READ, protocol.Read, const.NBD_CMD_FLAG_FUA),
    (const.NBD_CMD_FLUSH, protocol.Flush, 0),
    (const.NBD_CMD_TRIM, protocol.Trim, const.NBD_CMD_FLAG_FUA),
    (const.NBD_CMD_CACHE, protocol.Cache, 0),
    (const.NBD_CMD_WRITE_ZEROES, protocol.WriteZeroes,
     const.NBD_CMD_FLAG_NO_HOLE | const.NBD_CMD_FLAG_FAST_ZERO),
])
def test_each_command_becomes_its_event(kind, cls, flags):
    conn = transmitting()
    offset, length = (0, 0) if kind == const.NBD_CMD_FLUSH else (512, 4096)
    event = one(conn, request(kind, 7, offset, length, flags))
    assert event == cls(7, offset, length, flags)
    assert event.fua == bool(flags & const.NBD_CMD_FLAG_FUA)
    assert event.no_hole == bool(flags & const.NBD_CMD_FLAG_NO_HOLE)
    assert event.fast_zero == bool(flags & const.NBD_CMD_FLAG_FAST_ZERO)
    assert conn.requests_in_flight == 1


def test_write_payload_is_accumulated_across_feeds():
    conn = transmitting()
    payload = bytes(range(256)) * 64
    stream = request(const.NBD_CMD_WRITE, 3, 4096, len(payload),
                     const.NBD_CMD_FLAG_FUA) + payload
    for start in range(0, len(stream) - 100, 100):
        conn.receive_data(stream[start:start + 100])
        assert conn.next_event() is protocol.NEED_DATA
    event = one(conn, stream[start + 100:])
    assert isinstance(event, protocol.Write)
    assert (event.handle, event.offset, event.length) == (3, 4096, 16384)
    assert bytes(event.data) == payload and event.fua


def test_block_status_with_context_and_req_one():
    conn = transmitting(structured=True, contexts=['base:allocation'])
    event = one(conn, request(const.NBD_CMD_BLOCK_STATUS, 9, 0, MiB,
                              const.NBD_CMD_FLAG_REQ_ONE))
    assert event == protocol.BlockStatus(9, 0, MiB, 8) and event.req_one


def test_df_flag_is_accepted_when_advertised():
    conn = transmitting(structured=True,
                        flags=ALL_FLAGS | const.NBD_FLAG_SEND_DF)
    event = one(conn, request(const.NBD_CMD_READ, 1, 0, 4096,
                              const.NBD_CMD_FLAG_DF))
    assert isinstance(event, protocol.Read) and event.df


def test_pipelined_requests_parse_from_one_feed_and_reply_in_any_order():
    conn = transmitting()
    payload = b'w' * 512
    conn.receive_data(
        request(const.NBD_CMD_READ, 1, 0, 512)
        + request(const.NBD_CMD_WRITE, 2, 512, 512) + payload
        + request(const.NBD_CMD_FLUSH, 3)
        + request(const.NBD_CMD_READ, 4, 1024, 512))
    events = drain(conn)
    assert [e.handle for e in events] == [1, 2, 3, 4]
    assert conn.requests_in_flight == 4
    assert conn.reply_ok(3) == simple_reply(3)
    assert conn.reply_read(4, b'4' * 512) == [simple_reply(4), b'4' * 512]
    assert conn.reply_ok(2) == simple_reply(2)
    assert conn.reply_error(1, const.NBD_EIO) == simple_reply(
        1, const.NBD_EIO)
    assert conn.requests_in_flight == 0


def test_bad_request_magic_is_a_protocol_error():
    conn = transmitting()
    event = one(conn, request(const.NBD_CMD_READ, magic=0x12560953))
    assert isinstance(event, protocol.ProtocolError)
    with pytest.raises(LocalProtocolError):
        conn.reply_ok(1)


def test_eof_inside_a_write_payload_is_a_protocol_error():
    conn = transmitting()
    conn.receive_data(request(const.NBD_CMD_WRITE, 1, 0, 4096) + b'x')
    assert conn.next_event() is protocol.NEED_DATA
    conn.receive_data(b'')
    assert isinstance(conn.next_event(), protocol.ProtocolError)


def test_eof_between_requests_is_a_clean_close():
    conn = transmitting()
    conn.receive_data(b'')
    assert isinstance(conn.next_event(), protocol.ConnectionClosed)


def test_disconnect_lets_in_flight_replies_out_then_closes():
    conn = transmitting()
    conn.receive_data(request(const.NBD_CMD_READ, 1, 0, 512)
                      + request(const.NBD_CMD_DISC, 2))
    read, disc = drain(conn)
    assert disc == protocol.Disconnect(2, 0, 0, 0)
    assert conn.state is ServerState.DISCONNECTED
    assert conn.reply_read(1, bytes(512))[0] == simple_reply(1)
    conn.receive_data(b'')
    assert isinstance(conn.next_event(), protocol.ConnectionClosed)


def test_data_after_disconnect_is_a_protocol_error():
    conn = transmitting()
    conn.receive_data(request(const.NBD_CMD_DISC, 2)
                      + request(const.NBD_CMD_READ, 1, 0, 512))
    assert isinstance(drain(conn)[-1], protocol.ProtocolError)


# -- transmission: refused requests -------------------------------------------

RO = const.NBD_FLAG_READ_ONLY


@pytest.mark.parametrize('flags, kind, cmd_flags, offset, length, error', [
    # "SHOULD return NBD_EINVAL if it receives an unknown command"
    (ALL_FLAGS, 8, 0, 0, 512, const.NBD_EINVAL),
    (ALL_FLAGS, 0xFFFF, 0, 0, 512, const.NBD_EINVAL),
    # unknown flag, and flags documented for other commands
    (ALL_FLAGS, const.NBD_CMD_READ, 1 << 9, 0, 512, const.NBD_EINVAL),
    (ALL_FLAGS, const.NBD_CMD_READ, const.NBD_CMD_FLAG_NO_HOLE, 0, 512,
     const.NBD_EINVAL),
    (ALL_FLAGS, const.NBD_CMD_TRIM, const.NBD_CMD_FLAG_REQ_ONE, 0, 512,
     const.NBD_EINVAL),
    (ALL_FLAGS, const.NBD_CMD_READ, const.NBD_CMD_FLAG_DF, 0, 512,
     const.NBD_EINVAL),
    # FUA and FAST_ZERO only when advertised
    (const.NBD_FLAG_SEND_WRITE_ZEROES, const.NBD_CMD_READ,
     const.NBD_CMD_FLAG_FUA, 0, 512, const.NBD_EINVAL),
    (const.NBD_FLAG_SEND_WRITE_ZEROES, const.NBD_CMD_WRITE_ZEROES,
     const.NBD_CMD_FLAG_FAST_ZERO, 0, 512, const.NBD_EINVAL),
    # commands that were not advertised
    (0, const.NBD_CMD_FLUSH, 0, 0, 0, const.NBD_EINVAL),
    (0, const.NBD_CMD_TRIM, 0, 0, 512, const.NBD_EINVAL),
    (0, const.NBD_CMD_WRITE_ZEROES, 0, 0, 512, const.NBD_EINVAL),
    (ALL_FLAGS, const.NBD_CMD_BLOCK_STATUS, 0, 0, 512, const.NBD_EINVAL),
    # FLUSH fields "MUST be set to all-zero"
    (ALL_FLAGS, const.NBD_CMD_FLUSH, 0, 512, 0, const.NBD_EINVAL),
    # zero lengths
    (ALL_FLAGS, const.NBD_CMD_READ, 0, 0, 0, const.NBD_EINVAL),
    (ALL_FLAGS, const.NBD_CMD_TRIM, 0, 0, 0, const.NBD_EINVAL),
    # beyond the end: EINVAL for reads and trims, ENOSPC for writes
    (ALL_FLAGS, const.NBD_CMD_READ, 0, MiB - 512, 1024, const.NBD_EINVAL),
    (ALL_FLAGS, const.NBD_CMD_READ, 0, (1 << 64) - 512, 1024,
     const.NBD_EINVAL),
    (ALL_FLAGS, const.NBD_CMD_TRIM, 0, MiB, 512, const.NBD_EINVAL),
    (ALL_FLAGS, const.NBD_CMD_CACHE, 0, MiB, 512, const.NBD_EINVAL),
    (ALL_FLAGS, const.NBD_CMD_WRITE_ZEROES, 0, MiB, 512, const.NBD_ENOSPC),
    # read-only export
    (RO, const.NBD_CMD_TRIM, 0, 0, 512, const.NBD_EINVAL),
    (RO | ALL_FLAGS, const.NBD_CMD_TRIM, 0, 0, 512, const.NBD_EPERM),
    (RO | ALL_FLAGS, const.NBD_CMD_WRITE_ZEROES, 0, 0, 512, const.NBD_EPERM),
])
def test_invalid_request_gets_an_error_and_the_stream_goes_on(
        flags, kind, cmd_flags, offset, length, error):
    conn = transmitting(flags=flags)
    conn.receive_data(request(kind, 5, offset, length, cmd_flags)
                      + request(const.NBD_CMD_READ, 6, 0, 512))
    refused, following = drain(conn)
    assert refused == protocol.InvalidCommand(
        5, kind, cmd_flags, offset, length, error, refused.message)
    assert following == protocol.Read(6, 0, 512, 0)
    assert conn.reply_error(5, refused.error, refused.message) == \
        simple_reply(5, error)


@pytest.mark.parametrize('flags, offset, length, error', [
    (ALL_FLAGS, MiB - 512, 1024, const.NBD_ENOSPC),
    (ALL_FLAGS | RO, 0, 1024, const.NBD_EPERM),
    (ALL_FLAGS, 0, 0, const.NBD_EINVAL),
])
def test_refused_write_payload_is_skipped(flags, offset, length, error):
    conn = transmitting(flags=flags)
    conn.receive_data(request(const.NBD_CMD_WRITE, 5, offset, length)
                      + b'p' * length
                      + request(const.NBD_CMD_FLUSH, 6))
    refused, following = drain(conn)
    assert (refused.handle, refused.error) == (5, error)
    assert following == protocol.Flush(6, 0, 0, 0)


def test_block_status_without_structured_replies_is_invalid():
    conn = transmitting()
    event = one(conn, request(const.NBD_CMD_BLOCK_STATUS, 1, 0, 512))
    assert event.error == const.NBD_EINVAL


def test_read_larger_than_max_payload_is_einval():
    conn = transmitting(size=1 << 30, max_payload=MiB)
    event = one(conn, request(const.NBD_CMD_READ, 1, 0, MiB + 512))
    assert event.error == const.NBD_EINVAL
    # trim has no payload: its length is not bounded by max_payload
    assert isinstance(one(conn, request(const.NBD_CMD_TRIM, 2, 0, 8 * MiB)),
                      protocol.Trim)


def test_oversized_write_is_skipped_without_buffering_and_refused():
    conn = transmitting(size=1 << 30, max_payload=MiB)
    length = 4 * MiB
    conn.receive_data(request(const.NBD_CMD_WRITE, 1, 0, length))
    piece = bytes(64 * 1024)
    for _ in range(length // len(piece)):
        assert conn.next_event() is protocol.NEED_DATA
        conn.receive_data(piece)
        assert len(conn._in.buf) <= len(piece)
    conn.receive_data(request(const.NBD_CMD_READ, 2, 0, 512))
    refused, following = drain(conn)
    assert (refused.handle, refused.error) == (1, const.NBD_EINVAL)
    assert following.handle == 2


def test_advertised_block_size_is_enforced():
    conn = transmitting(block_size=(4096, 4096, 64 * 1024))
    conn.receive_data(request(const.NBD_CMD_READ, 1, 512, 4096)
                      + request(const.NBD_CMD_READ, 2, 0, 1000)
                      + request(const.NBD_CMD_READ, 3, 0, 128 * 1024)
                      + request(const.NBD_CMD_READ, 4, 4096, 8192))
    unaligned, short, large, good = drain(conn)
    assert unaligned.error == short.error == large.error == const.NBD_EINVAL
    assert isinstance(good, protocol.Read)


# -- transmission: replies ----------------------------------------------------

def test_read_reply_passes_the_data_object_through():
    conn = transmitting()
    one(conn, request(const.NBD_CMD_READ, 1, 0, 4096))
    data = bytearray(4096)
    pieces = conn.reply_read(1, data)
    assert pieces[0] == simple_reply(1) and pieces[1] is data


def test_reply_mistakes_are_local_errors():
    conn = transmitting()
    conn.receive_data(request(const.NBD_CMD_READ, 1, 0, 4096)
                      + request(const.NBD_CMD_FLUSH, 2)
                      + request(const.NBD_CMD_READ, 3, 0, 0))
    drain(conn)
    with pytest.raises(LocalProtocolError):
        conn.reply_read(1, bytes(100))         # wrong length
    with pytest.raises(LocalProtocolError):
        conn.reply_ok(1)                       # a read needs data
    with pytest.raises(LocalProtocolError):
        conn.reply_read(2, b'')                # a flush has no data
    with pytest.raises(LocalProtocolError):
        conn.reply_ok(3)                       # refused: error only
    with pytest.raises(LocalProtocolError):
        conn.reply_error(2, 0)                 # error must be nonzero
    with pytest.raises(LocalProtocolError):
        conn.reply_chunk_done(2)               # not negotiated
    conn.reply_ok(2)
    with pytest.raises(LocalProtocolError):
        conn.reply_ok(2)                       # twice
    with pytest.raises(LocalProtocolError):
        conn.reply_ok(99)                      # unknown
    assert conn.requests_in_flight == 2


def test_reused_cookies_are_answered_one_by_one():
    conn = transmitting()
    conn.receive_data(request(const.NBD_CMD_FLUSH, 5)
                      + request(const.NBD_CMD_FLUSH, 5))
    assert len(drain(conn)) == 2
    conn.reply_ok(5)
    conn.reply_ok(5)
    with pytest.raises(LocalProtocolError):
        conn.reply_ok(5)


def test_structured_read_reply_is_one_data_chunk():
    conn = transmitting(structured=True)
    one(conn, request(const.NBD_CMD_READ, 1, 4096, 4))
    assert conn.reply_read(1, b'abcd') == [
        struct.pack('>IHHQIQ', const.NBD_STRUCTURED_REPLY_MAGIC, 1, 1, 1,
                    12, 4096), b'abcd']


def test_structured_errors_are_error_chunks_with_message():
    # "MUST NOT use a simple reply for NBD_CMD_READ (even for the case of
    # an early NBD_EINVAL due to bad flags)"
    conn = transmitting(structured=True)
    refused = one(conn, request(const.NBD_CMD_READ, 1, 0, 4096, 1 << 12))
    assert conn.reply_error(1, refused.error, 'bad') == chunk(
        1, const.NBD_REPLY_TYPE_ERROR, struct.pack('>IH', 22, 3) + b'bad')


def test_read_extents_become_data_and_hole_chunks():
    conn = transmitting(structured=True)
    one(conn, request(const.NBD_CMD_READ, 1, 1024, 4096))
    pieces = conn.reply_read_extents(1, [
        (1024, 512, None), (1536, 512, None), (2048, 1024, b'd' * 1024),
        (3072, 2048, None)])
    magic = const.NBD_STRUCTURED_REPLY_MAGIC
    assert b''.join(pieces) == b''.join([
        struct.pack('>IHHQIQI', magic, 0, 2, 1, 12, 1024, 1024),
        struct.pack('>IHHQIQ', magic, 0, 1, 1, 1032, 2048), b'd' * 1024,
        struct.pack('>IHHQIQI', magic, 1, 2, 1, 12, 3072, 2048),
    ])


def test_read_extents_with_df_send_one_content_chunk():
    conn = transmitting(structured=True,
                        flags=ALL_FLAGS | const.NBD_FLAG_SEND_DF)
    one(conn, request(const.NBD_CMD_READ, 1, 0, 1024,
                      const.NBD_CMD_FLAG_DF))
    pieces = conn.reply_read_extents(1, [(0, 512, None),
                                         (512, 512, b'x' * 512)])
    assert b''.join(pieces) == struct.pack(
        '>IHHQIQ', const.NBD_STRUCTURED_REPLY_MAGIC, 1, 1, 1, 1032, 0) + \
        bytes(512) + b'x' * 512


def test_read_extents_without_structured_replies_send_zeroes():
    conn = transmitting(size=2 * MiB)
    one(conn, request(const.NBD_CMD_READ, 1, 0, 3 * MiB // 2))
    data = b'y' * (MiB // 2)
    pieces = conn.reply_read_extents(1, [(0, MiB, None),
                                         (MiB, MiB // 2, data)])
    assert pieces[0] == simple_reply(1)
    assert b''.join(pieces[1:]) == bytes(MiB) + data


@pytest.mark.parametrize('extents', [
    [(0, 512, None)],                               # too short
    [(512, 1024, None)],                            # does not start there
    [(0, 512, None), (1024, 512, None)],            # gap
    [(0, 1024, b'short')],                          # data length
    [(0, 2048, None)],                              # too long
])
def test_read_extents_must_tile_the_request(extents):
    conn = transmitting(structured=True)
    one(conn, request(const.NBD_CMD_READ, 1, 0, 1024))
    with pytest.raises(LocalProtocolError):
        conn.reply_read_extents(1, extents)
    assert conn.requests_in_flight == 1


def test_block_status_reply_clips_and_merges_extents():
    conn = transmitting(structured=True, contexts=['base:allocation'])
    one(conn, request(const.NBD_CMD_BLOCK_STATUS, 4, 4096, 16384))
    hole = const.NBD_STATE_HOLE | const.NBD_STATE_ZERO
    out = conn.reply_block_status(4, [
        (0, 8192, 0), (8192, 4096, 0), (12288, 4096, hole),
        (16384, MiB, hole), (MiB + 16384, 4096, 0)])
    assert out == chunk(4, const.NBD_REPLY_TYPE_BLOCK_STATUS, struct.pack(
        '>IIIII', 1, 8192, 0, 8192, 3))
    assert conn.requests_in_flight == 0


def test_block_status_reply_honours_req_one():
    conn = transmitting(structured=True, contexts=['base:allocation'])
    one(conn, request(const.NBD_CMD_BLOCK_STATUS, 4, 0, 8192,
                      const.NBD_CMD_FLAG_REQ_ONE))
    out = conn.reply_block_status(4, [(0, 4096, 3), (4096, 4096, 0)])
    assert out == chunk(4, const.NBD_REPLY_TYPE_BLOCK_STATUS,
                        struct.pack('>III', 1, 4096, 3))


def test_block_status_needs_extents_from_the_start_and_a_context():
    conn = transmitting(structured=True, contexts=['base:allocation'])
    one(conn, request(const.NBD_CMD_BLOCK_STATUS, 4, 4096, 8192))
    with pytest.raises(LocalProtocolError):
        conn.reply_block_status(4, [(8192, 4096, 0)])
    with pytest.raises(LocalProtocolError):
        conn.reply_block_status(4, [(0, MiB, 0)], context='qemu:x')


def test_two_contexts_get_one_chunk_each_done_on_the_last():
    conn = transmitting(structured=True,
                        contexts=['base:allocation', 'x-test:dirty'])
    one(conn, request(const.NBD_CMD_BLOCK_STATUS, 4, 0, 4096))
    first = conn.reply_block_status(4, [(0, 4096, 0)], final=False)
    second = conn.reply_block_status(4, [(0, 4096, 1)], 'x-test:dirty')
    assert first == chunk(4, const.NBD_REPLY_TYPE_BLOCK_STATUS,
                          struct.pack('>III', 1, 4096, 0), flags=0)
    assert second == chunk(4, const.NBD_REPLY_TYPE_BLOCK_STATUS,
                           struct.pack('>III', 2, 4096, 1))


def test_chunk_by_chunk_read_with_error_offset():
    conn = transmitting(structured=True)
    one(conn, request(const.NBD_CMD_READ, 1, 0, 1024))
    data = conn.reply_chunk_data(1, 0, b'a' * 512)
    assert data[0] == struct.pack('>IHHQIQ',
                                  const.NBD_STRUCTURED_REPLY_MAGIC, 0, 1, 1,
                                  520, 0)
    with pytest.raises(LocalProtocolError):
        conn.reply_chunk_hole(1, 512, 1024)     # beyond the request
    err = conn.reply_chunk_error_offset(1, const.NBD_EIO, 512, 'bad')
    assert err == chunk(1, const.NBD_REPLY_TYPE_ERROR_OFFSET,
                        struct.pack('>IH', 5, 3) + b'bad'
                        + struct.pack('>Q', 512), flags=0)
    assert conn.reply_chunk_done(1) == chunk(1, const.NBD_REPLY_TYPE_NONE)
    assert conn.requests_in_flight == 0
