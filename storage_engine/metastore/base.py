"""The metadata store interface every backend implements.

The storage-node service keeps its cluster state (nodes, volume names and
ids, exports, address allocations such as NBD ports and AoE shelf/slot
numbers) in a small key-value store. Like tooz's coordination drivers, the
interface is deliberately small so that the embedded SQLite backend and the
etcd backend can keep exactly the same promises, and a contract test holds
both to them:

* keys are ``/``-separated strings (``nodes/<node>/volumes/<id>``), values
  are JSON objects (dicts);
* every key carries a *revision*, an integer that changes on every write
  of that key and is never reused for the same key, even after a delete and
  a re-create (so a compare-and-swap can never be fooled by a stale
  revision: no ABA);
* ``create`` and ``allocate`` are atomic across processes and hosts sharing
  the store: this is what makes two service processes never hand out the
  same name, id, port or slot.
"""

import abc
from collections.abc import Iterable
import json
import types
from typing import Any
import urllib.parse

from storage_engine import errors as engine_errors
from storage_engine.metastore import errors

Value = dict[str, Any]
Revision = int


class MetadataStore(abc.ABC):
    """A key-value store of JSON objects with revisions.

    Use it as a context manager, or call :meth:`close`. A store object may
    be shared by the threads of one process; processes open their own.
    """

    #: the URL the store was opened with (for messages)
    url: str = ''

    @abc.abstractmethod
    def create(self, key: str, value: Value) -> Revision:
        """Create ``key`` atomically; return its revision.

        :raises KeyExists: the key is already present.
        """

    @abc.abstractmethod
    def get(self, key: str) -> tuple[Value, Revision]:
        """Return ``(value, revision)`` of ``key``.

        :raises NotFound: the key is absent.
        """

    @abc.abstractmethod
    def put(self, key: str, value: Value,
            expect_revision: Revision | None = None) -> Revision:
        """Write ``key``; return its new revision.

        With ``expect_revision`` this is a compare-and-swap: the write
        happens only if the key's revision is still that one, and
        ``expect_revision=0`` means "only if the key does not exist".

        :raises RevisionMismatch: the key changed (or appeared, or went).
        """

    @abc.abstractmethod
    def delete(self, key: str,
               expect_revision: Revision | None = None) -> None:
        """Delete ``key``, only at ``expect_revision`` if that is given.

        :raises NotFound: the key is absent.
        :raises RevisionMismatch: the key is at another revision.
        """

    @abc.abstractmethod
    def list(self, prefix: str) -> dict[str, tuple[Value, Revision]]:
        """Return ``{key: (value, revision)}`` of every key under ``prefix``.

        ``prefix`` names a directory: ``list('nodes/n1')`` returns
        ``nodes/n1/...`` but never ``nodes/n10/...``; ``''`` lists the whole
        store.
        """

    @abc.abstractmethod
    def allocate(self, prefix: str, candidates: Iterable[int],
                 value: Value) -> int:
        """Claim the first free number of ``candidates`` under ``prefix``.

        The claim is the key ``<prefix>/<number>`` holding ``value``;
        concurrent callers (other threads, processes or hosts sharing the
        store) never get the same number. ``candidates`` are non-negative
        integers (a port range, AoE slots ``range(16)``...), tried in order.

        :raises Exhausted: every candidate is taken.
        """

    @abc.abstractmethod
    def release(self, prefix: str, number: int) -> None:
        """Give back a number claimed by :meth:`allocate`.

        :raises NotFound: the number is not allocated.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; the store object is unusable after."""

    def __enter__(self) -> 'MetadataStore':
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return '<%s %s>' % (type(self).__name__, self.url)


# -- argument checks shared by the backends ---------------------------------
# Both backends check the same way, so a bad argument gets the same error
# whichever store is configured.

def check_key(key: str) -> str:
    """Return ``key`` if it is a well-formed key, else raise."""
    if (not isinstance(key, str) or not key or key.startswith('/')
            or key.endswith('/') or '//' in key or '\0' in key):
        raise engine_errors.InvalidArgument(
            'invalid metadata key %r: a non-empty string of /-separated '
            'parts, without a leading or trailing /' % (key,), key=key)
    return key


def check_prefix(prefix: str) -> str:
    """Return the directory form of ``prefix`` (``'a/b/'``, or ``''``)."""
    if prefix == '':
        return ''
    return check_key(prefix.rstrip('/') if isinstance(prefix, str)
                     else prefix) + '/'


def encode_value(key: str, value: Value) -> str:
    """Serialise ``value`` (a JSON object) canonically."""
    if not isinstance(value, dict):
        raise engine_errors.InvalidArgument(
            'metadata value of %s must be a dict, not %s'
            % (key, type(value).__name__), key=key)
    try:
        return json.dumps(value, sort_keys=True, separators=(',', ':'),
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise engine_errors.InvalidArgument(
            'metadata value of %s is not JSON-serialisable: %s'
            % (key, exc), key=key) from None


def decode_value(key: str, text: str | bytes) -> Value:
    """Parse a stored value; anything but a JSON object is an error."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise errors.StoreError(
            'stored value of %s is not JSON: %s' % (key, exc),
            key=key) from None
    if not isinstance(value, dict):
        raise errors.StoreError(
            'stored value of %s is not a JSON object' % key, key=key)
    return value


def check_number(prefix: str, number: int) -> int:
    """Return ``number`` if it can name an allocation, else raise."""
    if (not isinstance(number, int) or isinstance(number, bool)
            or number < 0):
        raise engine_errors.InvalidArgument(
            'allocation candidate under %s must be a non-negative integer, '
            'not %r' % (prefix, number), prefix=prefix)
    return number


def allocation_key(prefix: str, number: int) -> str:
    """The key that records the allocation of ``number`` under ``prefix``."""
    return check_prefix(prefix) + str(check_number(prefix, number))


def check_revision(revision: Revision | None) -> None:
    """Raise unless ``revision`` is None or a non-negative integer."""
    if revision is None:
        return
    if (not isinstance(revision, int) or isinstance(revision, bool)
            or revision < 0):
        raise engine_errors.InvalidArgument(
            'expected revision must be a non-negative integer, not %r'
            % (revision,))


def mismatch(key: str, expected: Revision,
             actual: Revision) -> errors.RevisionMismatch:
    """The error of a compare-and-swap that lost (actual 0: absent)."""
    if expected == 0:
        what = 'exists (revision %d)' % actual
    elif actual == 0:
        what = 'no longer exists'
    else:
        what = 'is at revision %d' % actual
    return errors.RevisionMismatch(
        'metadata key %s changed: expected revision %d, but it %s'
        % (key, expected, what), key=key, expected=expected, actual=actual)


def no_allocation_root() -> Exception:
    return engine_errors.InvalidArgument(
        'allocate needs a prefix: numbers are claimed as <prefix>/<number>')


def numbers_in(directory: str, keys: Iterable[str]) -> set[int]:
    """The numbers allocated as ``<directory><number>`` among ``keys``."""
    numbers = set()
    for key in keys:
        last = key[len(directory):]
        if key.startswith(directory) and last.isascii() and last.isdigit():
            numbers.add(int(last))
    return numbers


def exhausted(prefix: str, tried: int) -> errors.Exhausted:
    return errors.Exhausted(
        'no free number under %s: all %d candidates are taken'
        % (prefix, tried), prefix=prefix, candidates=tried)


def url_timeout(url: str, query: str, default: float) -> float:
    """The ``timeout`` option of a store URL's query, in seconds."""
    options = urllib.parse.parse_qs(query)
    if 'timeout' not in options:
        return default
    try:
        return float(options['timeout'][-1])
    except ValueError:
        raise errors.InvalidStoreURL('invalid timeout in store URL %r' % url,
                                     url=url) from None
