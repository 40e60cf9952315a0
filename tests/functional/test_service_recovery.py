"""A node that crashed between the steps of a change finishes or undoes it
on its next start, before it serves anything.

Each test stops the node, puts the metadata store and the volume group in
the state a crash at one step leaves (with the real store and the real
group, offline), starts the node again and checks what a user sees.
"""

import time
import uuid

from storage_engine import metastore
from storage_engine import units
from storage_engine.volstore import group as group_mod

MiB = units.Mi


def _ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def _offline(node):
    """The node's store and group, opened while the node is stopped."""
    node.stop()
    store = metastore.open_store(node.metadata_url)
    vg = group_mod.VolumeGroup.open(str(node.state / 'default.pv0'))
    return store, vg


def _record(name, state, **extra):
    return dict({'node': 'node1', 'pool': 'default', 'kind': 'volume',
                 'name': name, 'state': state, 'source': None,
                 'request': None}, **extra)


def test_create_interrupted_before_the_group_is_undone(node):
    store, vg = _offline(node)
    ident = str(uuid.uuid4())
    store.create('volumes/' + ident, _record('half', 'creating'))
    store.create('names/half', {'id': ident, 'node': 'node1'})
    store.close()
    vg.close()
    node.start()
    assert node.get('/volumes/' + ident).status_code == 404
    # The name is free again.
    _ok(node.post('/volumes', {'name': 'half', 'size': MiB}), 201)


def test_create_interrupted_after_the_group_is_finished(node):
    store, vg = _offline(node)
    ident = str(uuid.uuid4())
    store.create('volumes/' + ident, _record('made', 'creating'))
    store.create('names/made', {'id': ident, 'node': 'node1'})
    vg.create_volume('made', 8 * MiB, volume_id=ident)
    store.close()
    vg.close()
    node.start()
    vol = _ok(node.get('/volumes/' + ident))
    assert (vol['name'], vol['status'], vol['size']) == \
        ('made', 'available', 8 * MiB)


def test_delete_interrupted_is_finished(node):
    vol = _ok(node.post('/volumes', {'name': 'doomed', 'size': MiB}), 201)
    store, vg = _offline(node)
    rec, rev = store.get('volumes/' + vol['id'])
    store.put('volumes/' + vol['id'], dict(rec, state='deleting'))
    store.close()
    vg.close()
    node.start()
    assert node.get('/volumes/' + vol['id']).status_code == 404
    assert _ok(node.get('/pools/default'))['volumes'] == 0
    _ok(node.post('/volumes', {'name': 'doomed', 'size': MiB}), 201)


def test_rename_interrupted_after_the_group_takes_the_groups_name(node):
    vol = _ok(node.post('/volumes', {'name': 'before', 'size': MiB}), 201)
    store, vg = _offline(node)
    store.create('names/after', {'id': vol['id'], 'node': 'node1'})
    vg.rename(vol['id'], 'after')
    store.close()
    vg.close()
    node.start()
    assert _ok(node.get('/volumes/' + vol['id']))['name'] == 'after'
    # The old name's claim was dropped: it can be used again.
    _ok(node.post('/volumes', {'name': 'before', 'size': MiB}), 201)
    r = node.post('/volumes', {'name': 'after', 'size': MiB})
    assert r.status_code == 409


def test_rename_interrupted_before_the_group_drops_the_new_claim(node):
    vol = _ok(node.post('/volumes', {'name': 'keep', 'size': MiB}), 201)
    store, vg = _offline(node)
    store.create('names/wanted', {'id': vol['id'], 'node': 'node1'})
    store.close()
    vg.close()
    node.start()
    assert _ok(node.get('/volumes/' + vol['id']))['name'] == 'keep'
    _ok(node.post('/volumes', {'name': 'wanted', 'size': MiB}), 201)


def test_volume_made_offline_is_adopted(node):
    store, vg = _offline(node)
    made = vg.create_volume('offline', 4 * MiB)
    store.close()
    vg.close()
    node.start()
    vol = _ok(node.get('/volumes/' + made.id))
    assert (vol['name'], vol['status']) == ('offline', 'available')
    assert node.post('/volumes', {'name': 'offline', 'size': MiB}
                     ).status_code == 409


def test_flatten_interrupted_by_a_crash_is_resumed(node):
    vol = _ok(node.post('/volumes', {'name': 'o', 'size': 64 * MiB}), 201)
    snap = _ok(node.post('/snapshots', {'volume_id': vol['id'],
                                        'name': 'o-snap'}), 201)
    clone = _ok(node.post('/volumes', {
        'name': 'c', 'size': 64 * MiB,
        'source': {'snapshot_id': snap['id']}}), 201)
    store, vg = _offline(node)
    job_id = str(uuid.uuid4())
    # What a node killed during the job leaves: the job's record.
    store.create('jobs/' + job_id, {'node': 'node1', 'kind': 'flatten',
                                    'volume_id': clone['id'],
                                    'created_at': time.time()})
    store.close()
    vg.close()
    node.start()
    deadline = time.monotonic() + 60
    while True:
        job = _ok(node.get('/jobs/' + job_id))
        if job['state'] != 'running':
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job['state'] == 'succeeded', job
    assert _ok(node.get('/volumes/' + clone['id']))['has_parent'] is False
    # A finished job is not run again by the next start.
    node.restart()
    assert node.get('/jobs/' + job_id).status_code == 404


def test_export_of_a_volume_that_is_gone_is_dropped(node):
    vol = _ok(node.post('/volumes', {'name': 'v', 'size': MiB}), 201)
    exp = _ok(node.post('/exports', {'volume_id': vol['id'],
                                     'hosts': ['127.0.0.1']}), 201)
    store, vg = _offline(node)
    # Lost from the group and the store together (a restore, say).
    vg.delete_volume(vol['id'])
    store.delete('volumes/' + vol['id'])
    store.close()
    vg.close()
    node.start()
    assert node.get('/exports/' + exp['id']).status_code == 404
    assert _ok(node.get('/exports'))['exports'] == []
