"""Our NBD server against clients nobody here wrote.

nbdinfo and nbdcopy (libnbd), qemu-img and qemu-io (QEMU's own NBD client,
the one libvirt uses for network disks) and fio's nbd engine.
"""

import hashlib
import json
import os

from storage_engine.nbd.client import NBDClient
from tests.interop.conftest import MiB
from tests.interop.conftest import run


def _sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(4 * MiB), b''):
            h.update(block)
    return h.hexdigest()


def test_nbdinfo_shows_size_and_export_properties(vg, nbd):
    vg.create_volume('vol-a', 64 * MiB)
    nbd.export('vol-a', description='a test volume')
    info = json.loads(run(['nbdinfo', '--json', nbd.uri('vol-a')]).stdout)
    (exp,) = info['exports']
    assert exp['export-size'] == 64 * MiB
    assert exp['description'] == 'a test volume'
    assert exp['is_read_only'] is False
    assert exp['can_flush'] and exp['can_fua'] and exp['can_trim']
    assert exp['can_zero'] and exp['can_multi_conn']
    assert exp['block_size_minimum'] == 512
    assert 'base:allocation' in exp['contexts']


def test_nbdinfo_over_unix_socket(vg, nbd):
    vg.create_volume('vol-u', 8 * MiB)
    nbd.export('vol-u')
    out = run(['nbdinfo', '--size', nbd.unix_uri('vol-u')]).stdout
    assert int(out) == 8 * MiB


def test_list_shows_only_exports_the_client_may_use(vg, nbd):
    for name in ('mine', 'theirs'):
        vg.create_volume(name, 8 * MiB)
    nbd.export('mine')
    nbd.export('theirs', hosts=('192.0.2.10',), local=False)
    listing = json.loads(run(['nbdinfo', '--json', '--list',
                              nbd.uri('')]).stdout)
    assert [e['export-name'] for e in listing['exports']] == ['mine']
    assert NBDClient.list_exports(port=nbd.port) == ['mine']


def test_hidden_export_answers_exactly_like_a_missing_one(vg, nbd):
    vg.create_volume('secret', 8 * MiB)
    nbd.export('secret', hosts=('192.0.2.10',), local=False)
    hidden = run(['nbdinfo', nbd.uri('secret')], check=False)
    missing = run(['nbdinfo', nbd.uri('no-such-export')], check=False)
    assert hidden.returncode != 0 and missing.returncode != 0
    assert hidden.stderr.replace('secret', 'X') == \
        missing.stderr.replace('no-such-export', 'X')


def _nbdinfo_map(uri):
    extents = []
    for line in run(['nbdinfo', '--map', uri]).stdout.splitlines():
        offset, length, flags = line.split()[:3]
        extents.append((int(offset), int(length), int(flags)))
    return extents


def test_nbdinfo_map_agrees_with_the_allocation_map(vg, nbd):
    vg.create_volume('sparse', 32 * MiB)
    h = vg.open_volume('sparse')
    h.write(0, b'x' * MiB)
    h.write(5 * MiB + 4096, b'y' * 4096)
    h.write(20 * MiB, b'z' * 3 * MiB)
    h.discard(21 * MiB, MiB)
    nbd.export('sparse')
    ours = [(e.offset, e.length, 0 if e.state == 'data' else 3)
            for e in h.allocation()]
    assert _nbdinfo_map(nbd.uri('sparse')) == ours
    assert ours == [(0, MiB, 0), (MiB, 4 * MiB, 3), (5 * MiB, MiB, 0),
                    (6 * MiB, 14 * MiB, 3), (20 * MiB, MiB, 0),
                    (21 * MiB, MiB, 3), (22 * MiB, MiB, 0),
                    (23 * MiB, 9 * MiB, 3)]


def test_nbdcopy_round_trip_of_a_random_256mib_image(vg, nbd, tmp_path):
    size = 256 * MiB
    src = tmp_path / 'src.img'
    with open(src, 'wb') as f:
        for _ in range(size // (8 * MiB)):
            f.write(os.urandom(8 * MiB))
    vg.create_volume('copy', size)
    nbd.export('copy')
    run(['nbdcopy', str(src), nbd.uri('copy')])
    back = tmp_path / 'back.img'
    run(['nbdcopy', nbd.uri('copy'), str(back)])
    assert _sha256(back) == _sha256(src)
    assert vg.open_volume('copy').read(100 * MiB, MiB) == \
        open(src, 'rb').read()[100 * MiB:101 * MiB]


def test_qemu_img_info_convert_and_compare(vg, nbd, tmp_path):
    src = tmp_path / 'src.img'
    with open(src, 'wb') as f:
        f.truncate(48 * MiB)
        f.seek(3 * MiB)
        f.write(os.urandom(5 * MiB))
        f.seek(40 * MiB)
        f.write(os.urandom(MiB))
    vg.create_volume('img', 48 * MiB)
    nbd.export('img')
    info = json.loads(run(['qemu-img', 'info', '--output=json',
                           nbd.uri('img')]).stdout)
    assert info['virtual-size'] == 48 * MiB
    run(['qemu-img', 'convert', '-n', '-f', 'raw', '-O', 'raw', str(src),
         nbd.uri('img')])
    assert run(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', str(src),
                nbd.uri('img')]).returncode == 0
    # A one-byte difference is noticed.
    vg.open_volume('img').write(40 * MiB, b'\0' * 512)
    diff = run(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', str(src),
                nbd.uri('img')], check=False)
    assert diff.returncode == 1, diff.stdout + diff.stderr
    # And converting out gives a sparse copy with the same content.
    out = tmp_path / 'out.qcow2'
    run(['qemu-img', 'convert', '-O', 'qcow2', nbd.uri('img'), str(out)])
    assert run(['qemu-img', 'compare', '-F', 'raw', str(out),
                nbd.uri('img')]).returncode == 0


def test_qemu_io_write_and_read_patterns(vg, nbd):
    vg.create_volume('pat', 16 * MiB)
    nbd.export('pat')
    uri = nbd.uri('pat')
    run(['qemu-io', '-f', 'raw', '-c', 'write -P 0xab 0 1M',
         '-c', 'write -P 0xcd 4097k 3k', '-c', 'write -z 2M 1M',
         '-c', 'flush', uri])
    out = run(['qemu-io', '-f', 'raw', '-c', 'read -P 0xab 0 1M',
               '-c', 'read -P 0xcd 4097k 3k', '-c', 'read -P 0 2M 1M',
               '-c', 'read -P 0 4096k 1k', uri])
    assert 'Pattern verification failed' not in out.stdout + out.stderr
    h = vg.open_volume('pat')
    assert h.read(0, MiB) == b'\xab' * MiB
    assert h.read(4097 * 1024, 3072) == b'\xcd' * 3072
    bad = run(['qemu-io', '-f', 'raw', '-c', 'read -P 0xee 0 4k', uri],
              check=False)
    assert 'Pattern verification failed' in bad.stdout + bad.stderr


def test_fio_nbd_engine_verify(vg, nbd):
    vg.create_volume('fio', 64 * MiB)
    nbd.export('fio')
    out = run(['fio', '--name=verify', '--ioengine=nbd',
               '--uri=' + nbd.uri('fio'), '--rw=randwrite', '--bs=4k',
               '--iodepth=16', '--size=32M', '--verify=crc32c',
               '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0',
               '--output-format=json'])
    job = json.loads(out.stdout[out.stdout.index('{'):])['jobs'][0]
    assert job['error'] == 0
    assert job['write']['io_bytes'] == 32 * MiB
    assert job['read']['io_bytes'] == 32 * MiB     # the verify pass


def test_snapshot_export_is_read_only(vg, nbd):
    vg.create_volume('base', 8 * MiB)
    vg.open_volume('base').write(0, b'q' * 4096)
    vg.create_snapshot('base', 'base-snap')
    nbd.export('base-snap')
    info = json.loads(run(['nbdinfo', '--json',
                           nbd.uri('base-snap')]).stdout)
    assert info['exports'][0]['is_read_only'] is True
    out = run(['qemu-io', '-r', '-f', 'raw', '-c', 'read -P 0x71 0 4k',
               nbd.uri('base-snap')])
    assert 'verification failed' not in out.stdout + out.stderr
    # QEMU sees the read-only flag and will not open it for writing.
    bad = run(['qemu-io', '-f', 'raw', '-c', 'write -P 1 0 4k',
               nbd.uri('base-snap')], check=False)
    assert bad.returncode != 0
    assert 'Permission denied' in bad.stderr
    assert vg.open_volume('base-snap').read(0, 4096) == b'q' * 4096
