"""The management API's token check, on every documented operation.

Two real nodes, ``a`` and ``b``, each with its own token. Every operation
of openapi.yaml is sent to ``a`` with a valid request (real ids, a body
valid per the document) but without ``a``'s token: no token, a wrong one,
``b``'s, and near misses of ``a``'s. Each gets 401 ``unauthorized`` in the
documented error shape and leaves ``a`` exactly as it was; the same
request with ``a``'s token then succeeds, so the refusal was the token's.
"""

import uuid

import pytest
import yaml

from tests.functional import apitools


def _last_char_changed(token: str) -> str:
    return token[:-1] + ('0' if token[-1] != '0' else '1')


# How a request can fail to carry node a's token: name -> (a, b) -> the
# keyword arguments of NodeProcess.request.
BAD_TOKENS = {
    'no token': lambda a, b: {'token': ''},
    'an empty token': lambda a, b: {
        'token': '', 'headers': {'X-Auth-Token': ''}},
    'a wrong token': lambda a, b: {'token': uuid.uuid4().hex},
    "another node's token": lambda a, b: {'token': b.token},
    'the token with its last character changed': lambda a, b: {
        'token': _last_char_changed(a.token)},
    'the token without its last character': lambda a, b: {
        'token': a.token[:-1]},
    'the token with one character more': lambda a, b: {
        'token': a.token + 'a'},
    'a non-ASCII token': lambda a, b: {
        'token': (a.token[:-1] + '\u00e9').encode('utf-8')},
    'the token followed by bytes that are not UTF-8': lambda a, b: {
        'token': a.token.encode() + b'\xff'},
    'the token in an Authorization header': lambda a, b: {
        'token': '', 'headers': {'Authorization': 'Bearer ' + a.token}},
}

OPERATIONS = apitools.operations()
GETS = [op['operationId'] for m, _p, op in OPERATIONS if m == 'GET']


@pytest.fixture
def pair(node_factory):
    """Nodes a (with real objects) and b, started side by side."""
    a = node_factory('a', start=False)
    b = node_factory('b', start=False)
    a.start(wait=False)
    b.start(wait=False)
    a.wait_ready()
    b.wait_ready()
    assert a.token != b.token
    return a, b, apitools.populate(a)


def test_every_documented_operation_has_a_valid_request_here():
    # A new operation in openapi.yaml must get a request in this module.
    fake = {role: str(uuid.uuid4()) for role in (
        'volume', 'snapshot', 'clone', 'other', 'other_snapshot', 'spare',
        'spare_snapshot', 'export', 'job')}
    for method, path, op in OPERATIONS:
        op_id = op['operationId']
        if 'requestBody' not in op:
            assert op_id not in apitools.BODIES, op_id
            continue
        assert op_id in apitools.BODIES, 'no body for %s %s' % (method, path)
        schema = op['requestBody']['content']['application/json']['schema']
        _method, _path, kwargs = apitools.request_of(op_id, fake)
        errors = apitools.schema_errors(schema, kwargs['json'])
        assert not errors, (op_id, errors)


@pytest.mark.parametrize('op_id', apitools.operation_ids())
def test_a_request_without_the_node_token_is_refused_and_changes_nothing(
        pair, op_id):
    a, b, ids = pair
    method, path, kwargs = apitools.request_of(op_id, ids)
    for what, bad in BAD_TOKENS.items():
        before = apitools.state(a)
        call = dict(kwargs, **bad(a, b))
        resp = a.request(method, path, **call)
        try:
            apitools.assert_error(resp, 401, 'unauthorized', 'token')
        except AssertionError as exc:
            raise AssertionError('%s %s with %s: %s'
                                 % (method, path, what, exc)) from None
        assert apitools.state(a) == before, (
            '%s %s with %s changed the node' % (method, path, what))
    # The same request with the token is accepted: the 401s were the
    # token's doing, not the request's.
    before = apitools.state(a)
    resp = a.request(method, path, **kwargs)
    documented = {int(s) for s in apitools.by_id()[op_id][2]['responses']
                  if s.startswith('2')}
    assert resp.status_code in documented, (resp.status_code, resp.text)
    if op_id in apitools.VISIBLE:
        apitools.wait_for_jobs(a)
        assert apitools.state(a) != before


@pytest.mark.parametrize('op_id', GETS)
def test_the_node_token_works_for_every_get(node, op_id):
    ids = apitools.populate(node)
    method, path, kwargs = apitools.request_of(op_id, ids)
    resp = node.request(method, path, **kwargs)
    assert resp.status_code == 200, resp.text
    content = apitools.by_id()[op_id][2]['responses']['200']['content']
    (media, body), = content.items()
    assert resp.headers['Content-Type'].split(';')[0] == media
    if media == 'application/yaml':
        assert yaml.safe_load(resp.text) == apitools.spec()
        return
    data = resp.json()
    errors = apitools.schema_errors(body['schema'], data)
    assert not errors, errors
    # It is the node's own data: the objects just made are in it.
    if '{' in apitools.by_id()[op_id][1]:
        assert data.get('id', data.get('name')) in (
            list(ids.values()) + ['default'])
    elif op_id in ('listVolumes', 'listSnapshots', 'listExports',
                   'listJobs'):
        (items,) = data.values()
        assert {i['id'] for i in items} & set(ids.values())


@pytest.mark.parametrize('method,path', [
    ('GET', '/no-such-route'),
    ('PUT', '/volumes'),
    ('GET', '/volumes/not-a-uuid'),
])
def test_requests_outside_the_document_need_the_token_too(node, method,
                                                          path):
    # Without the token, the node does not say what exists or is valid.
    resp = node.request(method, path, token='')
    apitools.assert_error(resp, 401, 'unauthorized', 'token')
