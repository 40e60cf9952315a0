"""The API client: typed errors, bounded retries of transient faults only,
idempotent creates, job waiting.

The answers come from a real HTTP server on a real socket
(tests/unit/cannedhttp.py) scripted with what the service sends rarely or
never on purpose; the client against the service itself is tested in
tests/functional.
"""

import logging
import time
import urllib.parse
import uuid

import pytest

from storage_engine import client as client_mod
from storage_engine import errors
from storage_engine.metastore import errors as ms_errors
from tests.unit import cannedhttp
from tests.unit.cannedhttp import error
from tests.unit.cannedhttp import RESET

VID = '0b9f9c7e-6a57-4c6e-9d3c-0d1b4c8f2a11'
VID2 = '5c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e'
JID = '5e0c2f9a-3b1d-4f5e-8a7b-9c6d5e4f3a21'


def _job(state, percent=0.0, err=None):
    return {'id': JID, 'kind': 'flatten', 'volume_id': VID, 'state': state,
            'progress': {'done': int(percent), 'total': 100,
                         'percent': percent},
            'error': err, 'created_at': '2026-01-01T00:00:00Z',
            'finished_at': None if state == 'running' else
            '2026-01-01T00:00:01Z'}


@pytest.fixture
def server():
    s = cannedhttp.CannedServer().start()
    yield s
    s.stop()


def make(url, **kwargs):
    kwargs.setdefault('attempts', 4)
    kwargs.setdefault('deadline', 10.0)
    kwargs.setdefault('timeout', 5.0)
    return client_mod.Client(url, 'secret', **kwargs)


@pytest.fixture
def client(server):
    return make(server.url)


@pytest.fixture
def no_sleep(monkeypatch):
    """Retry waits of zero, for tests that count attempts, not time."""
    monkeypatch.setattr(client_mod, 'MIN_WAIT', 0.0)
    monkeypatch.setattr(client_mod, 'MAX_WAIT', 0.0)


# -- the code -> class table --------------------------------------------------

def _coded(cls=errors.EngineError):
    out = [cls] if 'code' in cls.__dict__ else []
    for sub in cls.__subclasses__():
        out.extend(_coded(sub))
    return out


@pytest.mark.parametrize('cls', _coded(), ids=lambda c: c.code)
def test_every_code_maps_to_its_own_class(cls):
    assert client_mod.error_class(cls.code, 500) is cls


def test_metastore_classes_take_part():
    assert client_mod.error_class('key_exists') is ms_errors.KeyExists
    assert client_mod.error_class('store_unavailable') is \
        ms_errors.StoreUnavailable
    assert issubclass(ms_errors.StoreUnavailable, errors.Unavailable)


def test_a_subclass_that_inherits_a_code_does_not_shadow_its_parent():
    class Quieter(errors.NoSpace):
        pass

    assert client_mod.error_class('no_space') is errors.NoSpace


def test_a_subclass_defined_later_is_found():
    class Later(errors.Busy):
        code = 'later_busy'

    assert client_mod.error_class('later_busy') is Later


@pytest.mark.parametrize('status, cls', [
    (400, errors.InvalidArgument), (401, errors.Unauthorized),
    (404, errors.NotFound), (409, errors.AlreadyExists),
    (503, errors.Unavailable), (507, errors.NoSpace),
    (500, errors.EngineError), (418, errors.EngineError),
])
def test_unknown_codes_map_by_status(status, cls):
    assert client_mod.error_class('from_the_future', status) is cls
    exc = client_mod.make_error('from_the_future', 'msg', {'a': 1}, status)
    assert type(exc) is cls
    assert exc.details == {'a': 1, 'status': status,
                           'code': 'from_the_future'}


# -- typed exceptions from answers --------------------------------------------

@pytest.mark.parametrize('status, code, cls', [
    (400, 'invalid_name', errors.InvalidName),
    (400, 'wrong_kind', errors.WrongKind),
    (401, 'unauthorized', errors.Unauthorized),
    (404, 'volume_not_found', errors.VolumeNotFound),
    (409, 'already_exists', errors.AlreadyExists),
    (409, 'key_exists', ms_errors.KeyExists),
    (409, 'group_locked', errors.GroupLocked),
    (412, 'incarnation_mismatch', errors.IncarnationMismatch),
    (507, 'no_space', errors.NoSpace),
    (500, 'device_error', errors.DeviceError),
])
def test_error_bodies_become_typed_exceptions(server, client, status, code,
                                              cls):
    server.answer('GET', '/volumes/' + VID,
                  (status, error(code, 'it says why', name='v1')))
    with pytest.raises(errors.EngineError) as exc:
        client.volume(VID)
    assert type(exc.value) is cls
    assert str(exc.value) == exc.value.message == 'it says why'
    assert exc.value.details == {'name': 'v1', 'status': status}
    assert len(server.sent()) == 1


def test_a_details_key_named_message_is_kept(server, client):
    body = {'error': {'code': 'busy', 'message': 'busy',
                      'details': {'message': 'x', 'status': 'y'}}}
    server.answer('GET', '/volumes/' + VID, (409, body))
    with pytest.raises(errors.Busy) as exc:
        client.volume(VID)
    # The HTTP status wins over a detail of the same name.
    assert exc.value.details == {'message': 'x', 'status': 409}


@pytest.mark.parametrize('status, cls', [
    (502, errors.EngineError), (404, errors.NotFound),
    (401, errors.Unauthorized), (400, errors.InvalidArgument),
])
def test_a_body_that_is_not_an_api_error_maps_by_status(server, client,
                                                        status, cls):
    server.answer('GET', '/pools', (status, '<html>Bad Gateway</html>'))
    with pytest.raises(errors.EngineError) as exc:
        client.pools()
    assert type(exc.value) is cls
    message = str(exc.value)
    assert 'HTTP %d' % status in message
    assert server.url + '/v1/pools' in message
    assert exc.value.details['status'] == status


def test_a_json_body_of_another_shape_maps_by_status(server, client):
    server.answer('GET', '/pools', (409, {'message': 'nope'}))
    with pytest.raises(errors.AlreadyExists, match='HTTP 409'):
        client.pools()


# -- what is retried, and how much --------------------------------------------

@pytest.mark.parametrize('status, code', [
    (400, 'invalid_argument'), (404, 'not_found'), (409, 'busy'),
    (500, 'engine_error'), (401, 'unauthorized'), (507, 'no_space'),
])
def test_answers_other_than_503_are_not_retried(server, client, no_sleep,
                                                status, code):
    server.answer('POST', '/volumes', (status, error(code)))
    with pytest.raises(errors.EngineError):
        client.create_volume('v1', 1 << 30)
    assert len(server.sent('POST', '/volumes')) == 1


def test_503_is_retried_until_an_answer(server, client, caplog):
    server.answer('GET', '/pools', (503, error('unavailable', 'starting')),
                  (503, error('store_unavailable', 'etcd down')),
                  (200, {'pools': [{'name': 'default'}]}))
    with caplog.at_level(logging.WARNING, 'storage_engine.client'):
        assert client.pools() == [{'name': 'default'}]
    assert len(server.sent('GET', '/pools')) == 3
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2
    assert 'HTTP 503' in retries[0] and '/v1/pools' in retries[0]
    assert 'attempt 2 of 4' in retries[0]


def test_503_until_the_attempts_run_out(server, no_sleep):
    server.answer('GET', '/ready',
                  (503, error('store_unavailable', 'etcd is down')))
    with pytest.raises(ms_errors.StoreUnavailable) as exc:
        make(server.url, attempts=3).ready()
    assert str(exc.value) == 'etcd is down'
    assert exc.value.details['status'] == 503
    assert len(server.sent()) == 3


def test_connection_refused_is_retried_then_unavailable(caplog):
    url = 'http://127.0.0.1:%d' % cannedhttp.closed_port()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, 'storage_engine.client'):
        with pytest.raises(errors.Unavailable) as exc:
            make(url, attempts=3).pools()
    assert str(exc.value) == \
        'storage node at %s is unreachable: connection refused' % url
    assert exc.value.details['url'] == url + '/v1/pools'
    # Three attempts: two retries logged, with backoff between them.
    assert len(caplog.records) == 2
    assert all('connection refused' in r.getMessage()
               for r in caplog.records)
    elapsed = time.monotonic() - start
    assert 2 * client_mod.MIN_WAIT <= elapsed < 2 * client_mod.MAX_WAIT + 1


def test_the_deadline_bounds_the_retries_of_a_dead_node(caplog):
    url = 'http://127.0.0.1:%d' % cannedhttp.closed_port()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, 'storage_engine.client'):
        with pytest.raises(errors.Unavailable):
            make(url, attempts=1000, deadline=1.0).volumes()
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + 0.5
    assert 2 <= len(caplog.records) < 999


def test_the_deadline_bounds_the_retries_of_503(server):
    server.answer('GET', '/volumes', (503, error('unavailable')))
    start = time.monotonic()
    with pytest.raises(errors.Unavailable):
        make(server.url, attempts=1000, deadline=1.0).volumes()
    assert time.monotonic() - start < 1.0 + 0.5
    assert 2 <= len(server.sent()) < 1000


def test_a_slow_answer_is_not_retried(server):
    server.answer('GET', '/node', (200, {'name': 'n'}, 1.0))
    with pytest.raises(errors.Unavailable, match='did not answer'):
        make(server.url, timeout=0.2).node()
    assert len(server.sent()) == 1


def test_a_reset_connection_is_retried(server, client, no_sleep):
    server.answer('GET', '/jobs', RESET, (200, {'jobs': []}))
    assert client.jobs() == []
    assert len(server.sent()) == 2


def test_a_tls_failure_is_not_retried(server, no_sleep):
    # An https client on a plain-HTTP port: the handshake fails, and it
    # would fail the same way every time.
    url = server.url.replace('http:', 'https:')
    with pytest.raises(errors.Unavailable, match='TLS error'):
        make(url).pools()
    assert len(server.sent()) <= 1


# -- idempotency --------------------------------------------------------------

def test_a_retried_create_sends_the_same_id(server, client, no_sleep):
    volume = {'id': 'x', 'name': 'v1'}
    server.answer('POST', '/volumes', (503, error('unavailable')), RESET,
                  (201, volume))
    assert client.create_volume('v1', 1 << 30) == volume
    bodies = [r.json() for r in server.sent('POST', '/volumes')]
    assert len(bodies) == 3
    assert bodies[0] == bodies[1] == bodies[2]
    assert uuid.UUID(bodies[0]['id'])
    # One create, one incarnation, however many times it is sent.
    assert bodies[0] == {'id': bodies[0]['id'], 'name': 'v1',
                         'size': 1 << 30,
                         'incarnation': bodies[0]['incarnation']}
    assert client.issued.sent('volume', bodies[0]['id']) == \
        [bodies[0]['incarnation']]


@pytest.mark.parametrize('call, path, body', [
    (lambda c: c.create_volume('c1', 512, pool='p', provisioning='thick',
                               source_snapshot_id='s', id='i'),
     '/volumes', {'id': 'i', 'name': 'c1', 'size': 512, 'pool': 'p',
                  'provisioning': 'thick', 'source': {'snapshot_id': 's'}}),
    (lambda c: c.create_volume('c1', 512, source_volume_id='v', id='i'),
     '/volumes', {'id': 'i', 'name': 'c1', 'size': 512,
                  'source': {'volume_id': 'v'}}),
    (lambda c: c.create_snapshot('v', 's1', id='i'),
     '/snapshots', {'id': 'i', 'name': 's1', 'volume_id': 'v'}),
    (lambda c: c.create_export('v', ['10.0.0.1'], id='i'),
     '/exports', {'id': 'i', 'volume_id': 'v', 'hosts': ['10.0.0.1'],
                  'read_only': False, 'protocol': 'nbd'}),
    (lambda c: c.create_export('v', '10.0.0.1', read_only=True, id='i'),
     '/exports', {'id': 'i', 'volume_id': 'v', 'hosts': ['10.0.0.1'],
                  'read_only': True, 'protocol': 'nbd'}),
], ids=['clone-snapshot', 'clone-volume', 'snapshot', 'export',
        'export-one-host'])
def test_create_bodies(server, client, call, path, body):
    server.answer('POST', path, (201, {'id': 'i'}))
    assert call(client) == {'id': 'i'}
    sent = server.sent('POST', path)[0].json()
    assert len(sent.pop('incarnation')) == 32
    assert sent == body


def test_a_clone_has_one_source(client):
    with pytest.raises(errors.InvalidArgument):
        client.create_volume('c', 512, source_snapshot_id='s',
                             source_volume_id='v')


def test_a_delete_whose_answer_was_lost_is_done(server, client, no_sleep):
    path = '/volumes/' + VID
    server.answer('DELETE', path, RESET, (404, error('volume_not_found')))
    assert client.delete_volume(VID) is None
    assert len(server.sent('DELETE', path)) == 2


# -- incarnations (storage_engine/incarnation.py) -----------------------------

def _incarnations(request) -> list:
    return urllib.parse.parse_qs(request.query).get('incarnation', [])


@pytest.mark.parametrize('kind, create, delete', [
    ('volumes', lambda c: c.create_volume('v', 512, id=VID),
     lambda c: c.delete_volume(VID)),
    ('snapshots', lambda c: c.create_snapshot(VID2, 's', id=VID),
     lambda c: c.delete_snapshot(VID)),
    ('exports', lambda c: c.create_export(VID2, ['10.0.0.1'], id=VID),
     lambda c: c.delete_export(VID)),
], ids=['volume', 'snapshot', 'export'])
def test_a_delete_names_the_incarnations_its_client_created(
        server, client, kind, create, delete):
    server.answer('POST', '/' + kind, (201, {'id': VID}),
                  (200, {'id': VID}))
    server.answer('DELETE', '/%s/%s' % (kind, VID), (204, None),
                  (204, None))
    create(client)
    create(client)
    delete(client)
    tokens = [r.json()['incarnation'] for r in server.sent('POST',
                                                           '/' + kind)]
    assert len(set(tokens)) == 2
    assert sorted(_incarnations(server.sent('DELETE')[0])) == sorted(tokens)
    # Done: the next delete (of a later create by another client, say)
    # names nothing this client no longer holds.
    delete(client)
    assert _incarnations(server.sent('DELETE')[1]) == []


def test_a_delete_names_only_creates_made_before_it(server, client,
                                                    no_sleep):
    """The tokens are those of the creates sent before the delete was asked
    for: a create sent while the delete is retrying (Cinder's rescheduled
    create) is not named by it, so the delete cannot remove it.
    """
    server.answer('POST', '/volumes', (201, {'id': VID}), (200, {'id': VID}))
    server.answer('DELETE', '/volumes/' + VID, (503, error('unavailable')),
                  (412, error('incarnation_mismatch')))
    client.create_volume('v', 512, id=VID)
    first = client.issued.sent('volume', VID)
    real = client.session.request
    created = []

    def request(method, url, **kwargs):
        response = real(method, url, **kwargs)
        if method == 'DELETE' and not created:
            created.append(client.create_volume('v', 512, id=VID))
        return response

    client.session.request = request
    with pytest.raises(errors.IncarnationMismatch):
        client.delete_volume(VID)
    deletes = server.sent('DELETE')
    assert len(deletes) == 2
    assert [_incarnations(r) for r in deletes] == [first, first]
    assert len(client.issued.sent('volume', VID)) == 2


def test_a_delete_without_creates_names_none(server, client):
    server.answer('DELETE', '/volumes/' + VID, (204, None))
    client.delete_volume(VID, remove_exports=True)
    query = urllib.parse.parse_qs(server.sent('DELETE')[0].query)
    assert query == {'remove_exports': ['true']}


def test_a_mismatch_is_its_own_error(server, client):
    server.answer('POST', '/volumes', (201, {'id': VID}))
    client.create_volume('v', 512, id=VID)
    server.answer('DELETE', '/volumes/' + VID,
                  (412, error('incarnation_mismatch')))
    with pytest.raises(errors.IncarnationMismatch):
        client.delete_volume(VID)
    # Not done: the tokens stay, for a delete asked for later.
    assert client.issued.sent('volume', VID)


def test_a_delete_of_nothing_is_not_found(server, client):
    server.answer('DELETE', '/snapshots/' + VID,
                  (404, error('snapshot_not_found')))
    with pytest.raises(errors.SnapshotNotFound):
        client.delete_snapshot(VID)


def test_flatten_is_not_repeated_once_sent(server, client, no_sleep):
    path = '/volumes/%s/flatten' % VID
    server.answer('POST', path, RESET, (202, _job('running')))
    with pytest.raises(errors.Unavailable, match='may or may not'):
        client.flatten_volume(VID)
    assert len(server.sent('POST', path)) == 1


def test_a_pool_check_is_retried_on_a_reset(server, client, no_sleep):
    # It changes nothing: safe to send again.
    report = {'pool': 'p 1', 'ok': True}
    server.answer('POST', '/pools/p%201/check', RESET, (200, report))
    assert client.check_pool('p 1') == report
    assert len(server.sent('POST', '/pools/p%201/check')) == 2


def test_flatten_is_retried_on_503(server, client, no_sleep):
    path = '/volumes/%s/flatten' % VID
    server.answer('POST', path, (503, error('unavailable')),
                  (202, _job('running')))
    assert client.flatten_volume(VID)['state'] == 'running'
    assert len(server.sent('POST', path)) == 2


# -- requests on the wire -----------------------------------------------------

def test_token_and_paths(server):
    server.answer('GET', '/volumes', (200, {'volumes': [{'id': 1}]}))
    c = make(server.url + '/')
    assert c.volumes(pool='p1', name='v+1') == [{'id': 1}]
    assert c.volumes() == [{'id': 1}]
    first, second = server.sent()
    assert first.headers['X-Auth-Token'] == 'secret'
    assert urllib.parse.parse_qs(first.query) == {'pool': ['p1'],
                                                  'name': ['v+1']}
    assert second.query == ''


def test_no_token_sends_no_header(server):
    server.answer('GET', '/node', (401, error('unauthorized', 'no token')))
    with pytest.raises(errors.Unauthorized, match='no token'):
        client_mod.Client(server.url, None).node()
    assert 'X-Auth-Token' not in server.sent()[0].headers


def test_ids_are_quoted_into_paths(server, client):
    server.answer('GET', '/pools/a%2Fb', (200, {'name': 'a/b'}))
    assert client.pool('a/b') == {'name': 'a/b'}


@pytest.mark.parametrize('call, method, path, body', [
    (lambda c: c.extend_volume(VID, 4096), 'PATCH', '/volumes/' + VID,
     {'size': 4096}),
    (lambda c: c.rename_volume(VID, 'n2'), 'PATCH', '/volumes/' + VID,
     {'name': 'n2'}),
    (lambda c: c.revert_volume(VID, 's'), 'POST',
     '/volumes/%s/revert' % VID, {'snapshot_id': 's'}),
])
def test_volume_changes(server, client, call, method, path, body):
    server.answer(method, path, (200, {'id': VID}))
    assert call(client) == {'id': VID}
    assert server.sent(method, path)[0].json() == body


def test_list_and_get_methods(server, client):
    for path, key in (('/snapshots', 'snapshots'), ('/exports', 'exports'),
                      ('/jobs', 'jobs'), ('/pools', 'pools')):
        server.answer('GET', path, (200, {key: [{'id': key}]}))
    assert client.snapshots(volume_id=VID) == [{'id': 'snapshots'}]
    assert client.exports(volume_id=VID) == [{'id': 'exports'}]
    assert client.jobs() == [{'id': 'jobs'}]
    assert [r.query for r in server.sent()] == ['volume_id=' + VID] * 2 + \
        ['']
    server.answer('GET', '/openapi.yaml', (200, 'openapi: 3.0.3\n'))
    assert client.openapi() == 'openapi: 3.0.3\n'


def test_ca_file_verifies_https():
    assert make('https://node:8790', ca_file='/etc/ca.pem').verify == \
        '/etc/ca.pem'
    assert make('https://node:8790').verify is True


# -- jobs ---------------------------------------------------------------------

def test_wait_job_reports_progress_until_done(server, client):
    server.answer('GET', '/jobs/' + JID, (200, _job('running', 10.0)),
                  (200, _job('running', 60.0)),
                  (200, _job('succeeded', 100.0)))
    seen = []
    job = client.wait_job(JID, poll=0.01, progress=seen.append)
    assert job['state'] == 'succeeded'
    assert [j['progress']['percent'] for j in seen] == [10.0, 60.0, 100.0]


def test_a_failed_job_raises_its_error(server, client):
    server.answer('GET', '/jobs/' + JID, (200, _job(
        'failed', 40.0, {'code': 'no_space', 'message': 'pool is full'})))
    with pytest.raises(errors.NoSpace, match='pool is full') as exc:
        client.wait_job(JID, poll=0.01)
    assert exc.value.details == {'job_id': JID, 'volume_id': VID}
    job = client.wait_job(JID, poll=0.01, raise_on_failure=False)
    assert job['error']['code'] == 'no_space'


def test_wait_job_gives_up_after_its_timeout(server, client):
    server.answer('GET', '/jobs/' + JID, (200, _job('running', 5.0)))
    start = time.monotonic()
    with pytest.raises(client_mod.JobTimeout, match='still running') as exc:
        client.wait_job(JID, poll=0.05, timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 1.5
    assert exc.value.details == {'job_id': JID}
    assert isinstance(exc.value, errors.EngineError)
