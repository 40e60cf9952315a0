"""The clustered metadata store: etcd, through its gRPC-JSON gateway.

When several storage nodes share state, etcd decides (no home-made
consensus). We talk to etcd's HTTP/JSON gateway with ``etcd3gw``, the
library tooz and Cinder already use, so no gRPC stack is needed.

Every decision is one etcd transaction, so it is atomic across hosts:

* ``create``: compare ``create_revision == 0`` (the key does not exist),
  then put;
* compare-and-swap ``put``/``delete``: compare ``mod_revision`` with the
  revision the caller read (``create_revision == 0`` for "must not exist");
* ``allocate``: read the numbers taken, then ``create`` the first free one;
  a lost race only means trying the next candidate.

A key's revision is its ``mod_revision``: etcd's store-wide revision at its
last change, so it is never reused for the same key.

Retries (tenacity, bounded, short waits) cover only faults that are really
transient *and* safe to repeat: any connection failure for reads, but for
writes only a connection that was never established (connection refused,
connect timeout), because a write whose answer was lost may have happened
and repeating a ``create`` would then report the caller's own key as taken.
A dead etcd becomes :class:`StoreUnavailable`.

Keys live under a namespace taken from the URL path
(``etcd3+http://host:2379/<namespace>``, default ``storage-engine``), so
several deployments, or several test runs, can share one etcd.
"""

import base64
from collections.abc import Iterable
from typing import Any
import urllib.parse

import etcd3gw
from etcd3gw import exceptions as etcd_exceptions
import tenacity

from storage_engine import httpfaults
from storage_engine.metastore import base
from storage_engine.metastore import errors

DEFAULT_PORT = 2379
DEFAULT_NAMESPACE = 'storage-engine'
DEFAULT_TIMEOUT = 5.0
DEFAULT_ATTEMPTS = 4

_CONNECTION_ERRORS = (etcd_exceptions.ConnectionFailedError,
                      etcd_exceptions.ConnectionTimeoutError)


def _b64(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode('utf-8')
    return base64.b64encode(data).decode('ascii')


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _never_sent(exc: BaseException) -> bool:
    """True if ``exc`` says the request never reached etcd."""
    return isinstance(exc, _CONNECTION_ERRORS) and \
        httpfaults.never_sent(exc)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, _CONNECTION_ERRORS)


class EtcdStore(base.MetadataStore):
    """A :class:`MetadataStore` in etcd (v3 API, gRPC-JSON gateway)."""

    def __init__(self, host: str, port: int = DEFAULT_PORT,
                 namespace: str = DEFAULT_NAMESPACE,
                 timeout: float = DEFAULT_TIMEOUT,
                 attempts: int = DEFAULT_ATTEMPTS,
                 max_wait: float = 0.5) -> None:
        self.url = 'etcd3+http://%s:%d/%s' % (host, port, namespace)
        self._root = base.check_key(namespace) + '/'
        self._client = etcd3gw.Etcd3Client(
            host=host, port=port, protocol='http', timeout=timeout)
        self._attempts = attempts
        self._max_wait = max_wait

    @classmethod
    def from_url(cls, url: str) -> 'EtcdStore':
        """Open ``etcd3+http://host[:port][/namespace][?timeout=SECONDS]``."""
        parts = urllib.parse.urlsplit(url)
        try:
            host, port = parts.hostname, parts.port or DEFAULT_PORT
        except ValueError:
            host = None
        if not host:
            raise errors.InvalidStoreURL(
                'invalid etcd store URL %r: use etcd3+http://host:port'
                % url, url=url)
        namespace = urllib.parse.unquote(parts.path).strip('/')
        timeout = base.url_timeout(url, parts.query, DEFAULT_TIMEOUT)
        return cls(host, port, namespace or DEFAULT_NAMESPACE, timeout)

    # -- plumbing -------------------------------------------------------------

    def _post(self, path: str, payload: dict[str, Any],
              idempotent: bool) -> dict[str, Any]:
        """POST to the gateway, with bounded retries of transient faults."""
        def call() -> dict[str, Any]:
            # get_url discovers the API path on first use: retried too.
            return self._client.post(self._client.get_url(path),
                                     json=payload)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=tenacity.wait_exponential(multiplier=0.05,
                                           max=self._max_wait),
            retry=tenacity.retry_if_exception(
                _transient if idempotent else _never_sent),
            reraise=True)
        try:
            return retrying(call)
        except _CONNECTION_ERRORS as exc:
            detail = exc.detail_text or type(exc).__name__
            if not idempotent and not _never_sent(exc):
                detail += ('; the change may or may not have been made: '
                           'read the key before trying again')
            raise errors.StoreUnavailable(
                'etcd metadata store %s is unavailable: %s'
                % (self.url, detail), url=self.url) from exc
        except etcd_exceptions.Etcd3Exception as exc:
            raise errors.StoreError(
                'etcd metadata store %s failed: %s'
                % (self.url, exc.detail_text or type(exc).__name__),
                url=self.url) from exc

    def _txn(self, compare: list[dict[str, Any]],
             success: list[dict[str, Any]],
             failure: list[dict[str, Any]] | None = None,
             idempotent: bool = False) -> dict[str, Any]:
        return self._post('/kv/txn', {'compare': compare, 'success': success,
                                      'failure': failure or []},
                          idempotent)

    def _full(self, key: str) -> str:
        return self._root + key

    def _range_of(self, directory: str) -> dict[str, str]:
        """The etcd range of the keys under ``directory`` (``'a/'`` or '')."""
        start = (self._root + directory).encode('utf-8')
        # The range ends where the last byte ('/') is incremented.
        end = start[:-1] + bytes([start[-1] + 1])
        return {'key': _b64(start), 'range_end': _b64(end)}

    def _kv(self, kv: dict[str, Any]) -> tuple[str, base.Value, int]:
        key = _unb64(kv['key']).decode('utf-8')[len(self._root):]
        value = base.decode_value(key, _unb64(kv.get('value', '')))
        return key, value, int(kv['mod_revision'])

    @staticmethod
    def _revision(response: dict[str, Any]) -> int:
        return int(response['header']['revision'])

    @staticmethod
    def _failure_revision(response: dict[str, Any]) -> int:
        """mod_revision seen by a failed txn's range (0: absent)."""
        kvs = response['responses'][0]['response_range'].get('kvs', [])
        return int(kvs[0]['mod_revision']) if kvs else 0

    def _create(self, key: str, text: str) -> int | None:
        """Create ``key`` unless it exists; its revision, or None."""
        full = _b64(self._full(key))
        response = self._txn(
            [{'key': full, 'target': 'CREATE', 'result': 'EQUAL',
              'create_revision': 0}],
            [{'request_put': {'key': full, 'value': _b64(text)}}])
        if not response.get('succeeded', False):
            return None
        return self._revision(response)

    # -- the interface --------------------------------------------------------

    def create(self, key: str, value: base.Value) -> base.Revision:
        text = base.encode_value(base.check_key(key), value)
        revision = self._create(key, text)
        if revision is None:
            raise errors.KeyExists('metadata key %s already exists' % key,
                                   key=key)
        return revision

    def get(self, key: str) -> tuple[base.Value, base.Revision]:
        base.check_key(key)
        response = self._post('/kv/range', {'key': _b64(self._full(key))},
                              idempotent=True)
        kvs = response.get('kvs')
        if not kvs:
            raise errors.NotFound('metadata key %s not found' % key, key=key)
        _key, value, revision = self._kv(kvs[0])
        return value, revision

    def put(self, key: str, value: base.Value,
            expect_revision: base.Revision | None = None) -> base.Revision:
        text = base.encode_value(base.check_key(key), value)
        base.check_revision(expect_revision)
        full = _b64(self._full(key))
        request = [{'request_put': {'key': full, 'value': _b64(text)}}]
        if expect_revision is None:
            # A blind put is last-writer-wins anyway: safe to repeat.
            return self._revision(self._txn([], request, idempotent=True))
        response = self._txn([self._compare(full, expect_revision)], request,
                             [{'request_range': {'key': full}}])
        if not response.get('succeeded', False):
            raise base.mismatch(key, expect_revision,
                                self._failure_revision(response))
        return self._revision(response)

    def delete(self, key: str,
               expect_revision: base.Revision | None = None) -> None:
        base.check_key(key)
        base.check_revision(expect_revision)
        full = _b64(self._full(key))
        compare = ([] if expect_revision is None
                   else [self._compare(full, expect_revision)])
        response = self._txn(compare,
                             [{'request_delete_range': {'key': full}}],
                             [{'request_range': {'key': full}}])
        if response.get('succeeded', False):
            deleted = response['responses'][0]['response_delete_range']
            if int(deleted.get('deleted', 0)):
                return
            actual = 0
        else:
            actual = self._failure_revision(response)
        if not actual:
            raise errors.NotFound('metadata key %s not found' % key, key=key)
        raise base.mismatch(key, expect_revision, actual)

    @staticmethod
    def _compare(full: str, expect_revision: int) -> dict[str, Any]:
        if expect_revision == 0:
            return {'key': full, 'target': 'CREATE', 'result': 'EQUAL',
                    'create_revision': 0}
        return {'key': full, 'target': 'MOD', 'result': 'EQUAL',
                'mod_revision': expect_revision}

    def list(self, prefix: str) -> dict[str, tuple[base.Value,
                                                   base.Revision]]:
        directory = base.check_prefix(prefix)
        response = self._post('/kv/range', self._range_of(directory),
                              idempotent=True)
        result = {}
        for kv in response.get('kvs', []):
            key, value, revision = self._kv(kv)
            result[key] = (value, revision)
        return result

    def allocate(self, prefix: str, candidates: Iterable[int],
                 value: base.Value) -> int:
        directory = base.check_prefix(prefix)
        if not directory:
            raise base.no_allocation_root()
        text = base.encode_value(directory, value)
        payload = dict(self._range_of(directory), keys_only=True)
        response = self._post('/kv/range', payload, idempotent=True)
        taken = base.numbers_in(
            self._root + directory,
            (_unb64(kv['key']).decode('utf-8')
             for kv in response.get('kvs', [])))
        tried = 0
        for number in candidates:
            tried += 1
            base.check_number(prefix, number)
            if number in taken:
                continue
            # The snapshot above may be stale: the create transaction is
            # the arbiter, and losing it only means trying the next one.
            if self._create(directory + str(number), text) is not None:
                return number
            taken.add(number)
        raise base.exhausted(prefix, tried)

    def release(self, prefix: str, number: int) -> None:
        self.delete(base.allocation_key(prefix, number))

    def close(self) -> None:
        self._client.session.close()
