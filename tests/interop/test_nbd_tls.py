"""TLS with X.509 certificates, client certificates as identity.

The server requires TLS (``tls_mode`` require) and a client certificate
from its CA; exports name the identities (certificate names) they admit.
TLS-PSK is not offered: Python 3.11's ssl module cannot do it (3.13 can).
"""

import json
import ssl

import pytest

from storage_engine.nbd.client import NBDClient
from storage_engine.nbd.client import NBDError
from storage_engine.nbd import constants as const
from tests.interop.conftest import MiB
from tests.interop.conftest import run


def _uri(harness, name, pki, kind='client'):
    return 'nbds://localhost:%d/%s?tls-certificates=%s' % (
        harness.port, name, pki.client_dir(kind))


def test_nbdinfo_with_a_client_certificate(vg, tls_nbd, pki):
    vg.create_volume('tv', 16 * MiB)
    tls_nbd.export('tv', tls_ids=('compute-1',))
    info = json.loads(run(['nbdinfo', '--json',
                           _uri(tls_nbd, 'tv', pki)]).stdout)
    assert info['exports'][0]['export-size'] == 16 * MiB
    assert info['TLS'] is True


def test_client_with_a_certificate_from_another_ca_is_refused(vg, tls_nbd,
                                                              pki):
    vg.create_volume('tv', 16 * MiB)
    tls_nbd.export('tv', tls_ids=('compute-1',))
    bad = run(['nbdinfo', '--list', _uri(tls_nbd, '', pki, 'rogue')],
              check=False)
    assert bad.returncode != 0
    assert 'tv' not in bad.stdout


def test_client_without_tls_learns_nothing(vg, tls_nbd):
    vg.create_volume('tv', 16 * MiB)
    tls_nbd.export('tv', tls_ids=('compute-1',))
    plain = run(['nbdinfo', '--list', tls_nbd.uri('')], check=False)
    assert plain.returncode != 0
    assert 'tv' not in plain.stdout
    go = run(['nbdinfo', tls_nbd.uri('tv')], check=False)
    assert go.returncode != 0
    # The reply itself is NBD_REP_ERR_TLS_REQD (libnbd words it loosely).
    with pytest.raises(NBDError) as err:
        NBDClient.connect('tv', port=tls_nbd.port)
    assert err.value.error == const.NBD_REP_ERR_TLS_REQD


def test_export_admits_only_the_identity_it_names(vg, tls_nbd, pki):
    vg.create_volume('for-1', 8 * MiB)
    vg.create_volume('for-2', 8 * MiB)
    tls_nbd.export('for-1', tls_ids=('compute-1',), hosts=())
    tls_nbd.export('for-2', tls_ids=('compute-2',), hosts=())
    listing = json.loads(run(['nbdinfo', '--json', '--list',
                              _uri(tls_nbd, '', pki)]).stdout)
    assert [e['export-name'] for e in listing['exports']] == ['for-1']
    other = run(['nbdinfo', _uri(tls_nbd, 'for-1', pki, 'other')],
                check=False)
    assert other.returncode != 0


def test_qemu_img_over_tls(vg, tls_nbd, pki, tmp_path):
    vg.create_volume('tq', 8 * MiB)
    vg.open_volume('tq').write(MiB, b'\x5a' * MiB)
    tls_nbd.export('tq', tls_ids=('compute-1',))
    opts = ('driver=nbd,server.type=inet,server.host=localhost,'
            'server.port=%d,export=tq,tls-creds=tls0' % tls_nbd.port)
    obj = 'tls-creds-x509,id=tls0,dir=%s,endpoint=client' % \
        pki.client_dir()
    out = tmp_path / 'out.raw'
    run(['qemu-img', 'convert', '--object', obj, '--image-opts', opts,
         '-O', 'raw', str(out)])
    data = out.read_bytes()
    assert data[MiB:2 * MiB] == b'\x5a' * MiB
    assert data[:MiB] == bytes(MiB)
    bad_obj = 'tls-creds-x509,id=tls0,dir=%s,endpoint=client' % \
        pki.client_dir('rogue')
    bad = run(['qemu-img', 'info', '--object', bad_obj, '--image-opts',
               opts], check=False)
    assert bad.returncode != 0


def test_python_client_over_tls(vg, tls_nbd, pki):
    vg.create_volume('tp', 8 * MiB)
    tls_nbd.export('tp', tls_ids=('compute-1',))
    ctx = ssl.create_default_context(cafile=pki.dir + '/ca-cert.pem')
    ctx.load_cert_chain(pki.dir + '/client-cert.pem',
                        pki.dir + '/client-key.pem')
    with NBDClient.connect('tp', host='localhost', port=tls_nbd.port,
                           tls=ctx) as c:
        c.pwrite(b'T' * 4096, 8192, fua=True)
        assert c.pread(4096, 8192) == b'T' * 4096
    assert vg.open_volume('tp').read(8192, 4096) == b'T' * 4096
