"""Bad requests to a live server: the error the spec prescribes, and the
connection (and the server) carry on.

The requests are sent raw, past our client's own checks.
"""

import pytest

from storage_engine.nbd.client import NBDClient
from storage_engine.nbd.client import NBDError
from storage_engine.nbd import client_protocol as cp
from storage_engine.nbd import constants as const
from tests.interop.conftest import MiB


@pytest.fixture
def client(vg, nbd):
    vg.create_volume('bad', 4 * MiB)
    vg.open_volume('bad').write(0, b'k' * 4096)
    nbd.export('bad')
    with NBDClient.connect('bad', port=nbd.port) as c:
        yield c


def _raw(client, kind, offset, length, flags=0, payload=b''):
    _handle, header = client.core.send_request(
        kind, offset, length, flags, validate=False)
    client.sock.sendall(header + payload)
    return client._wait(cp.CommandComplete, cp.ReadComplete,
                        cp.BlockStatusComplete)


def _error_of(client, *args, **kw):
    with pytest.raises(NBDError) as err:
        _raw(client, *args, **kw)
    return err.value.error


@pytest.mark.parametrize('kind,offset,length,error', [
    (const.NBD_CMD_READ, 4 * MiB, 512, const.NBD_EINVAL),
    (const.NBD_CMD_READ, 4 * MiB - 512, 1024, const.NBD_EINVAL),
    (const.NBD_CMD_TRIM, 4 * MiB, 4096, const.NBD_EINVAL),
    (const.NBD_CMD_BLOCK_STATUS, 5 * MiB, 4096, const.NBD_EINVAL),
    (const.NBD_CMD_WRITE_ZEROES, 4 * MiB - 512, 4096, const.NBD_ENOSPC),
    (const.NBD_CMD_READ, 0, 64 * MiB, const.NBD_EINVAL),    # too long
    (const.NBD_CMD_READ, 0, 0, const.NBD_EINVAL),
    (63, 0, 512, const.NBD_EINVAL),                          # unknown
])
def test_bad_request_gets_its_error_and_the_connection_goes_on(
        client, kind, offset, length, error):
    assert _error_of(client, kind, offset, length) == error
    assert client.pread(4096, 0) == b'k' * 4096


def test_write_past_the_end_is_enospc_and_its_payload_skipped(client):
    assert _error_of(client, const.NBD_CMD_WRITE, 4 * MiB - 512, 1024,
                     payload=b'z' * 1024) == const.NBD_ENOSPC
    assert client.pread(512, 4 * MiB - 512) == bytes(512)
    assert client.pread(4096, 0) == b'k' * 4096


def test_unknown_flags_are_einval(client):
    assert _error_of(client, const.NBD_CMD_READ, 0, 512,
                     flags=1 << 12) == const.NBD_EINVAL
    assert _error_of(client, const.NBD_CMD_WRITE, 0, 512, flags=1 << 12,
                     payload=b'z' * 512) == const.NBD_EINVAL
    assert client.pread(4096, 0) == b'k' * 4096


def test_write_to_a_read_only_export_is_eperm(vg, nbd):
    vg.create_volume('src', 4 * MiB)
    vg.open_volume('src').write(0, b'r' * 4096)
    vg.create_snapshot('src', 'src-snap')
    nbd.export('src-snap')
    with NBDClient.connect('src-snap', port=nbd.port) as c:
        assert _error_of(c, const.NBD_CMD_WRITE, 0, 4096,
                         payload=b'x' * 4096) == const.NBD_EPERM
        # TRIM and WRITE_ZEROES are not even advertised on a read-only
        # export: EINVAL (not sent when not advertised) or EPERM will do.
        for kind in (const.NBD_CMD_TRIM, const.NBD_CMD_WRITE_ZEROES):
            assert _error_of(c, kind, 0, 4096) in (const.NBD_EPERM,
                                                   const.NBD_EINVAL)
        assert c.pread(4096, 0) == b'r' * 4096
    assert vg.open_volume('src-snap').read(0, 4096) == b'r' * 4096


def test_fast_zero_refused_where_zeroing_would_write(client, nbd):
    # Zeroing is a punched hole on this file PV: FAST_ZERO works.
    _raw(client, const.NBD_CMD_WRITE_ZEROES, 0, 4096,
         flags=const.NBD_CMD_FLAG_FAST_ZERO)
    assert client.pread(4096, 0) == bytes(4096)
    # Where the devices could not punch, FAST_ZERO fails fast (ENOTSUP).
    for pv in nbd.vg._pvs:
        pv.device._can_punch = False
    assert _error_of(client, const.NBD_CMD_WRITE_ZEROES, 0, 4096,
                     flags=const.NBD_CMD_FLAG_FAST_ZERO) == const.NBD_ENOTSUP
    assert client.pread(4096, 0) == bytes(4096)
