"""A delete meant for one incarnation of an id never removes a later one.

Through the API of a real node: creates carry an incarnation, a repeated
create makes the object the repeat's, and a delete naming incarnations
deletes only those (storage_engine/incarnation.py). The race this closes,
a delete retrying while Cinder's rescheduled create of the same id lands
first, is played with two clients of the library, the way one driver
sends them.
"""

import uuid

import pytest

from storage_engine import errors
from storage_engine.nbd import client as nbd_client
from storage_engine import units

MiB = units.Mi


def _ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def _error(response, status, code):
    assert response.status_code == status, response.text
    assert response.json()['error']['code'] == code, response.text
    return response.json()['error']


def _delete(node, path, *tokens, **params):
    query = [('incarnation', t) for t in tokens] + sorted(params.items())
    return node.request('DELETE', path, params=query)


def test_a_repeated_create_makes_the_volume_the_repeats(node):
    vid = str(uuid.uuid4())
    body = {'id': vid, 'name': 'v1', 'size': MiB, 'incarnation': 'first'}
    assert _ok(node.post('/volumes', body), 201)['incarnation'] == 'first'
    again = _ok(node.post('/volumes', dict(body, incarnation='second')))
    assert again['incarnation'] == 'second'
    assert _ok(node.get('/volumes/' + vid))['incarnation'] == 'second'

    # The delete meant for the first incarnation finds the second: refused,
    # and the volume is still there.
    err = _error(_delete(node, '/volumes/' + vid, 'first'), 412,
                 'incarnation_mismatch')
    assert 'created again' in err['message']
    assert _ok(node.get('/volumes/' + vid))['name'] == 'v1'
    # A delete naming the one it finds deletes it.
    _ok(_delete(node, '/volumes/' + vid, 'first', 'second'), 204)
    _error(node.get('/volumes/' + vid), 404, 'volume_not_found')


def test_a_delete_naming_none_deletes_any_incarnation(node):
    vid = str(uuid.uuid4())
    _ok(node.post('/volumes', {'id': vid, 'name': 'v1', 'size': MiB,
                               'incarnation': 'x'}), 201)
    _ok(_delete(node, '/volumes/' + vid), 204)


def test_a_volume_made_without_incarnation_matches_any_delete(node):
    vid = str(uuid.uuid4())
    assert _ok(node.post('/volumes', {'id': vid, 'name': 'v1',
                                      'size': MiB}), 201)['incarnation'] \
        is None
    _ok(_delete(node, '/volumes/' + vid, 'whatever'), 204)


def test_snapshot_deletes_are_conditional_too(node):
    vol = _ok(node.post('/volumes', {'name': 'v1', 'size': MiB}), 201)
    sid = str(uuid.uuid4())
    body = {'id': sid, 'name': 's1', 'volume_id': vol['id'],
            'incarnation': 'one'}
    _ok(node.post('/snapshots', body), 201)
    _ok(node.post('/snapshots', dict(body, incarnation='two')))
    _error(_delete(node, '/snapshots/' + sid, 'one'), 412,
           'incarnation_mismatch')
    assert _ok(node.get('/snapshots/' + sid))['incarnation'] == 'two'
    _ok(_delete(node, '/snapshots/' + sid, 'two'), 204)


def _nbd_size(export) -> int:
    conn = export['connection']
    with nbd_client.NBDClient.connect(conn['export_name'], conn['host'],
                                      conn['port']) as client:
        return client.size


def test_a_late_detach_leaves_the_hosts_new_attachment(node):
    """Detach (delete of the export) retrying while the same host attaches
    again: the attach lands first, the late delete must not cut it.
    """
    vol = _ok(node.post('/volumes', {'name': 'v1', 'size': 4 * MiB}), 201)
    eid = str(uuid.uuid4())
    body = {'id': eid, 'volume_id': vol['id'], 'hosts': ['127.0.0.1'],
            'incarnation': 'attach-1'}
    _ok(node.post('/exports', body), 201)
    again = _ok(node.post('/exports', dict(body, incarnation='attach-2')))
    assert again['incarnation'] == 'attach-2'
    _error(_delete(node, '/exports/' + eid, 'attach-1'), 412,
           'incarnation_mismatch')
    # Still served to the host.
    assert _nbd_size(again) == 4 * MiB
    _ok(_delete(node, '/exports/' + eid, 'attach-2'), 204)
    _error(node.get('/exports/' + eid), 404, 'not_found')


def test_remove_exports_only_when_the_delete_applies(node):
    vid = str(uuid.uuid4())
    _ok(node.post('/volumes', {'id': vid, 'name': 'v1', 'size': 4 * MiB,
                               'incarnation': 'old'}), 201)
    _ok(node.post('/volumes', {'id': vid, 'name': 'v1', 'size': 4 * MiB,
                               'incarnation': 'new'}))
    export = _ok(node.post('/exports', {'volume_id': vid,
                                        'hosts': ['127.0.0.1']}), 201)
    # Without remove_exports an exported volume is refused...
    _error(_delete(node, '/volumes/' + vid, 'new'), 409, 'busy')
    # ...and a delete meant for the old incarnation touches nothing, not
    # even the export of the new one.
    _error(_delete(node, '/volumes/' + vid, 'old', remove_exports='true'),
           412, 'incarnation_mismatch')
    assert _nbd_size(export) == 4 * MiB
    _ok(_delete(node, '/volumes/' + vid, 'new', remove_exports='true'),
        204)
    assert _ok(node.get('/exports'))['exports'] == []
    _error(node.get('/volumes/' + vid), 404, 'volume_not_found')


@pytest.mark.parametrize('query', [
    [('incarnation', 'has space')], [('incarnation', '')],
    [('incarnation', 'x' * 65)], [('remove_exports', 'yes')]])
def test_bad_incarnations_are_refused(node, query):
    vol = _ok(node.post('/volumes', {'name': 'v1', 'size': MiB}), 201)
    _error(node.request('DELETE', '/volumes/' + vol['id'], params=query),
           400, 'invalid_argument')
    _ok(node.get('/volumes/' + vol['id']))


def test_the_rescheduled_create_survives_the_failed_attempts_delete(node):
    """The race of Cinder's reschedule, with the library: one client (one
    driver) creates, its delete of the failed attempt is asked for, the
    rescheduled create of the same id lands before that delete, and the
    delete then finds a later incarnation and deletes nothing.
    """
    client = node.client()
    vid = str(uuid.uuid4())
    client.create_volume('v1', MiB, id=vid)          # attempt 1
    meant = client.issued.sent('volume', vid)        # the delete's aim
    client.create_volume('v1', MiB, id=vid)          # the reschedule
    with pytest.raises(errors.IncarnationMismatch):
        client._request('DELETE', '/volumes/' + vid,
                        params={'incarnation': meant})
    assert client.volume(vid)['name'] == 'v1'
    # Cinder's later delete of the volume (the user's) names both.
    client.delete_volume(vid)
    with pytest.raises(errors.VolumeNotFound):
        client.volume(vid)
