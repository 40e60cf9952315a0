"""Throw random and mutated byte streams at a live NBD server.

Each stream goes over its own connection: pure noise, noise after a valid
handshake, and valid sessions (handshake and requests, as our client core
writes them) with bytes flipped, dropped, duplicated or inserted. The
server may answer with errors or drop that client. Afterwards it must
still serve a well-behaved client correctly, data written before the
fuzzing must be intact, and nothing may have reached the server's
"internal error" path.
"""

import logging
import random
import socket

from storage_engine.nbd.client import NBDClient
from storage_engine.nbd import constants as const
from storage_engine.volstore import VolumeGroup
from tests.interop.conftest import Harness

MiB = 1 << 20


def _option(code, data=b''):
    return const.IHAVEOPT.to_bytes(8, 'big') + code.to_bytes(4, 'big') + \
        len(data).to_bytes(4, 'big') + data


def _name(text):
    raw = text.encode()
    return len(raw).to_bytes(4, 'big') + raw


def _valid_session(rng, export):
    """The bytes a client sends for a whole session (replies unread)."""
    flags = const.NBD_FLAG_C_FIXED_NEWSTYLE | const.NBD_FLAG_C_NO_ZEROES
    out = [flags.to_bytes(4, 'big')]
    if rng.random() < 0.8:
        out.append(_option(const.NBD_OPT_STRUCTURED_REPLY))
        out.append(_option(const.NBD_OPT_SET_META_CONTEXT, _name(export) +
                           (1).to_bytes(4, 'big') + _name('base:allocation')))
    if rng.random() < 0.3:
        out.append(_option(const.NBD_OPT_LIST))
    if rng.random() < 0.3:
        out.append(_option(const.NBD_OPT_INFO, _name(export) +
                           b'\0\0'))
    if rng.random() < 0.1:
        out.append(_option(rng.randrange(1 << 32), rng.randbytes(8)))
    out.append(_option(const.NBD_OPT_GO, _name(export) + (1).to_bytes(2, 'big')
                       + const.NBD_INFO_BLOCK_SIZE.to_bytes(2, 'big')))
    return b''.join(out), _requests(rng)


def _requests(rng):
    out = []
    handle = 1
    for _ in range(rng.randint(1, 20)):
        kind = rng.choice([const.NBD_CMD_READ, const.NBD_CMD_WRITE,
                           const.NBD_CMD_FLUSH, const.NBD_CMD_TRIM,
                           const.NBD_CMD_WRITE_ZEROES,
                           const.NBD_CMD_BLOCK_STATUS, const.NBD_CMD_CACHE,
                           rng.randrange(0, 64)])
        offset = rng.choice([0, 4096, 8 * MiB - 4096, rng.randrange(1 << 40),
                             rng.randrange(8 * MiB)])
        length = rng.choice([0, 512, 4096, 1 << 20, rng.randrange(1 << 32)])
        flags = rng.choice([0, 0, 1, rng.randrange(1 << 16)])
        head = (0x25609513).to_bytes(4, 'big') + flags.to_bytes(2, 'big') + \
            kind.to_bytes(2, 'big') + handle.to_bytes(8, 'big') + \
            offset.to_bytes(8, 'big') + length.to_bytes(4, 'big')
        out.append(head)
        if kind == const.NBD_CMD_WRITE and length <= 65536:
            out.append(rng.randbytes(length))
        handle += 1
    return b''.join(out)


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not data:
            break
        pos = rng.randrange(len(data))
        what = rng.randrange(4)
        if what == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif what == 1:
            del data[pos:pos + rng.randint(1, 16)]
        elif what == 2:
            data[pos:pos] = data[pos:pos + rng.randint(1, 32)]
        else:
            data[pos:pos] = rng.randbytes(rng.randint(1, 64))
    return bytes(data)


def _throw(port, payload):
    with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
        s.settimeout(0.5)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except (socket.timeout, OSError):
            pass


def test_server_survives_garbage_and_keeps_serving(tmp_path, caplog,
                                                   request):
    seed = request.config.getoption('--torture-seed') or \
        random.randrange(1 << 32)
    rng = random.Random(seed)
    vg = VolumeGroup.create([(str(tmp_path / 'pv0'), 256 * MiB)])
    vg.create_volume('fz', 8 * MiB)
    vg.create_volume('keep', 8 * MiB)
    keep = rng.randbytes(MiB)
    vg.open_volume('keep').write(MiB, keep)
    harness = Harness(vg, str(tmp_path))
    harness.export('fz')
    harness.export('keep')
    caplog.set_level(logging.ERROR, logger='storage_engine.nbd.server')
    streams = 400 if request.config.getoption('--long') else 150
    try:
        for i in range(streams):
            kind = i % 3
            if kind == 0:
                payload = rng.randbytes(rng.randint(0, 2048))
            else:
                hs, reqs = _valid_session(rng, 'fz')
                payload = hs + reqs
                if kind == 2 or rng.random() < 0.5:
                    payload = _mutate(rng, payload)
            _throw(harness.port, payload)

        with NBDClient.connect('fz', port=harness.port) as c:
            data = rng.randbytes(64 * 1024)
            c.pwrite(data, 4096, fua=True)
            assert c.pread(len(data), 4096) == data
            c.trim(MiB, 2 * MiB)
            assert c.pread(4096, 2 * MiB) == bytes(4096)
        with NBDClient.connect('keep', port=harness.port) as c:
            assert c.pread(MiB, MiB) == keep
        assert vg.check().ok
    finally:
        harness.stop()
        vg.close()
    internal = [r.getMessage() for r in caplog.records
                if 'internal error' in r.getMessage() or
                'unexpected' in r.getMessage()]
    assert not internal, 'seed %d: %s' % (seed, internal[:3])
