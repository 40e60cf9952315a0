"""The client of the storage-node management API.

Drivers, connectors and the ``storage-engine`` command talk to a node only
through :class:`Client`, so the API's contract
(``storage_engine/service/openapi.yaml``) is interpreted in one place:

* Errors come back as the engine's own exception classes: the class whose
  ``code`` is the error body's code, else one chosen by the HTTP status.
  Callers catch :class:`errors.NotFound` or :class:`errors.NoSpace` exactly
  as they would from the engine in-process.
* Transient faults are retried, and nothing else: a connection that failed
  (refused, reset, connect timeout) and HTTP 503 (not ready, shutting
  down, metadata store down). Retries are bounded by ``attempts`` and by
  ``deadline`` seconds, with exponential backoff and jitter so that many
  drivers do not hammer a node that is coming back all at once. A 4xx or
  a 500 is an answer, and the same request would get the same answer.
* Retrying is safe because every request is idempotent: creates carry an
  id generated here, and the node answers a repeated create with the
  object it made the first time. The exceptions are a delete whose first
  attempt may have been carried out (its 404 then means "deleted"), and
  flatten, which starts a job and so is only retried when the request
  cannot have reached the node.
* A delete never removes a later incarnation of its id: every create
  carries an incarnation token made here, and a delete names the tokens
  this client sent for that object before the delete was asked for (see
  storage_engine/incarnation.py). A delete that finds a later incarnation
  raises :class:`errors.IncarnationMismatch` and deleted nothing.
"""

import errno as _errno
import time
from typing import Any
from typing import Callable
import urllib.parse

from oslo_log import log as logging
import requests
import tenacity
import urllib3

from storage_engine import errors
from storage_engine import httpfaults
from storage_engine import incarnation
# Imported for its side effect: its classes join the code table.
from storage_engine.metastore import errors as _metastore_errors  # noqa
from storage_engine import names

LOG = logging.getLogger(__name__)

API_PREFIX = '/v1'
DEFAULT_URL = 'http://127.0.0.1:8790'

# The backoff window grows from MIN_WAIT to MAX_WAIT seconds.
MIN_WAIT = 0.1
MAX_WAIT = 2.0

# When the status says what went wrong but the code is not one we know
# (an older client, a proxy's error page).
_BY_STATUS = {
    400: errors.InvalidArgument,
    401: errors.Unauthorized,
    404: errors.NotFound,
    409: errors.AlreadyExists,
    503: errors.Unavailable,
    507: errors.NoSpace,
}

_REASONS = (
    (ConnectionRefusedError, 'connection refused'),
    (ConnectionResetError, 'connection reset'),
    (ConnectionAbortedError, 'connection aborted'),
    (urllib3.exceptions.NameResolutionError, 'name resolution failed'),
    (urllib3.exceptions.ConnectTimeoutError, 'connection timed out'),
    (urllib3.exceptions.ProtocolError, 'connection lost'),
)


class JobTimeout(errors.EngineError):
    """:meth:`Client.wait_job` gave up waiting; the job goes on running."""

    code = 'job_timeout'
    errno = _errno.ETIMEDOUT


def _classes(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_classes(sub))
    return out


def error_class(code: str | None, status: int | None = None
                ) -> type[errors.EngineError]:
    """The exception class for an error ``code`` (or, failing that, for an
    HTTP ``status``).

    Only classes that define ``code`` themselves count: a subclass that
    inherits its parent's code is not what the sender meant. The table is
    walked on every error rather than cached, so classes defined after this
    module was imported take part.
    """
    best = None
    for cls in _classes(errors.EngineError):
        if cls.__dict__.get('code') == code and (
                best is None or len(cls.__mro__) > len(best.__mro__)):
            best = cls
    return best or _BY_STATUS.get(status, errors.EngineError)


def make_error(code: str | None, message: str, details: dict | None = None,
               status: int | None = None) -> errors.EngineError:
    """An engine exception from an API error body's fields."""
    cls = error_class(code, status)
    exc = cls(message)
    exc.details = dict(details or {})
    if status is not None:
        exc.details['status'] = status
    if code and cls.code != code:
        # The class came from the status: keep what the server said.
        exc.details.setdefault('code', code)
    return exc


def _reason(exc: BaseException) -> str:
    """A few words on why a connection failed, from the exception chain."""
    if isinstance(exc, requests.exceptions.SSLError):
        return 'TLS error: %s' % (exc.args[0] if exc.args else exc)
    seen = set()
    stack: list[Any] = [exc]
    found = []
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        stack.extend((current.__cause__, current.__context__,
                      getattr(current, 'reason', None)))
        stack.extend(current.args)
    # The most precise reason wins, wherever it is in the chain.
    for cls, words in _REASONS:
        if any(isinstance(e, cls) for e in found):
            return words
    return type(exc).__name__


class _Retry503(Exception):
    """A 503 answer, raised inside the retry loop so tenacity sees it."""

    def __init__(self, response: requests.Response):
        super().__init__(response.status_code)
        self.response = response


class Client:
    """One storage node's management API.

    :param url: the node, e.g. ``http://127.0.0.1:8790`` (without /v1)
    :param token: the node's token, sent as ``X-Auth-Token``
    :param ca_file: CA bundle verifying an https node (default: the
        system's)
    :param timeout: seconds one attempt may take to connect, and to get
        each piece of the answer
    :param attempts: tries of a request, the first included
    :param deadline: seconds after the first try when no new try starts
    :param session: a :class:`requests.Session` to share connection pools
    """

    def __init__(self, url: str, token: str | None, *,
                 ca_file: str | None = None, timeout: float = 30.0,
                 attempts: int = 5, deadline: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.url = url.rstrip('/')
        self.token = token
        self.verify = ca_file or True
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.deadline = deadline
        self._own_session = session is None
        self.session = session or requests.Session()
        #: the incarnations this client's creates carried
        self.issued = incarnation.Issued()

    def __repr__(self) -> str:
        return '<Client %s>' % self.url

    def close(self) -> None:
        """Close the connections of a session this client made."""
        if self._own_session:
            self.session.close()

    def __enter__(self) -> 'Client':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------

    def _retrying(self, idempotent: bool, method: str,
                  url: str) -> tenacity.Retrying:
        def transient(exc: BaseException) -> bool:
            if isinstance(exc, _Retry503):
                return True
            if isinstance(exc, requests.exceptions.SSLError):
                # A certificate that does not verify will not start to.
                return False
            if isinstance(exc, requests.ConnectionError):
                return idempotent or httpfaults.never_sent(exc)
            return False

        def log(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception()
            why = ('HTTP 503' if isinstance(exc, _Retry503)
                   else _reason(exc))
            LOG.warning('%(method)s %(url)s failed (%(why)s); retrying in '
                        '%(wait).2f s (attempt %(n)d of %(of)d)',
                        {'method': method, 'url': url, 'why': why,
                         'wait': state.upcoming_sleep,
                         'n': state.attempt_number + 1,
                         'of': self.attempts})

        return tenacity.Retrying(
            stop=(tenacity.stop_after_attempt(self.attempts) |
                  tenacity.stop_before_delay(self.deadline)),
            wait=tenacity.wait_random_exponential(
                multiplier=MIN_WAIT, min=MIN_WAIT, max=MAX_WAIT),
            retry=tenacity.retry_if_exception(transient),
            before_sleep=log,
            reraise=True)

    def _request(self, method: str, path: str, *,
                 params: dict | None = None, body: dict | None = None,
                 idempotent: bool = True) -> requests.Response:
        """Send one request (with its retries); raise on an error answer."""
        url = self.url + API_PREFIX + path
        headers = {'Accept': 'application/json'}
        if self.token is not None:
            headers['X-Auth-Token'] = self.token
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        reached = False

        def attempt() -> requests.Response:
            nonlocal reached
            try:
                response = self.session.request(
                    method, url, params=params, json=body, headers=headers,
                    timeout=self.timeout, verify=self.verify)
            except requests.ConnectionError as exc:
                reached = reached or not httpfaults.never_sent(exc)
                raise
            if response.status_code == 503:
                raise _Retry503(response)
            return response

        try:
            response = self._retrying(idempotent, method, url)(attempt)
        except _Retry503 as exc:
            response = exc.response
        except requests.exceptions.ReadTimeout as exc:
            # Not retried: the node got the request and may be working on
            # it; the same request would wait the same way.
            raise errors.Unavailable(
                'storage node at %s did not answer %s %s within %g s'
                % (self.url, method, path, self.timeout),
                url=url) from exc
        except requests.ConnectionError as exc:
            message = 'storage node at %s is unreachable: %s' % (
                self.url, _reason(exc))
            if not idempotent and not httpfaults.never_sent(exc):
                message += ('; the request may or may not have been carried '
                            'out')
            raise errors.Unavailable(message, url=url) from exc

        if response.status_code >= 400:
            if (method == 'DELETE' and response.status_code == 404
                    and reached):
                # An earlier attempt deleted it and its answer was lost.
                LOG.info('%(url)s is gone after a retried DELETE',
                         {'url': url})
                return response
            raise self._error(response)
        return response

    def _error(self, response: requests.Response) -> errors.EngineError:
        try:
            error = response.json()['error']
            code, message = error['code'], error['message']
            details = error.get('details') or {}
            if not isinstance(details, dict):
                details = {'details': details}
        except (ValueError, KeyError, TypeError):
            # Not our API talking (a proxy, a load balancer...).
            return make_error(
                None, 'storage node at %s answered HTTP %d %s for %s %s'
                % (self.url, response.status_code, response.reason,
                   response.request.method, response.url),
                {'url': response.url}, response.status_code)
        return make_error(code, message, details, response.status_code)

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise errors.EngineError(
                'storage node at %s answered %s %s with a body that is not '
                'JSON' % (self.url, method, path),
                status=response.status_code)

    @staticmethod
    def _path(*parts: str) -> str:
        return ''.join('/' + urllib.parse.quote(str(p), safe='')
                       for p in parts)

    # -- node -----------------------------------------------------------------

    def ready(self) -> dict:
        """``{"ready": true, "node": name, "health": {...}}``; ``health``
        names the pools out of space or stopped (``state: degraded``).

        A node not ready raises :class:`errors.Unavailable` (after the
        retries: a node that is starting becomes ready within them).
        """
        return self._json('GET', '/ready')

    def node(self) -> dict:
        return self._json('GET', '/node')

    def openapi(self) -> str:
        """The node's OpenAPI document (YAML text)."""
        return self._request('GET', '/openapi.yaml').text

    # -- pools ----------------------------------------------------------------

    def pools(self) -> list[dict]:
        return self._json('GET', '/pools')['pools']

    def pool(self, name: str) -> dict:
        return self._json('GET', self._path('pools', name))

    def check_pool(self, name: str) -> dict:
        """Run the pool's consistency check on the node; the report.

        ``ok`` false is an answer (the problems are in ``errors``), not
        an exception. The check changes nothing: retried freely.
        """
        return self._json('POST', self._path('pools', name, 'check'))

    def reopen_pool(self, name: str) -> dict:
        """Reopen pool ``name`` if an I/O error stopped it (else check it
        again); the pool after, its ``health`` included. Repeating it is
        harmless, so it is retried as a read is.
        """
        return self._json('POST', self._path('pools', name, 'reopen'))

    # -- volumes --------------------------------------------------------------

    def volumes(self, pool: str | None = None,
                name: str | None = None) -> list[dict]:
        return self._json('GET', '/volumes',
                          params={'pool': pool, 'name': name})['volumes']

    def volume(self, id: str) -> dict:
        return self._json('GET', self._path('volumes', id))

    def create_volume(self, name: str, size: int, pool: str | None = None,
                      provisioning: str | None = None,
                      source_snapshot_id: str | None = None,
                      source_volume_id: str | None = None,
                      id: str | None = None) -> dict:
        """Create a volume: empty, or a clone of a snapshot or a volume."""
        if source_snapshot_id and source_volume_id:
            raise errors.InvalidArgument(
                'clone from a snapshot or from a volume, not both')
        id = id or names.new_id()
        body = {'id': id, 'name': name, 'size': size,
                'incarnation': self.issued.issue('volume', id)}
        if pool is not None:
            body['pool'] = pool
        if provisioning is not None:
            body['provisioning'] = provisioning
        if source_snapshot_id:
            body['source'] = {'snapshot_id': source_snapshot_id}
        elif source_volume_id:
            body['source'] = {'volume_id': source_volume_id}
        return self._json('POST', '/volumes', body=body)

    def update_volume(self, id: str, name: str | None = None,
                      size: int | None = None,
                      provisioning: str | None = None) -> dict:
        body = {k: v for k, v in (('name', name), ('size', size),
                                  ('provisioning', provisioning))
                if v is not None}
        return self._json('PATCH', self._path('volumes', id), body=body)

    def extend_volume(self, id: str, size: int) -> dict:
        return self.update_volume(id, size=size)

    def rename_volume(self, id: str, name: str) -> dict:
        return self.update_volume(id, name=name)

    def delete_volume(self, id: str, remove_exports: bool = False) -> None:
        """Delete a volume this client created (or any, if it created
        none by that id); ``remove_exports`` withdraws its exports first.
        """
        self._delete('volume', id, self._path('volumes', id),
                     {'remove_exports': 'true'} if remove_exports else None)

    def _delete(self, kind: str, id: str, path: str,
                params: dict | None = None) -> None:
        tokens = self.issued.sent(kind, id)
        params = dict(params or {}, incarnation=tokens)
        try:
            self._request('DELETE', path, params=params)
        except errors.NotFound:
            self.issued.forget(kind, id, tokens)
            raise
        self.issued.forget(kind, id, tokens)

    def revert_volume(self, id: str, snapshot_id: str) -> dict:
        # Reverting twice to the same snapshot is one revert: retry freely.
        return self._json('POST', self._path('volumes', id, 'revert'),
                          body={'snapshot_id': snapshot_id})

    def flatten_volume(self, id: str) -> dict:
        """Start flattening; returns the job (see :meth:`wait_job`)."""
        # A second flatten would find the first one's job running.
        return self._json('POST', self._path('volumes', id, 'flatten'),
                          idempotent=False)

    # -- jobs -----------------------------------------------------------------

    def jobs(self) -> list[dict]:
        return self._json('GET', '/jobs')['jobs']

    def job(self, id: str) -> dict:
        return self._json('GET', self._path('jobs', id))

    def wait_job(self, job_id: str, poll: float = 0.2,
                 timeout: float | None = None,
                 progress: Callable[[dict], None] | None = None,
                 raise_on_failure: bool = True) -> dict:
        """Poll a job until it finishes; return its final state.

        ``progress(job)`` is called with every state polled, the last
        included. A failed job raises the engine error its ``error`` names
        (``details`` has ``job_id``), unless ``raise_on_failure`` is false;
        :class:`JobTimeout` when ``timeout`` seconds pass first.
        """
        start = time.monotonic()
        while True:
            job = self.job(job_id)
            if progress is not None:
                progress(job)
            if job['state'] != 'running':
                break
            if timeout is not None and time.monotonic() - start >= timeout:
                raise JobTimeout(
                    'job %s is still running after %g s (%s%% done)'
                    % (job_id, timeout, job['progress'].get('percent')),
                    job_id=job_id)
            time.sleep(poll)
        if job['state'] == 'failed' and raise_on_failure:
            error = job.get('error') or {}
            raise make_error(
                error.get('code'),
                error.get('message') or 'job %s failed' % job_id,
                {'job_id': job_id, 'volume_id': job.get('volume_id')})
        return job

    # -- snapshots ------------------------------------------------------------

    def snapshots(self, volume_id: str | None = None,
                  name: str | None = None) -> list[dict]:
        return self._json('GET', '/snapshots',
                          params={'volume_id': volume_id,
                                  'name': name})['snapshots']

    def snapshot(self, id: str) -> dict:
        return self._json('GET', self._path('snapshots', id))

    def create_snapshot(self, volume_id: str, name: str,
                        id: str | None = None) -> dict:
        id = id or names.new_id()
        return self._json('POST', '/snapshots',
                          body={'id': id, 'name': name,
                                'volume_id': volume_id,
                                'incarnation': self.issued.issue('snapshot',
                                                                 id)})

    def delete_snapshot(self, id: str) -> None:
        self._delete('snapshot', id, self._path('snapshots', id))

    # -- exports --------------------------------------------------------------

    def exports(self, volume_id: str | None = None) -> list[dict]:
        return self._json('GET', '/exports',
                          params={'volume_id': volume_id})['exports']

    def export(self, id: str) -> dict:
        return self._json('GET', self._path('exports', id))

    def create_export(self, volume_id: str, hosts: list[str],
                      read_only: bool = False, protocol: str = 'nbd',
                      id: str | None = None) -> dict:
        """Export a volume (or, read-only, a snapshot) to ``hosts``: IP
        addresses or networks with protocol ``nbd``, initiators' MAC
        addresses with ``aoe`` (the node must serve AoE). The answer's
        ``connection`` says how to reach it (NBD: host, port,
        export_name; AoE: shelf, slot, the target's mac, interface).
        """
        if isinstance(hosts, str):
            hosts = [hosts]
        id = id or names.new_id()
        return self._json('POST', '/exports',
                          body={'id': id,
                                'volume_id': volume_id, 'hosts': list(hosts),
                                'read_only': read_only,
                                'protocol': protocol,
                                'incarnation': self.issued.issue('export',
                                                                 id)})

    def delete_export(self, id: str) -> None:
        self._delete('export', id, self._path('exports', id))
