"""Volumes, snapshots, clones, revert, extend, rename and flatten through
the API, with the data checked over NBD.
"""

import os
import time

import pytest

from storage_engine.nbd import client as nbd_client
from storage_engine import units

MiB = units.Mi


def _ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def _create(node, name, size=64 * MiB, **extra):
    return _ok(node.post('/volumes', dict(name=name, size=size, **extra)),
               201)


class Attached:
    """A volume exported to this host and connected over NBD."""

    def __init__(self, node, volume_id):
        self.node = node
        self.export = _ok(node.post('/exports', {
            'volume_id': volume_id, 'hosts': ['127.0.0.1']}), 201)
        conn = self.export['connection']
        self.client = nbd_client.NBDClient.connect(
            conn['export_name'], host=conn['host'], port=conn['port'])

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        _ok(self.node.request('DELETE', '/exports/' + self.export['id']),
            204)


def _read(node, volume_id, length, offset=0):
    with Attached(node, volume_id) as c:
        return c.pread(length, offset)


def _wait_job(node, job):
    deadline = time.monotonic() + 120
    seen = []
    while job['state'] == 'running':
        assert time.monotonic() < deadline, job
        seen.append(job['progress']['done'])
        time.sleep(0.02)
        job = _ok(node.get('/jobs/' + job['id']))
    return job, seen


def test_snapshot_clone_revert_keep_each_point_in_time(node):
    vol = _create(node, 'base', provisioning='thick')
    assert vol['provisioning'] == 'thick'
    one, two = os.urandom(MiB), os.urandom(MiB)
    with Attached(node, vol['id']) as c:
        c.pwrite(one, 0)
        snap = _ok(node.post('/snapshots', {'volume_id': vol['id'],
                                            'name': 'base-snap'}), 201)
        c.pwrite(two, 0)
    assert snap['volume_id'] == vol['id']
    from_snap = _create(node, 'from-snap', size=128 * MiB,
                        source={'snapshot_id': snap['id']})
    from_vol = _create(node, 'from-vol', source={'volume_id': vol['id']})
    assert from_snap['source'] == {'snapshot_id': snap['id']}
    assert from_snap['has_parent'] and from_vol['has_parent']
    assert _read(node, from_snap['id'], MiB) == one
    assert _read(node, from_snap['id'], MiB, 100 * MiB) == bytes(MiB)
    assert _read(node, from_vol['id'], MiB) == two
    # Writes to a clone stay in the clone.
    with Attached(node, from_vol['id']) as c:
        c.pwrite(b'\x01' * MiB, 0)
    assert _read(node, vol['id'], MiB) == two
    reverted = _ok(node.post('/volumes/%s/revert' % vol['id'],
                             {'snapshot_id': snap['id']}))
    assert reverted['size'] == vol['size']
    assert _read(node, vol['id'], MiB) == one
    assert _read(node, from_vol['id'], MiB) == b'\x01' * MiB


def test_extend_online_and_rename(node):
    vol = _create(node, 'grow')
    with Attached(node, vol['id']) as c:
        c.pwrite(b'k' * 4096, 0)
        grown = _ok(node.request('PATCH', '/volumes/' + vol['id'],
                                 json={'size': 256 * MiB, 'name': 'grown'}))
        # The attached client keeps working while the volume grows.
        assert c.pread(4096, 0) == b'k' * 4096
    assert (grown['size'], grown['name']) == (256 * MiB, 'grown')
    with Attached(node, vol['id']) as c:
        assert c.size == 256 * MiB
        c.pwrite(b'z' * 4096, 200 * MiB)
    listed = node.get('/volumes', params={'name': 'grown'}).json()
    assert [v['id'] for v in listed['volumes']] == [vol['id']]
    assert node.get('/volumes', params={'name': 'grow'}).json() == \
        {'volumes': []}
    # The old name is free again.
    _create(node, 'grow')


def test_flatten_job_reports_progress_and_frees_the_snapshot(node):
    vol = _create(node, 'origin', size=512 * MiB)
    data = os.urandom(4 * MiB)
    with Attached(node, vol['id']) as c:
        for off in range(0, 512 * MiB, 16 * MiB):
            c.pwrite(data, off)
    snap = _ok(node.post('/snapshots', {'volume_id': vol['id'],
                                        'name': 'origin-snap'}), 201)
    clone = _create(node, 'clone', size=512 * MiB,
                    source={'snapshot_id': snap['id']})
    r = node.post('/volumes/%s/flatten' % clone['id'])
    job = _ok(r, 202)
    assert r.headers['Location'] == '/v1/jobs/' + job['id']
    assert (job['kind'], job['volume_id']) == ('flatten', clone['id'])
    job, seen = _wait_job(node, job)
    assert job['state'] == 'succeeded', job
    assert job['error'] is None and job['finished_at']
    assert job['progress']['done'] == job['progress']['total'] == 512
    assert job['progress']['percent'] == 100.0
    assert seen == sorted(seen)
    assert job['id'] in [j['id'] for j in _ok(node.get('/jobs'))['jobs']]
    flat = _ok(node.get('/volumes/' + clone['id']))
    assert flat['has_parent'] is False
    # Only the clusters holding data were copied in.
    assert flat['allocated'] == 32 * len(data)
    # The snapshot no longer has a clone reading through it.
    _ok(node.request('DELETE', '/snapshots/' + snap['id']), 204)
    assert _read(node, clone['id'], 4 * MiB, 64 * MiB) == data


def test_delete_is_refused_while_exported(node):
    vol = _create(node, 'busy')
    exp = _ok(node.post('/exports', {'volume_id': vol['id'],
                                     'hosts': ['127.0.0.1']}), 201)
    snap = _ok(node.post('/snapshots', {'volume_id': vol['id'],
                                        'name': 'busy-snap'}), 201)
    r = node.request('DELETE', '/volumes/' + vol['id'])
    assert r.status_code == 409
    assert exp['id'] in r.json()['error']['message']
    _ok(node.request('DELETE', '/exports/' + exp['id']), 204)
    # Its snapshot does not hold it (and stays).
    _ok(node.request('DELETE', '/volumes/' + vol['id']), 204)
    assert _ok(node.get('/volumes'))['volumes'] == []
    assert _ok(node.get('/snapshots/' + snap['id']))['volume_id'] is None


@pytest.mark.parametrize('provisioning', ['thin', 'thick'])
def test_pool_capacity_follows_volumes(node, provisioning):
    before = _ok(node.get('/pools/default'))
    vol = _create(node, 'cap', size=256 * MiB, provisioning=provisioning)
    during = _ok(node.get('/pools/default'))
    assert during['provisioned'] == before['provisioned'] + 256 * MiB
    if provisioning == 'thick':
        assert during['free'] == before['free'] - 256 * MiB
    else:
        assert during['free'] == before['free']
    stats = _ok(node.get('/node'))['stats']
    assert stats['volumes'] == 1
    assert stats['capacity']['provisioned'] == during['provisioned']
    _ok(node.request('DELETE', '/volumes/' + vol['id']), 204)
    after = _ok(node.get('/pools/default'))
    assert (after['free'], after['provisioned']) == \
        (before['free'], before['provisioned'])


def test_provisioning_changes_in_place_and_a_refusal_undoes_all(node):
    vol = _create(node, 'flex', size=256 * MiB)
    with Attached(node, vol['id']) as c:
        c.pwrite(b'p' * MiB, 0)
    before = _ok(node.get('/pools/default'))
    thick = _ok(node.request('PATCH', '/volumes/' + vol['id'],
                             json={'provisioning': 'thick'}))
    assert thick['provisioning'] == 'thick'
    pool = _ok(node.get('/pools/default'))
    assert pool['thick_reserved'] == before['thick_reserved'] + 255 * MiB
    assert _read(node, vol['id'], MiB) == b'p' * MiB
    # Rename + thin + an extend the pool cannot hold: all refused.
    state = (_ok(node.get('/volumes')), _ok(node.get('/pools/default')))
    r = node.request('PATCH', '/volumes/' + vol['id'], json={
        'name': 'renamed', 'provisioning': 'thin', 'size': 1 << 50})
    assert r.status_code == 507, r.text
    assert r.json()['error']['code'] == 'no_space'
    assert (_ok(node.get('/volumes')), _ok(node.get('/pools/default'))) \
        == state
    _create(node, 'renamed')      # the name was given back
    thin = _ok(node.request('PATCH', '/volumes/' + vol['id'],
                            json={'provisioning': 'thin'}))
    assert thin['provisioning'] == 'thin'
    assert _ok(node.get('/pools/default'))['thick_reserved'] == \
        before['thick_reserved']


def test_snapshots_clones_and_volumes_are_independent(node):
    """As Cinder has them (and tempest's dependency tests check): a
    snapshot that a clone was made from deletes, and the clone reads what
    it did; a volume with a snapshot deletes, and the snapshot stays.
    """
    vol = _create(node, 'base', size=8 * MiB)
    data = os.urandom(2 * MiB)
    with Attached(node, vol['id']) as c:
        c.pwrite(data, MiB)
    snap = _ok(node.post('/snapshots', {'volume_id': vol['id'],
                                        'name': 'base-snap'}), 201)
    clone = _create(node, 'base-clone', size=8 * MiB,
                    source={'snapshot_id': snap['id']})
    with Attached(node, vol['id']) as c:
        c.pwrite(bytes(MiB), MiB)          # the origin moves on

    _ok(node.request('DELETE', '/snapshots/' + snap['id']), 204)
    assert node.get('/snapshots/' + snap['id']).status_code == 404
    assert _read(node, clone['id'], 2 * MiB, MiB) == data
    # Its name is free at once.
    again = _ok(node.post('/snapshots', {'volume_id': vol['id'],
                                         'name': 'base-snap'}), 201)

    _ok(node.request('DELETE', '/volumes/' + vol['id']), 204)
    kept = _ok(node.get('/snapshots/' + again['id']))
    assert kept['volume_id'] is None
    assert _read(node, again['id'], MiB, MiB) == bytes(MiB)
    assert _read(node, again['id'], MiB, 2 * MiB) == data[MiB:]
    assert _read(node, clone['id'], 2 * MiB, MiB) == data

    # When the clone goes, what only it still read is freed.
    _ok(node.request('DELETE', '/volumes/' + clone['id']), 204)
    _ok(node.request('DELETE', '/snapshots/' + again['id']), 204)
    pool = _ok(node.get('/pools/default'))
    assert (pool['volumes'], pool['snapshots']) == (0, 0)
    report = _ok(node.post('/pools/default/check'))
    assert report['ok'], report
    assert report['stats']['hidden_snapshots'] == 0
