"""TLS by configuration: the API over HTTPS, NBD exports that require TLS."""

import ssl

import pytest
import requests

from storage_engine.nbd import client as nbd_client


@pytest.fixture
def tls_node(node_factory, pki):
    node = node_factory(
        'secure', start=False, scheme='https',
        api_extra='tls_cert_file = %s\ntls_key_file = %s'
        % (pki.path('server-cert.pem'), pki.path('server-key.pem')),
        nbd_extra='tls_mode = require\ntls_cert_file = %s\n'
        'tls_key_file = %s\ntls_ca_file = %s'
        % (pki.path('server-cert.pem'), pki.path('server-key.pem'),
           pki.path('ca-cert.pem')))
    node.verify = pki.path('ca-cert.pem')
    return node.start()


def _client_context(pki, kind='client'):
    ctx = ssl.create_default_context(cafile=pki.path('ca-cert.pem'))
    ctx.load_cert_chain(pki.path(kind + '-cert.pem'),
                        pki.path(kind + '-key.pem'))
    return ctx


def test_api_is_served_over_https_verified_by_the_ca(tls_node):
    r = tls_node.get('/node')
    assert r.status_code == 200
    assert r.json()['nbd']['tls_mode'] == 'require'
    # Plain HTTP to the HTTPS port gets no API answer.
    plain = tls_node.url.replace('https://', 'http://') + '/v1/node'
    try:
        r = requests.get(plain, headers={'X-Auth-Token': tls_node.token},
                         timeout=10)
    except requests.ConnectionError:
        pass            # the TLS server closed the connection
    else:
        assert r.status_code != 200, r.text
    # A client that does not trust the node's CA refuses to talk.
    with pytest.raises(requests.exceptions.SSLError):
        tls_node.get('/node', verify=True)


def test_client_library_talks_https_with_a_ca_file(tls_node, pki):
    client = tls_node.client(ca_file=pki.path('ca-cert.pem'))
    assert client.node()['name'] == 'secure'


def test_tls_export_needs_tls_and_serves_over_it(tls_node, pki):
    vol = tls_node.post('/volumes', {'name': 'v', 'size': 1 << 20}).json()
    exp = tls_node.post('/exports', {'volume_id': vol['id'],
                                     'hosts': ['127.0.0.1']}).json()
    conn = exp['connection']
    assert conn['tls_mode'] == 'require'
    with pytest.raises((nbd_client.NBDError, OSError)):
        nbd_client.NBDClient.connect(conn['export_name'], host=conn['host'],
                                     port=conn['port']).close()
    with nbd_client.NBDClient.connect(
            conn['export_name'], host=conn['host'], port=conn['port'],
            tls=_client_context(pki), server_hostname='localhost') as c:
        c.pwrite(b's' * 512, 0)
        assert c.pread(512, 0) == b's' * 512
