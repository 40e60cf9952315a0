"""Bad input to the management API: refused with a clear 4xx, harmlessly.

Every request here is wrong in one way. The node answers with the
documented error shape, the status and code that say what kind of wrong
it is (a 4xx, or 507 when the pool has not the space asked for), and a
message that names the problem (the field, the value, the object); and it
changes nothing: the node's volumes, snapshots, exports, pools, jobs and
metadata-store keys are the same before and after.

The refusals share one node (module scope) with real objects on it
(apitools.populate); each test compares the node's state around its own
request. The idempotent creates, which do change the node, get their own.
"""

import json
import uuid

import pytest

from tests.fixtures import node as node_mod
from tests.functional import apitools

MiB = apitools.MiB
GiB = 1024 * MiB
MAX_SIZE = 1152921504606846976
UNKNOWN = '00000000-0000-4000-8000-000000000000'
JSON = {'Content-Type': 'application/json'}


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
    """One node with real objects; ``.ids`` names them by role."""
    node = node_mod.NodeProcess(tmp_path_factory.mktemp('bad-input'), 'bad')
    node.start()
    try:
        node.ids = apitools.populate(node)
        # Thin, twice the pool: it cannot turn thick.
        node.ids['big'] = apitools.create(node, '/volumes', {
            'name': 'big-1', 'size': 8 * GiB, 'provisioning': 'thin'})['id']
        yield node
    finally:
        node.stop()


def refused(node, method: str, path: str, status: int, code: str,
            words=(), **kwargs) -> dict:
    """Send one bad request (``<role>`` in it stands for a real id) and
    check that it is refused as expected and changes nothing.
    """
    path = apitools.fill(path, node.ids)
    if 'json' in kwargs:
        kwargs['json'] = apitools.fill(kwargs['json'], node.ids)
    before = apitools.state(node)
    resp = node.request(method, path, **kwargs)
    err = apitools.assert_error(resp, status, code,
                                *apitools.fill(list(words), node.ids))
    assert apitools.state(node) == before, (
        '%s %s changed the node although it was refused' % (method, path))
    return err


def case(name, method, path, status, code, words=(), **kwargs):
    return pytest.param(method, path, status, code, words, kwargs, id=name)


def body_operations() -> list[str]:
    """The operationId of every operation of the document with a body."""
    return [op['operationId'] for _m, _p, op in apitools.operations()
            if 'requestBody' in op]


# -- the body as a whole, for every operation that takes one -----------------

BODY_DEFECTS = {
    'malformed JSON': (
        lambda body: {'data': b'{"name": "x", ', 'headers': JSON},
        400, 'invalid_argument', ['not JSON']),
    'an empty body': (
        lambda body: {'data': b'', 'headers': JSON},
        400, 'invalid_argument', ['not JSON']),
    'a JSON array': (
        lambda body: {'json': [body]},
        400, 'invalid_argument', ['body', 'object']),
    'a JSON string': (
        lambda body: {'json': json.dumps(body)},
        400, 'invalid_argument', ['body', 'object']),
    'a JSON number': (
        lambda body: {'json': 512},
        400, 'invalid_argument', ['body', 'object']),
    'JSON null': (
        lambda body: {'data': b'null', 'headers': JSON},
        400, 'invalid_argument', ['body', 'object']),
    'JSON nested 30000 deep': (
        lambda body: {'data': '[' * 30000 + ']' * 30000, 'headers': JSON},
        400, 'invalid_argument', ['nested too deeply']),
    'a body that is not UTF-8': (
        lambda body: {'data': b'{"name": "caf\xe9"}', 'headers': JSON},
        400, 'invalid_argument', ['UTF-8']),
    'text/plain': (
        lambda body: {'data': json.dumps(body),
                      'headers': {'Content-Type': 'text/plain'}},
        415, 'unsupported_media_type', ['application/json']),
    'a form': (
        lambda body: {'data': {'x': '1'}},
        415, 'unsupported_media_type', ['application/json']),
    'no content type': (
        lambda body: {'data': json.dumps(body).encode()},
        415, 'unsupported_media_type', ['application/json']),
    'a body over 64 KiB': (
        lambda body: {'data': json.dumps(body) + ' ' * (64 * 1024),
                      'headers': JSON},
        413, 'request_too_large', ['too large']),
    'an unknown field': (
        lambda body: {'json': dict(body, colour='red')},
        400, 'invalid_argument', ['colour']),
}


@pytest.mark.parametrize('defect', list(BODY_DEFECTS))
@pytest.mark.parametrize('op_id', body_operations())
def test_a_bad_body_is_refused(shared, op_id, defect):
    method, path, kwargs = apitools.request_of(op_id, shared.ids)
    make, status, code, words = BODY_DEFECTS[defect]
    refused(shared, method, path, status, code, words,
            **make(kwargs['json']))


# -- fields ------------------------------------------------------------------

VOLUME = {'name': 'new-vol', 'size': MiB}
FIELD_CASES = [
    # POST /volumes
    case('volume without name', 'POST', '/volumes', 400, 'invalid_argument',
         ['name', 'required'], json={'size': MiB}),
    case('volume without size', 'POST', '/volumes', 400, 'invalid_argument',
         ['size', 'required'], json={'name': 'new-vol'}),
    case('size as a string', 'POST', '/volumes', 400, 'invalid_argument',
         ['size', 'integer'], json=dict(VOLUME, size=str(MiB))),
    case('size as a bool', 'POST', '/volumes', 400, 'invalid_argument',
         ['size', 'integer'], json=dict(VOLUME, size=True)),
    case('size as a fraction', 'POST', '/volumes', 400, 'invalid_argument',
         ['size'], json=dict(VOLUME, size=MiB + 0.5)),
    case('size as a whole float', 'POST', '/volumes', 400, 'invalid_size',
         ['size'], json=dict(VOLUME, size=float(MiB))),
    case('size null', 'POST', '/volumes', 400, 'invalid_argument',
         ['size'], json=dict(VOLUME, size=None)),
    case('negative size', 'POST', '/volumes', 400, 'invalid_argument',
         ['size'], json=dict(VOLUME, size=-512)),
    case('size zero', 'POST', '/volumes', 400, 'invalid_argument',
         ['size'], json=dict(VOLUME, size=0)),
    case('size not a multiple of 512', 'POST', '/volumes', 400,
         'invalid_argument', ['size', 'multiple of 512'],
         json=dict(VOLUME, size=MiB + 100)),
    case('size over the maximum', 'POST', '/volumes', 400,
         'invalid_argument', ['size', 'maximum'],
         json=dict(VOLUME, size=MAX_SIZE + 512)),
    case('empty name', 'POST', '/volumes', 400, 'invalid_argument',
         ['name'], json=dict(VOLUME, name='')),
    case('name of 129 characters', 'POST', '/volumes', 400,
         'invalid_argument', ['name'], json=dict(VOLUME, name='a' * 129)),
    case('name with a leading dash', 'POST', '/volumes', 400,
         'invalid_argument', ['name', '-vol'],
         json=dict(VOLUME, name='-vol')),
    case('name with a slash', 'POST', '/volumes', 400, 'invalid_argument',
         ['name', 'a/b'], json=dict(VOLUME, name='a/b')),
    case('name with a space', 'POST', '/volumes', 400, 'invalid_argument',
         ['name'], json=dict(VOLUME, name='a b')),
    case('name as a number', 'POST', '/volumes', 400, 'invalid_argument',
         ['name'], json=dict(VOLUME, name=12)),
    case('name that is a UUID', 'POST', '/volumes', 400, 'invalid_name',
         ['name', UNKNOWN, 'UUID'], json=dict(VOLUME, name=UNKNOWN)),
    case('id not a UUID', 'POST', '/volumes', 400, 'invalid_argument',
         ['id', 'vol-7'], json=dict(VOLUME, id='vol-7')),
    case('unknown pool', 'POST', '/volumes', 404, 'not_found',
         ['pool', 'nope'], json=dict(VOLUME, pool='nope')),
    case('empty pool', 'POST', '/volumes', 400, 'invalid_argument',
         ['pool'], json=dict(VOLUME, pool='')),
    case('unknown provisioning', 'POST', '/volumes', 400,
         'invalid_argument', ['provisioning', 'thickest'],
         json=dict(VOLUME, provisioning='thickest')),
    case('empty source', 'POST', '/volumes', 400, 'invalid_argument',
         ['source'], json=dict(VOLUME, source={})),
    case('source with two objects', 'POST', '/volumes', 400,
         'invalid_argument', ['source'],
         json=dict(VOLUME, source={'snapshot_id': '<snapshot>',
                                   'volume_id': '<volume>'})),
    case('source of an unknown kind', 'POST', '/volumes', 400,
         'invalid_argument', ['disk_id'],
         json=dict(VOLUME, source={'disk_id': '<volume>'})),
    case('source snapshot_id not a UUID', 'POST', '/volumes', 400,
         'invalid_argument', ['source/snapshot_id'],
         json=dict(VOLUME, source={'snapshot_id': 'snap-1'})),
    case('source snapshot unknown', 'POST', '/volumes', 404,
         'snapshot_not_found', [UNKNOWN],
         json=dict(VOLUME, source={'snapshot_id': UNKNOWN})),
    case('source volume unknown', 'POST', '/volumes', 404,
         'volume_not_found', [UNKNOWN],
         json=dict(VOLUME, source={'volume_id': UNKNOWN})),
    case('source snapshot that is a volume', 'POST', '/volumes', 400,
         'wrong_kind', ['<volume>', 'not a snapshot'],
         json=dict(VOLUME, source={'snapshot_id': '<volume>'})),
    case('clone in another pool than its source', 'POST', '/volumes', 400,
         'invalid_argument', ['pool', 'other'],
         json=dict(VOLUME, size=4 * MiB, pool='other',
                   source={'snapshot_id': '<snapshot>'})),
    case('existing volume name', 'POST', '/volumes', 409, 'already_exists',
         ['vol-1'], json=dict(VOLUME, name='vol-1')),
    case('existing snapshot name', 'POST', '/volumes', 409,
         'already_exists', ['snap-1'], json=dict(VOLUME, name='snap-1')),
    case('existing id with another body', 'POST', '/volumes', 409,
         'already_exists', ['<volume>'],
         json={'id': '<volume>', 'name': 'vol-1', 'size': 8 * MiB}),
    case('existing snapshot id for a volume', 'POST', '/volumes', 409,
         'already_exists', ['<snapshot>'],
         json=dict(VOLUME, id='<snapshot>')),
    case('thick volume larger than the pool', 'POST', '/volumes', 507,
         'no_space', ['thick'],
         json=dict(VOLUME, size=8 * GiB, provisioning='thick')),
    case('thin volume beyond over-subscription', 'POST', '/volumes', 507,
         'no_space', ['over-subscription'],
         json=dict(VOLUME, size=1024 * GiB, provisioning='thin')),

    # PATCH /volumes/{id}
    case('update with nothing', 'PATCH', '/volumes/<spare>', 400,
         'invalid_argument', ['empty'], json={}),
    case('shrink', 'PATCH', '/volumes/<spare>', 400, 'invalid_size',
         ['shrink', 'spare-1'], json={'size': 512}),
    case('extend to a size not a multiple of 512', 'PATCH',
         '/volumes/<spare>', 400, 'invalid_argument', ['size'],
         json={'size': 2 * MiB + 1}),
    case('extend with a string', 'PATCH', '/volumes/<spare>', 400,
         'invalid_argument', ['size'], json={'size': '2M'}),
    case('extend over the maximum', 'PATCH', '/volumes/<spare>', 400,
         'invalid_argument', ['size', 'maximum'],
         json={'size': MAX_SIZE + 512}),
    case('extend beyond over-subscription', 'PATCH', '/volumes/<spare>',
         507, 'no_space', ['over-subscription'], json={'size': 1024 * GiB}),
    case('rename to an invalid name', 'PATCH', '/volumes/<spare>', 400,
         'invalid_argument', ['name'], json={'name': '-x'}),
    case('rename to a UUID', 'PATCH', '/volumes/<spare>', 400,
         'invalid_name', ['UUID'], json={'name': UNKNOWN}),
    case('rename to an existing name', 'PATCH', '/volumes/<spare>', 409,
         'already_exists', ['vol-1'], json={'name': 'vol-1'}),
    case('extend and rename to an existing name', 'PATCH',
         '/volumes/<spare>', 409, 'already_exists', ['vol-1'],
         json={'name': 'vol-1', 'size': 2 * MiB}),
    case('unknown provisioning in an update', 'PATCH', '/volumes/<spare>',
         400, 'invalid_argument', ['provisioning', 'thickest'],
         json={'provisioning': 'thickest'}),
    case('turn thick beyond the pool', 'PATCH', '/volumes/<big>', 507,
         'no_space', ['big-1', 'thick', 'reserved space'],
         json={'provisioning': 'thick'}),
    case('rename and turn thick beyond the pool', 'PATCH', '/volumes/<big>',
         507, 'no_space', ['thick', 'reserved space'],
         json={'name': 'big-2', 'provisioning': 'thick'}),
    case('rename and extend beyond over-subscription', 'PATCH',
         '/volumes/<spare>', 507, 'no_space', ['over-subscription'],
         json={'name': 'spare-2', 'size': 1024 * GiB}),
    case('rename, turn thick and extend beyond the pool', 'PATCH',
         '/volumes/<spare>', 507, 'no_space', ['thick', 'reserved space'],
         json={'name': 'spare-2', 'provisioning': 'thick', 'size': 8 * GiB}),
    case('update of a snapshot', 'PATCH', '/volumes/<snapshot>', 400,
         'wrong_kind', ['<snapshot>'], json={'size': 8 * MiB}),

    # POST /volumes/{id}/revert and /flatten
    case('revert to a snapshot of another volume', 'POST',
         '/volumes/<other>/revert', 400, 'invalid_argument',
         ['snap-1', 'not a snapshot of', 'other-1'],
         json={'snapshot_id': '<snapshot>'}),
    case('revert to an unknown snapshot', 'POST', '/volumes/<other>/revert',
         404, 'snapshot_not_found', [UNKNOWN], json={'snapshot_id': UNKNOWN}),
    case('revert to a volume', 'POST', '/volumes/<other>/revert', 400,
         'wrong_kind', ['<volume>'], json={'snapshot_id': '<volume>'}),
    case('revert without snapshot_id', 'POST', '/volumes/<other>/revert',
         400, 'invalid_argument', ['snapshot_id', 'required'], json={}),
    case('revert to snapshot_id not a UUID', 'POST',
         '/volumes/<other>/revert', 400, 'invalid_argument',
         ['snapshot_id'], json={'snapshot_id': 'other-snap-1'}),
    case('revert of a snapshot', 'POST', '/volumes/<snapshot>/revert', 400,
         'wrong_kind', ['<snapshot>'], json={'snapshot_id': '<snapshot>'}),
    case('flatten of a snapshot', 'POST', '/volumes/<snapshot>/flatten',
         400, 'wrong_kind', ['<snapshot>']),

    # POST /snapshots
    case('snapshot without volume_id', 'POST', '/snapshots', 400,
         'invalid_argument', ['volume_id', 'required'],
         json={'name': 'new-snap'}),
    case('snapshot without name', 'POST', '/snapshots', 400,
         'invalid_argument', ['name', 'required'],
         json={'volume_id': '<volume>'}),
    case('snapshot of volume_id not a UUID', 'POST', '/snapshots', 400,
         'invalid_argument', ['volume_id'],
         json={'name': 'new-snap', 'volume_id': 'vol-1'}),
    case('snapshot of an unknown volume', 'POST', '/snapshots', 404,
         'volume_not_found', [UNKNOWN],
         json={'name': 'new-snap', 'volume_id': UNKNOWN}),
    case('snapshot of a snapshot', 'POST', '/snapshots', 400, 'wrong_kind',
         ['<snapshot>'], json={'name': 'new-snap', 'volume_id': '<snapshot>'}),
    case('snapshot with an invalid name', 'POST', '/snapshots', 400,
         'invalid_argument', ['name'],
         json={'name': '.snap', 'volume_id': '<volume>'}),
    case('snapshot with an existing name', 'POST', '/snapshots', 409,
         'already_exists', ['vol-1'],
         json={'name': 'vol-1', 'volume_id': '<volume>'}),
    case('snapshot with an existing id and another body', 'POST',
         '/snapshots', 409, 'already_exists', ['<snapshot>'],
         json={'id': '<snapshot>', 'name': 'snap-1',
               'volume_id': '<other>'}),

    # POST /exports
    case('export to a host that is not an IP', 'POST', '/exports', 400,
         'invalid_argument', ['not-an-ip'],
         json={'volume_id': '<spare>', 'hosts': ['not-an-ip']}),
    case('export to an IP out of range', 'POST', '/exports', 400,
         'invalid_argument', ['999.1.1.1'],
         json={'volume_id': '<spare>', 'hosts': ['999.1.1.1']}),
    case('export to a network with a bad prefix', 'POST', '/exports', 400,
         'invalid_argument', ['10.0.0.0/33'],
         json={'volume_id': '<spare>', 'hosts': ['10.0.0.0/33']}),
    case('export to an empty host', 'POST', '/exports', 400,
         'invalid_argument', ['hosts'],
         json={'volume_id': '<spare>', 'hosts': ['']}),
    case('export to no hosts', 'POST', '/exports', 400, 'invalid_argument',
         ['hosts'], json={'volume_id': '<spare>', 'hosts': []}),
    case('export to a host twice', 'POST', '/exports', 400,
         'invalid_argument', ['hosts'],
         json={'volume_id': '<spare>', 'hosts': ['10.0.0.1', '10.0.0.1']}),
    case('export to 17 hosts', 'POST', '/exports', 400, 'invalid_argument',
         ['hosts'], json={'volume_id': '<spare>',
                          'hosts': ['10.0.0.%d' % i for i in range(17)]}),
    case('export hosts as a string', 'POST', '/exports', 400,
         'invalid_argument', ['hosts'],
         json={'volume_id': '<spare>', 'hosts': '10.0.0.1'}),
    case('export without hosts', 'POST', '/exports', 400,
         'invalid_argument', ['hosts', 'required'],
         json={'volume_id': '<spare>'}),
    case('export over iSCSI', 'POST', '/exports', 400, 'invalid_argument',
         ['protocol', 'iscsi'],
         json={'volume_id': '<spare>', 'hosts': ['10.0.0.1'],
               'protocol': 'iscsi'}),
    case('export read_only as a string', 'POST', '/exports', 400,
         'invalid_argument', ['read_only'],
         json={'volume_id': '<spare>', 'hosts': ['10.0.0.1'],
               'read_only': 'yes'}),
    case('export of an unknown volume', 'POST', '/exports', 404,
         'volume_not_found', [UNKNOWN],
         json={'volume_id': UNKNOWN, 'hosts': ['10.0.0.1']}),
    case('export of volume_id not a UUID', 'POST', '/exports', 400,
         'invalid_argument', ['volume_id'],
         json={'volume_id': 'spare-1', 'hosts': ['10.0.0.1']}),
    case('export with an existing id and another body', 'POST', '/exports',
         409, 'already_exists', ['<export>'],
         json={'id': '<export>', 'volume_id': '<volume>',
               'hosts': ['10.9.9.9']}),

    # Deletes that the objects' state refuses
    case('delete of an exported volume', 'DELETE', '/volumes/<volume>', 409,
         'busy', ['vol-1', 'exported', '<export>', 'remove the exports']),
    case('delete of a snapshot as a volume', 'DELETE', '/volumes/<snapshot>',
         400, 'wrong_kind', ['<snapshot>']),
    case('delete of a volume as a snapshot', 'DELETE', '/snapshots/<spare>',
         400, 'wrong_kind', ['<spare>']),
]


@pytest.mark.parametrize('method,path,status,code,words,kwargs',
                         FIELD_CASES)
def test_a_bad_request_is_refused(shared, method, path, status, code, words,
                                  kwargs):
    refused(shared, method, path, status, code, words, **kwargs)


# -- ids in paths ------------------------------------------------------------

NOT_FOUND_CODES = {'volume_id': 'volume_not_found',
                   'snapshot_id': 'snapshot_not_found',
                   'export_id': 'not_found', 'job_id': 'not_found',
                   'pool': 'not_found'}


def _path_param_operations():
    return [op['operationId'] for _m, path, op in apitools.operations()
            if '{' in path]


def _with_path_param(op_id, ids, value):
    """The valid request of ``op_id`` with ``value`` as its path id."""
    method, template, _op = apitools.by_id()[op_id]
    param = template[template.index('{') + 1:template.index('}')]
    method, _path, kwargs = apitools.request_of(op_id, ids)
    return param, method, template.replace('{%s}' % param, value), kwargs


@pytest.mark.parametrize('op_id', _path_param_operations())
def test_an_id_in_the_path_that_is_not_a_uuid_is_refused(shared, op_id):
    param, method, path, kwargs = _with_path_param(op_id, shared.ids,
                                                   'vol-1')
    if param == 'pool':
        # Pool names are names, not ids: a bad one is just not there.
        refused(shared, method, path, 404, 'not_found', ['vol-1'], **kwargs)
    else:
        refused(shared, method, path, 400, 'invalid_argument',
                ['vol-1', 'UUID'], **kwargs)


@pytest.mark.parametrize('op_id', _path_param_operations())
def test_an_unknown_id_in_the_path_is_not_found(shared, op_id):
    param, method, path, kwargs = _with_path_param(op_id, shared.ids,
                                                   UNKNOWN)
    refused(shared, method, path, 404, NOT_FOUND_CODES[param], [UNKNOWN],
            **kwargs)


def test_an_overlong_pool_name_in_the_path_is_refused(shared):
    refused(shared, 'GET', '/pools/' + 'p' * 129, 400, 'invalid_argument',
            ['pool'])


# -- query parameters --------------------------------------------------------

@pytest.mark.parametrize('op_id', apitools.operation_ids())
def test_an_unknown_query_parameter_is_refused(shared, op_id):
    method, path, kwargs = apitools.request_of(op_id, shared.ids)
    refused(shared, method, path, 400, 'invalid_argument', ['colour'],
            params={'colour': 'red'}, **kwargs)


QUERY_CASES = [
    case('pool twice', 'GET', '/volumes?pool=default&pool=default', 400,
         'invalid_argument', ['pool', '2 times']),
    case('name twice', 'GET', '/volumes?name=vol-1&name=vol-2', 400,
         'invalid_argument', ['name', '2 times']),
    case('snapshot volume_id twice', 'GET',
         '/snapshots?volume_id=<volume>&volume_id=<volume>', 400,
         'invalid_argument', ['volume_id', '2 times']),
    case('snapshot name twice', 'GET', '/snapshots?name=a&name=a', 400,
         'invalid_argument', ['name', '2 times']),
    case('export volume_id twice', 'GET',
         '/exports?volume_id=<volume>&volume_id=<other>', 400,
         'invalid_argument', ['volume_id', '2 times']),
    case('unknown pool', 'GET', '/volumes?pool=nope', 404, 'not_found',
         ['pool', 'nope']),
    case('invalid volume name', 'GET', '/volumes?name=-x', 400,
         'invalid_name', ['-x']),
    case('empty volume name', 'GET', '/volumes?name=', 400, 'invalid_name',
         ['name']),
    case('snapshot volume_id not a UUID', 'GET', '/snapshots?volume_id=x',
         400, 'invalid_argument', ['UUID']),
    case('export volume_id not a UUID', 'GET', '/exports?volume_id=x', 400,
         'invalid_argument', ['UUID']),
]


@pytest.mark.parametrize('method,path,status,code,words,kwargs',
                         QUERY_CASES)
def test_a_bad_query_is_refused(shared, method, path, status, code, words,
                                kwargs):
    refused(shared, method, path, status, code, words, **kwargs)


# -- routes and methods ------------------------------------------------------

@pytest.mark.parametrize('method,path', [
    ('GET', '/nothing'),
    ('GET', '/volumes/<volume>/nothing'),
    ('POST', '/volumes/<volume>/snapshots'),
    ('GET', '/'),
])
def test_an_unknown_route_is_a_json_404(shared, method, path):
    err = refused(shared, method, path, 404, 'not_found', ['/v1' + path])
    assert 'Not Found' in err['message']


@pytest.mark.parametrize('method,path', [
    ('PUT', '/volumes'),
    ('DELETE', '/volumes'),
    ('DELETE', '/pools'),
    ('POST', '/jobs'),
    ('PUT', '/volumes/<volume>'),
    ('PATCH', '/snapshots/<snapshot>'),
    ('GET', '/volumes/<volume>/revert'),
    ('DELETE', '/exports'),
])
def test_a_method_a_route_does_not_have_is_a_json_405(shared, method,
                                                      path):
    documented = {m.upper() for m in apitools.spec()['paths'][
        path.replace('<volume>', '{volume_id}').replace(
            '<snapshot>', '{snapshot_id}')] if m in apitools.METHODS}
    refused(shared, method, path, 405, 'method_not_allowed',
            [method, 'not allowed'], json={'name': 'x', 'size': MiB})
    # The answer says which methods there are.
    resp = shared.request(method, apitools.fill(path, shared.ids))
    allowed = {m.strip() for m in resp.headers['Allow'].split(',')}
    assert documented <= allowed and method not in allowed, allowed


# -- idempotent creates ------------------------------------------------------

def _create_twice(node, path: str, body: dict) -> dict:
    first = node.post(path, json=body)
    assert first.status_code == 201, first.text
    after_first = apitools.state(node)
    again = node.post(path, json=body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert apitools.state(node) == after_first
    return first.json()


def test_a_repeated_volume_create_returns_the_volume_it_made(node):
    ident = str(uuid.uuid4())
    vol = _create_twice(node, '/volumes',
                        {'id': ident, 'name': 'v1', 'size': MiB})
    assert vol['id'] == ident
    assert [v['id'] for v in node.get('/volumes').json()['volumes']] == \
        [ident]


def test_a_repeated_clone_create_returns_the_clone_it_made(node):
    ids = apitools.populate(node)
    ident = str(uuid.uuid4())
    clone = _create_twice(node, '/volumes', {
        'id': ident, 'name': 'clone-2', 'size': 4 * MiB,
        'source': {'snapshot_id': ids['snapshot']}})
    assert clone['source'] == {'snapshot_id': ids['snapshot']}


def test_a_repeated_snapshot_create_returns_the_snapshot_it_made(node):
    vol = apitools.create(node, '/volumes', {'name': 'v1', 'size': MiB})
    ident = str(uuid.uuid4())
    snap = _create_twice(node, '/snapshots', {
        'id': ident, 'name': 's1', 'volume_id': vol['id']})
    assert snap['id'] == ident
    assert [s['id'] for s in node.get('/snapshots').json()['snapshots']] \
        == [ident]


def test_a_repeated_export_create_returns_the_export_it_made(node):
    vol = apitools.create(node, '/volumes', {'name': 'v1', 'size': MiB})
    ident = str(uuid.uuid4())
    export = _create_twice(node, '/exports', {
        'id': ident, 'volume_id': vol['id'], 'hosts': ['10.0.0.1']})
    assert export['id'] == ident
    assert [e['id'] for e in node.get('/exports').json()['exports']] == \
        [ident]
