"""What the API test modules share: the OpenAPI document, a snapshot of a
node's state, the error-shape assertion and a set of real objects.
"""

import functools
import pathlib
import re
import sqlite3
import time

import jsonschema
import yaml

import storage_engine.service

SPEC_PATH = pathlib.Path(storage_engine.service.__file__).parent / \
    'openapi.yaml'
METHODS = ('get', 'put', 'post', 'patch', 'delete', 'head', 'options',
           'trace')
MiB = 1024 * 1024
JOB_TIMEOUT = 60.0

# What a snapshot of a node's state reads (below /v1).
STATE_PATHS = ('/volumes', '/snapshots', '/exports', '/pools', '/jobs')


# The object of populate() each path parameter names in a valid request,
# and, for some operations, another one.
PATH_ROLES = {'volume_id': 'volume', 'snapshot_id': 'snapshot',
              'export_id': 'export', 'job_id': 'job'}
PATH_ROLE_OVERRIDES = {
    # Targets the right token would really change, so that "changes
    # nothing" means something.
    'updateVolume': {'volume_id': 'spare'},
    'deleteVolume': {'volume_id': 'spare'},
    'revertVolume': {'volume_id': 'other'},
    'flattenVolume': {'volume_id': 'clone'},
    'deleteSnapshot': {'snapshot_id': 'spare_snapshot'},
}

# A valid body of every operation that takes one; '<role>' stands for
# the id of that object of populate().
BODIES = {
    'createVolume': {'name': 'new-vol', 'size': MiB},
    'updateVolume': {'size': 8 * MiB},
    'revertVolume': {'snapshot_id': '<other_snapshot>'},
    'createSnapshot': {'name': 'new-snap', 'volume_id': '<volume>'},
    'createExport': {'volume_id': '<spare>', 'hosts': ['10.0.0.1']},
}

# Operations whose success shows in the node's state snapshot (a revert
# of a volume that was never written to changes no list).
VISIBLE = {'createVolume', 'updateVolume', 'deleteVolume', 'flattenVolume',
           'createSnapshot', 'deleteSnapshot', 'createExport',
           'deleteExport'}


@functools.cache
def spec() -> dict:
    """The document (parsed once; do not change it)."""
    return yaml.safe_load(SPEC_PATH.read_text())


def operations() -> list[tuple[str, str, dict]]:
    """``(METHOD, path, operation)`` of every operation of the document."""
    out = []
    for path, item in spec()['paths'].items():
        for method in METHODS:
            if method in item:
                out.append((method.upper(), path, item[method]))
    return out


def operation_ids() -> list[str]:
    return [op['operationId'] for _m, _p, op in operations()]


def by_id() -> dict[str, tuple[str, str, dict]]:
    return {op['operationId']: (m, p, op) for m, p, op in operations()}


def _json_schema(schema):
    """An OpenAPI 3.0 schema as JSON Schema: ``nullable`` becomes null."""
    if isinstance(schema, list):
        return [_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _json_schema(v) for k, v in schema.items() if k != 'nullable'}
    if schema.get('nullable'):
        return {'anyOf': [{'type': 'null'}, out]}
    return out


def validator(schema: dict) -> jsonschema.Draft7Validator:
    """A validator of ``schema`` (a part of the document)."""
    return jsonschema.Draft7Validator(_json_schema(
        dict(schema, components=spec()['components'])))


def schema_errors(schema: dict, instance) -> list[str]:
    return ['%s: %s' % ('/'.join(map(str, e.absolute_path)), e.message)
            for e in validator(schema).iter_errors(instance)]


def store_records(node) -> dict:
    """Every key of the node's SQLite metadata store, with its value,
    read without locking anything (the node keeps running).
    """
    db = sqlite3.connect('file:%s?mode=ro' % (node.state / 'metadata.db'),
                         uri=True)
    try:
        return dict(db.execute('SELECT key, value FROM kv').fetchall())
    finally:
        db.close()


def state(node) -> dict:
    """What the node holds, as its API and its metadata store say."""
    out = {}
    for path in STATE_PATHS:
        resp = node.get(path)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        out[path] = resp.json()
    stats = node.get('/node').json()['stats']
    # Connections come and go with clients, not with the API's requests.
    stats.pop('nbd_connections')
    out['/node stats'] = stats
    out['metadata store'] = store_records(node)
    return out


def wait_for_jobs(node) -> None:
    """Poll until no job of the node runs (a finished node is stable)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        jobs = node.get('/jobs').json()['jobs']
        if all(j['state'] != 'running' for j in jobs):
            return
        assert time.monotonic() < deadline, 'jobs still running: %s' % jobs
        time.sleep(0.05)


def assert_error(resp, status: int, code: str, *words: str) -> dict:
    """``resp`` is an error with the documented shape, ``status`` and
    ``code``, and its message names each of ``words``.
    """
    assert resp.status_code == status, (
        'expected %d %s, got %d: %s' % (status, code, resp.status_code,
                                        resp.text))
    assert resp.headers['Content-Type'].startswith('application/json'), \
        resp.headers
    body = resp.json()
    assert set(body) == {'error'}, body
    err = body['error']
    assert set(err) == {'code', 'message', 'details'}, body
    assert err['code'] == code, body
    assert isinstance(err['message'], str) and err['message'], body
    assert isinstance(err['details'], dict), body
    for word in words:
        assert word.lower() in err['message'].lower(), (
            'the message does not name %r: %s' % (word, err['message']))
    return err


def create(node, path: str, body: dict) -> dict:
    resp = node.post(path, json=body)
    assert resp.status_code == 201, (path, body, resp.status_code,
                                     resp.text)
    return resp.json()


def populate(node) -> dict:
    """Real objects to name in requests; returns their ids by role.

    ``volume``     exported, with ``snapshot`` and a flatten ``job``
    ``snapshot``   of ``volume``, with the clone ``clone``
    ``clone``      reads through ``snapshot``
    ``other``      a volume with ``other_snapshot``, not exported
    ``spare``      a volume with nothing on it (deletable)
    ``spare_snapshot``  a snapshot of ``other`` with no clone (deletable)
    ``export``     of ``volume``, to 127.0.0.1
    """
    ids = {}
    ids['volume'] = create(node, '/volumes',
                           {'name': 'vol-1', 'size': 4 * MiB})['id']
    ids['snapshot'] = create(node, '/snapshots', {
        'name': 'snap-1', 'volume_id': ids['volume']})['id']
    ids['clone'] = create(node, '/volumes', {
        'name': 'clone-1', 'size': 4 * MiB,
        'source': {'snapshot_id': ids['snapshot']}})['id']
    ids['other'] = create(node, '/volumes',
                          {'name': 'other-1', 'size': 2 * MiB})['id']
    ids['other_snapshot'] = create(node, '/snapshots', {
        'name': 'other-snap-1', 'volume_id': ids['other']})['id']
    ids['spare_snapshot'] = create(node, '/snapshots', {
        'name': 'other-snap-2', 'volume_id': ids['other']})['id']
    ids['spare'] = create(node, '/volumes',
                          {'name': 'spare-1', 'size': 1 * MiB})['id']
    ids['export'] = create(node, '/exports', {
        'volume_id': ids['volume'], 'hosts': ['127.0.0.1']})['id']
    resp = node.post('/volumes/%s/flatten' % ids['volume'])
    assert resp.status_code == 202, resp.text
    ids['job'] = resp.json()['id']
    wait_for_jobs(node)
    return ids


def fill(value, ids: dict):
    """``value`` with every ``<role>`` replaced by the id of that role."""
    if isinstance(value, str):
        return re.sub(r'<(\w+)>', lambda m: ids[m.group(1)], value)
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    return value


def request_of(op_id: str, ids: dict) -> tuple[str, str, dict]:
    """``(METHOD, path below /v1, kwargs)`` of a valid request."""
    method, path, op = by_id()[op_id]
    roles = dict(PATH_ROLES, **PATH_ROLE_OVERRIDES.get(op_id, {}))
    for name, role in roles.items():
        path = path.replace('{%s}' % name, ids[role])
    path = path.replace('{pool}', 'default')
    assert '{' not in path, path
    kwargs = {}
    if 'requestBody' in op:
        kwargs['json'] = fill(BODIES[op_id], ids)
    return method, path, kwargs
