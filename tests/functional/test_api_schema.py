"""Property-based run of the management API against its OpenAPI document.

Schemathesis generates requests for every operation of openapi.yaml, valid
ones and invalid ones, and sends them with the node's token to one real
node. Whatever it sends, the node never answers with a server error, and
every answer has a documented status code, content type, headers and body
schema; invalid requests are refused, and so are requests without the
token. A second run sends valid requests about real objects (ids of
volumes, snapshots, exports and jobs that exist), which random UUIDs never
find.
"""

import uuid

import hypothesis
from hypothesis import strategies as st
import pytest
import schemathesis
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as openapi_checks

from tests.fixtures import node as node_mod
from tests.functional import apitools

schema = schemathesis.openapi.from_path(apitools.SPEC_PATH)
# The node's token, chosen here so that Schemathesis knows it as the
# credentials of the document's security scheme: it sends it with every
# request except those that test the scheme (a missing or wrong token).
TOKEN = uuid.uuid4().hex

# Bounded so that the module runs in about a minute on two cores.
EXAMPLES = 40
REAL_EXAMPLES = 50


def not_a_server_error(ctx, response, case):
    """No 5xx, except 507 ``no_space`` where the operation documents it:
    a pool that has not the space asked for is the caller's problem,
    and 507 is how the API says so.
    """
    if response.status_code == 507 and \
            '507' in case.operation.definition.raw.get('responses', {}):
        body = response.json()
        assert body['error']['code'] == 'no_space', body
        return None
    return st_checks.not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.unsupported_method,
    openapi_checks.allow_header_conformance,
    openapi_checks.ignored_auth,
]


@schema.auth(refresh_interval=None)
class NodeToken:
    def get(self, case, ctx):
        return TOKEN

    def set(self, case, data, ctx):
        case.headers['X-Auth-Token'] = data


@pytest.fixture(scope='module')
def live(tmp_path_factory):
    """One real node for the whole run, with real objects on it."""
    node = node_mod.NodeProcess(tmp_path_factory.mktemp('schema'), 'st',
                                token=TOKEN)
    node.start()
    try:
        node.ids = apitools.populate(node)
        yield node
    finally:
        node.stop()


def _call(case, node):
    return case.call_and_validate(base_url=node.url + '/v1', checks=CHECKS)


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None)
def test_every_operation_answers_as_documented(case, live):
    _call(case, live)


def _with_real_objects(case, ids: dict, draw) -> None:
    """Point a generated (valid) request at objects that exist."""
    volumes = [ids[r] for r in ('volume', 'clone', 'other', 'spare')]
    snapshots = [ids[r] for r in ('snapshot', 'other_snapshot',
                                  'spare_snapshot')]
    real = {'volume_id': volumes, 'snapshot_id': snapshots,
            'export_id': [ids['export']], 'job_id': [ids['job']],
            'pool': ['default'], 'name': ['vol-1', 'snap-1']}
    for name in case.path_parameters:
        case.path_parameters[name] = draw(st.sampled_from(real[name]))
    for name in case.query or {}:
        # Incarnations and flags stay as generated.
        if name in real:
            case.query[name] = draw(st.sampled_from(real[name]))
    body = case.body
    if not isinstance(body, dict):
        return
    if 'volume_id' in body:
        # Exports take snapshots as well.
        body['volume_id'] = draw(st.sampled_from(
            volumes + (snapshots if 'hosts' in body else [])))
    if 'snapshot_id' in body:
        body['snapshot_id'] = draw(st.sampled_from(snapshots))
    if 'hosts' in body:
        body['hosts'] = draw(st.sampled_from(
            [['127.0.0.1'], ['10.0.0.0/8', '::1']]))
    source = body.get('source')
    if isinstance(source, dict) and len(source) == 1:
        (key,) = source
        source[key] = draw(st.sampled_from(
            snapshots if key == 'snapshot_id' else volumes))
    if 'pool' in body:
        body['pool'] = 'default'


@schema.given(data=st.data())
@schema.parametrize()
@hypothesis.settings(max_examples=REAL_EXAMPLES, deadline=None)
def test_every_operation_on_real_objects_answers_as_documented(case, data,
                                                               live):
    # Only valid requests are pointed at real objects; an invalid one
    # stays as generated (so it stays invalid). Real objects are what
    # Hypothesis starts from and shrinks to.
    if case.meta.generation.mode.is_positive and not data.draw(
            st.booleans(), label='keep the generated ids'):
        _with_real_objects(case, live.ids, data.draw)
    _call(case, live)


def test_the_node_serves_the_document_in_the_repository(node):
    resp = node.get('/openapi.yaml')
    assert resp.status_code == 200
    assert resp.headers['Content-Type'].split(';')[0] == 'application/yaml'
    assert resp.content == apitools.SPEC_PATH.read_bytes()
