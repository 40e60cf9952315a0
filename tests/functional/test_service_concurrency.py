"""Concurrent creates: every volume made once, every name, id and port
handed out once, and nothing leaked, on one node and on two nodes sharing
one etcd (the Debian package, started by the session's fixture).
"""

import collections
import concurrent.futures
import uuid

import pytest

from storage_engine import metastore
from storage_engine import units

SIZE = 64 * units.Mi
THREADS = 32


def _in_parallel(calls):
    """Run ``calls`` (callables) at once; their results, in order."""
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda call: call(), calls))


def _create(node, name, ident=None):
    body = {'name': name, 'size': SIZE}
    if ident:
        body['id'] = ident
    r = node.post('/volumes', body)
    return r.status_code, r.json()


def _store_keys(url, prefix):
    with metastore.open_store(url) as store:
        return store.list(prefix)


def _allocated(node):
    return node.get('/pools/default').json()['allocated']


def _delete_all(node):
    for exp in node.get('/exports').json()['exports']:
        assert node.request('DELETE', '/exports/' + exp['id']
                            ).status_code == 204
    for vol in node.get('/volumes').json()['volumes']:
        r = node.request('DELETE', '/volumes/' + vol['id'])
        assert r.status_code == 204, r.text


def test_100_concurrent_creates_on_one_node(node):
    baseline = _allocated(node)
    results = _in_parallel([lambda i=i: _create(node, 'vol-%03d' % i)
                            for i in range(100)])
    assert [status for status, _ in results] == [201] * 100
    ids = [body['id'] for _, body in results]
    assert len(set(ids)) == 100
    listed = node.get('/volumes').json()['volumes']
    assert sorted(v['name'] for v in listed) == \
        ['vol-%03d' % i for i in range(100)]
    assert sorted(v['id'] for v in listed) == sorted(ids)
    pool = node.get('/pools/default').json()
    assert pool['volumes'] == 100
    assert pool['provisioned'] == 100 * SIZE
    keys = _store_keys(node.metadata_url, '')
    assert len([k for k in keys if k.startswith('volumes/')]) == 100
    assert len([k for k in keys if k.startswith('names/')]) == 100
    # No leaks: once deleted, the pool and the store are as they were.
    _delete_all(node)
    assert node.get('/volumes').json()['volumes'] == []
    assert _allocated(node) == baseline
    keys = _store_keys(node.metadata_url, '')
    assert not [k for k in keys if k.startswith(('volumes/', 'names/'))]


def test_concurrent_creates_of_one_name_make_one_volume(node):
    results = _in_parallel([lambda: _create(node, 'contended')] * 40)
    statuses = collections.Counter(status for status, _ in results)
    assert statuses == {201: 1, 409: 39}
    assert {body['error']['code'] for status, body in results
            if status == 409} == {'already_exists'}
    assert [v['name'] for v in node.get('/volumes').json()['volumes']] == \
        ['contended']
    assert node.get('/pools/default').json()['volumes'] == 1


def test_retried_creates_with_one_id_make_one_volume(node):
    ident = str(uuid.uuid4())
    results = _in_parallel([lambda: _create(node, 'retried', ident)] * 20)
    statuses = collections.Counter(status for status, _ in results)
    assert statuses == {201: 1, 200: 19}
    assert {body['id'] for _, body in results} == {ident}
    assert len(node.get('/volumes').json()['volumes']) == 1


@pytest.fixture
def two_nodes(node_factory, etcd):
    """Two nodes sharing one etcd namespace and the same NBD port range."""
    url = etcd.store_url('cluster-' + uuid.uuid4().hex)
    a = node_factory('a', metadata_url=url)
    b = node_factory('b', metadata_url=url, nbd_ports=a.nbd_ports)
    return a, b, url


def test_two_nodes_sharing_etcd_never_hand_out_one_port(two_nodes):
    a, b, _url = two_nodes
    port_a = a.get('/node').json()['nbd']['port']
    port_b = b.get('/node').json()['nbd']['port']
    assert port_a != port_b
    assert {port_a, port_b} <= set(a.nbd_ports)


def test_100_concurrent_creates_on_two_nodes_sharing_etcd(two_nodes):
    a, b, url = two_nodes
    baseline = (_allocated(a), _allocated(b))
    calls = [lambda i=i: (_create(a if i % 2 else b, 'vol-%03d' % i))
             for i in range(100)]
    # And every name also tried on the other node at the same time: a
    # name is taken once in the cluster.
    calls += [lambda i=i: (_create(b if i % 2 else a, 'vol-%03d' % i))
              for i in range(100)]
    results = _in_parallel(calls)
    won = [body for status, body in results if status == 201]
    lost = [body for status, body in results if status != 201]
    assert len(won) == 100
    assert {body['error']['code'] for body in lost} == {'already_exists'}
    names = sorted(v['name'] for v in
                   a.get('/volumes').json()['volumes'] +
                   b.get('/volumes').json()['volumes'])
    assert names == ['vol-%03d' % i for i in range(100)]
    ids = [body['id'] for body in won]
    assert len(set(ids)) == 100
    assert (a.get('/pools/default').json()['volumes'] +
            b.get('/pools/default').json()['volumes']) == 100
    keys = _store_keys(url, '')
    assert len([k for k in keys if k.startswith('volumes/')]) == 100
    assert len([k for k in keys if k.startswith('names/')]) == 100

    # Exports from both nodes at once: every export name unique.
    vols = {n: n.get('/volumes').json()['volumes'] for n in (a, b)}
    exports = _in_parallel(
        [lambda n=n, v=v: n.post('/exports', {'volume_id': v['id'],
                                              'hosts': ['127.0.0.1']})
         for n in (a, b) for v in vols[n][:25]])
    assert [r.status_code for r in exports] == [201] * 50
    names = [r.json()['connection']['export_name'] for r in exports]
    assert len(set(names)) == 50

    for n in (a, b):
        _delete_all(n)
    assert (_allocated(a), _allocated(b)) == baseline
    keys = _store_keys(url, '')
    assert not [k for k in keys
                if k.startswith(('volumes/', 'names/', 'exports/'))]


def test_one_id_created_on_two_nodes_at_once_makes_one_volume(two_nodes):
    a, b, _url = two_nodes
    for _ in range(5):
        ident = str(uuid.uuid4())
        results = _in_parallel([lambda n=n: _create(n, 'x-' + ident[:8],
                                                    ident)
                                for n in (a, b) * 4])
        statuses = collections.Counter(status for status, _ in results)
        # The node that won answers its own retries with 200; the other
        # node finds the id taken by another node.
        assert statuses[201] == 1
        assert statuses[201] + statuses[200] + statuses[409] == 8
        holders = [n for n in (a, b)
                   if n.get('/volumes/' + ident).status_code == 200]
        assert len(holders) == 1
