"""The management API: HTTP/JSON over :class:`~.node.Node`, with aiohttp.

This layer does four things and nothing else: it checks the token, checks
every request against the OpenAPI document (``openapi.yaml``, the contract
the client and the tests share), runs the node's blocking method in a
worker thread, and turns the engine's errors into HTTP statuses with one
error shape::

    {"error": {"code": "volume_not_found", "message": "...", "details": {}}}

Tokens are compared in constant time (hmac.compare_digest), and a request
without the right one is answered 401 before its body is even read.
"""

import asyncio
import functools
import hmac
import importlib.resources
import json
import typing

from aiohttp import web
import jsonschema
from oslo_log import log as logging
import yaml

from storage_engine import errors
from storage_engine import incarnation
from storage_engine import names

LOG = logging.getLogger(__name__)

TOKEN_HEADER = 'X-Auth-Token'
MAX_BODY = 64 * 1024

# Most specific first: the first class an error is an instance of wins.
_STATUS = [
    (errors.Unauthorized, 401),
    (errors.InvalidArgument, 400),
    (errors.NotFound, 404),
    (errors.AlreadyExists, 409),
    (errors.Busy, 409),
    (errors.ReadOnly, 409),
    (errors.IncarnationMismatch, 412),
    (errors.NoSpace, 507),
    (errors.Unavailable, 503),
    (errors.GroupClosed, 503),
]


def status_of(exc: errors.EngineError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, code: str, message: str,
                   details: dict | None = None, headers=None):
    body = {'error': {'code': code, 'message': message,
                      'details': _jsonable(details or {})}}
    return web.json_response(body, status=status, headers=headers)


def _jsonable(details: dict) -> dict:
    return json.loads(json.dumps(details, default=str))


@functools.cache
def openapi_text() -> str:
    return importlib.resources.files('storage_engine.service').joinpath(
        'openapi.yaml').read_text()


@functools.cache
def _spec() -> dict:
    return yaml.safe_load(openapi_text())


@functools.cache
def _validator(schema_name: str):
    spec = _spec()
    schema = {'$ref': '#/components/schemas/%s' % schema_name,
              'components': spec['components']}
    return jsonschema.Draft7Validator(schema)


def _check_body(schema_name: str, body) -> dict:
    errs = sorted(_validator(schema_name).iter_errors(body),
                  key=lambda e: list(e.absolute_path))
    if errs:
        err = errs[0]
        where = '/'.join(str(p) for p in err.absolute_path) or 'body'
        raise errors.InvalidArgument('invalid request: %s: %s'
                                     % (where, err.message), field=where)
    return body


def _path_id(request: web.Request, key: str) -> str:
    return names.check_id(request.match_info[key])


def _query(request: web.Request, allowed: dict,
           repeatable: dict | None = None) -> dict:
    """The query parameters, checked: ``allowed`` maps name to checker;
    ``repeatable`` those that may be given several times (a list).
    """
    repeatable = repeatable or {}
    out = {}
    for key in request.query:
        values = request.query.getall(key)
        if key in repeatable:
            out[key] = [repeatable[key](v) for v in values]
            continue
        if key not in allowed:
            raise errors.InvalidArgument('unknown query parameter %r' % key)
        if len(values) != 1:
            raise errors.InvalidArgument('query parameter %r given %d '
                                         'times' % (key, len(values)))
        out[key] = allowed[key](values[0])
    return out


def _boolean(value: str) -> bool:
    if value not in ('true', 'false'):
        raise errors.InvalidArgument('%r is not true or false' % value)
    return value == 'true'


# DELETE of a volume, snapshot or export may name the incarnations it is
# meant for (storage_engine/incarnation.py).
_INCARNATIONS = {'incarnation': incarnation.check}


def _name(value: str) -> str:
    return names.check_name(value)


def _pool_name(value: str) -> str:
    # Pool names follow the name rules but may be anything configured.
    if not value or len(value) > 128:
        raise errors.InvalidArgument('invalid pool name %r' % value)
    return value


class API:
    """The routes; each one is a call of one :class:`Node` method."""

    def __init__(self, node, token: str, executor=None):
        if not token:
            raise errors.InvalidArgument('the management API needs a token')
        self.node = node
        self._token = token.encode()
        self._executor = executor
        self.ready = False

    # -- plumbing ---------------------------------------------------------

    async def call(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs))

    def authorized(self, request: web.Request) -> bool:
        given = request.headers.get(TOKEN_HEADER, '')
        try:
            given_bytes = given.encode()
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(given_bytes, self._token)

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if not self.authorized(request):
            return error_response(
                401, errors.Unauthorized.code,
                'a valid token is required in the %s header' % TOKEN_HEADER,
                headers={'WWW-Authenticate': 'token'})
        if not self.ready and request.path != '/v1/ready':
            return error_response(503, errors.Unavailable.code,
                                  'node %s is not ready' % self.node.name)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: 'not_found', 405: 'method_not_allowed',
                    413: 'request_too_large',
                    415: 'unsupported_media_type'}.get(exc.status,
                                                       'http_error')
            # A 405 says which methods the resource has (RFC 9110).
            allow = {'Allow': exc.headers['Allow']} \
                if 'Allow' in exc.headers else None
            return error_response(exc.status, code,
                                  '%s %s: %s' % (request.method,
                                                 request.path, exc.reason),
                                  headers=allow)
        except errors.EngineError as exc:
            status = status_of(exc)
            if status == 500:
                LOG.error('%s %s failed: %s', request.method, request.path,
                          exc)
            return error_response(status, exc.code, exc.message,
                                  exc.details)
        except asyncio.CancelledError:
            raise
        except Exception:
            LOG.exception('%s %s failed', request.method, request.path)
            return error_response(500, 'internal_error',
                                  'internal error; see the service log')

    async def body(self, request: web.Request, schema: str) -> dict:
        if request.content_type != 'application/json':
            raise web.HTTPUnsupportedMediaType(
                reason='the body must be application/json')
        try:
            body = json.loads(await request.read())
        except UnicodeDecodeError:
            raise errors.InvalidArgument('the body is not UTF-8') from None
        except RecursionError:
            # Arrays or objects nested thousands deep (a few bytes each).
            raise errors.InvalidArgument('the body is not JSON this API '
                                         'takes: it is nested too '
                                         'deeply') from None
        except ValueError as exc:
            raise errors.InvalidArgument('the body is not JSON: %s'
                                         % exc) from None
        return _check_body(schema, body)

    @staticmethod
    def created(view: dict, new: bool) -> web.Response:
        return web.json_response(view, status=201 if new else 200)

    # -- node -------------------------------------------------------------

    async def ready_(self, request):
        _query(request, {})
        if not self.ready:
            return error_response(503, errors.Unavailable.code,
                                  'node %s is not ready' % self.node.name)
        # Ready, but a pool out of space or stopped is named (degraded).
        return web.json_response({'ready': True, 'node': self.node.name,
                                  'health': self.node.health.summary()})

    async def openapi(self, request):
        _query(request, {})
        return web.Response(text=openapi_text(),
                            content_type='application/yaml')

    async def get_node(self, request):
        _query(request, {})
        return web.json_response(await self.call(self.node.info))

    # -- pools ------------------------------------------------------------

    async def list_pools(self, request):
        _query(request, {})
        return web.json_response(
            {'pools': await self.call(self.node.list_pools)})

    async def get_pool(self, request):
        _query(request, {})
        pool = _pool_name(request.match_info['pool'])
        return web.json_response(await self.call(self.node.pool, pool))

    async def check_pool(self, request):
        # POST, not GET: it runs a check that reads all of the pool's
        # metadata and briefly holds its commits, which nothing should do
        # just because it follows links or polls GETs (crawlers,
        # prefetchers, monitoring), and its answer is no representation
        # to cache. It changes nothing, so the client may retry it.
        _query(request, {})
        pool = _pool_name(request.match_info['pool'])
        return web.json_response(await self.call(self.node.check_pool,
                                                 pool))

    async def reopen_pool(self, request):
        _query(request, {})
        pool = _pool_name(request.match_info['pool'])
        return web.json_response(await self.call(self.node.reopen_pool,
                                                 pool))

    # -- volumes ----------------------------------------------------------

    async def list_volumes(self, request):
        q = _query(request, {'pool': _pool_name, 'name': _name})
        return web.json_response({'volumes': await self.call(
            self.node.list_volumes, q.get('pool'), q.get('name'))})

    async def create_volume(self, request):
        _query(request, {})
        b = await self.body(request, 'VolumeCreate')
        view, new = await self.call(
            self.node.create_volume, b['name'], b['size'], b.get('pool'),
            b.get('provisioning'), b.get('source'), b.get('id'),
            b.get('incarnation'))
        return self.created(view, new)

    async def get_volume(self, request):
        _query(request, {})
        return web.json_response(await self.call(
            self.node.volume, _path_id(request, 'volume_id')))

    async def update_volume(self, request):
        _query(request, {})
        ident = _path_id(request, 'volume_id')
        b = await self.body(request, 'VolumeUpdate')
        return web.json_response(await self.call(
            self.node.update_volume, ident, b.get('name'), b.get('size'),
            b.get('provisioning')))

    async def delete_volume(self, request):
        q = _query(request, {'remove_exports': _boolean}, _INCARNATIONS)
        await self.call(self.node.delete_volume,
                        _path_id(request, 'volume_id'),
                        q.get('incarnation'), q.get('remove_exports', False))
        return web.Response(status=204)

    async def revert_volume(self, request):
        _query(request, {})
        ident = _path_id(request, 'volume_id')
        b = await self.body(request, 'Revert')
        return web.json_response(await self.call(
            self.node.revert_volume, ident, b['snapshot_id']))

    async def flatten_volume(self, request):
        _query(request, {})
        job = await self.call(self.node.flatten_volume,
                              _path_id(request, 'volume_id'))
        return web.json_response(job, status=202, headers={
            'Location': '/v1/jobs/%s' % job['id']})

    # -- snapshots --------------------------------------------------------

    async def list_snapshots(self, request):
        q = _query(request, {'volume_id': names.check_id, 'name': _name})
        return web.json_response({'snapshots': await self.call(
            self.node.list_snapshots, q.get('volume_id'), q.get('name'))})

    async def create_snapshot(self, request):
        _query(request, {})
        b = await self.body(request, 'SnapshotCreate')
        view, new = await self.call(self.node.create_snapshot,
                                    b['volume_id'], b['name'], b.get('id'),
                                    b.get('incarnation'))
        return self.created(view, new)

    async def get_snapshot(self, request):
        _query(request, {})
        return web.json_response(await self.call(
            self.node.snapshot, _path_id(request, 'snapshot_id')))

    async def delete_snapshot(self, request):
        q = _query(request, {}, _INCARNATIONS)
        await self.call(self.node.delete_snapshot,
                        _path_id(request, 'snapshot_id'),
                        q.get('incarnation'))
        return web.Response(status=204)

    # -- exports ----------------------------------------------------------

    async def list_exports(self, request):
        q = _query(request, {'volume_id': names.check_id})
        return web.json_response({'exports': await self.call(
            self.node.list_exports, q.get('volume_id'))})

    async def create_export(self, request):
        _query(request, {})
        b = await self.body(request, 'ExportCreate')
        view, new = await self.call(
            self.node.create_export, b['volume_id'], b['hosts'],
            b.get('protocol', 'nbd'), b.get('read_only', False), b.get('id'),
            b.get('incarnation'))
        return self.created(view, new)

    async def get_export(self, request):
        _query(request, {})
        return web.json_response(await self.call(
            self.node.export, _path_id(request, 'export_id')))

    async def delete_export(self, request):
        q = _query(request, {}, _INCARNATIONS)
        await self.call(self.node.delete_export,
                        _path_id(request, 'export_id'), q.get('incarnation'))
        return web.Response(status=204)

    # -- jobs -------------------------------------------------------------

    async def list_jobs(self, request):
        _query(request, {})
        return web.json_response({'jobs': await self.call(
            self.node.list_jobs)})

    async def get_job(self, request):
        _query(request, {})
        return web.json_response(await self.call(
            self.node.job, _path_id(request, 'job_id')))

    # -- the application ----------------------------------------------------

    def routes(self) -> typing.List[web.RouteDef]:
        v = '/v1'
        return [
            web.get(v + '/ready', self.ready_),
            web.get(v + '/openapi.yaml', self.openapi),
            web.get(v + '/node', self.get_node),
            web.get(v + '/pools', self.list_pools),
            web.get(v + '/pools/{pool}', self.get_pool),
            web.post(v + '/pools/{pool}/check', self.check_pool),
            web.post(v + '/pools/{pool}/reopen', self.reopen_pool),
            web.get(v + '/volumes', self.list_volumes),
            web.post(v + '/volumes', self.create_volume),
            web.get(v + '/volumes/{volume_id}', self.get_volume),
            web.patch(v + '/volumes/{volume_id}', self.update_volume),
            web.delete(v + '/volumes/{volume_id}', self.delete_volume),
            web.post(v + '/volumes/{volume_id}/revert', self.revert_volume),
            web.post(v + '/volumes/{volume_id}/flatten',
                     self.flatten_volume),
            web.get(v + '/snapshots', self.list_snapshots),
            web.post(v + '/snapshots', self.create_snapshot),
            web.get(v + '/snapshots/{snapshot_id}', self.get_snapshot),
            web.delete(v + '/snapshots/{snapshot_id}', self.delete_snapshot),
            web.get(v + '/exports', self.list_exports),
            web.post(v + '/exports', self.create_export),
            web.get(v + '/exports/{export_id}', self.get_export),
            web.delete(v + '/exports/{export_id}', self.delete_export),
            web.get(v + '/jobs', self.list_jobs),
            web.get(v + '/jobs/{job_id}', self.get_job),
        ]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware],
                              client_max_size=MAX_BODY)
        app.add_routes(self.routes())
        return app
