"""Errors of the metadata store, inside the engine's one hierarchy.

Each class derives from the :mod:`storage_engine.errors` class whose meaning
it narrows, so the management API and the client translate a store error
exactly as they translate the engine's own (a key that exists is an
"already exists", an exhausted port range is "no space") without knowing
that a metadata store is involved.
"""

import errno as _errno

from storage_engine import errors


class KeyExists(errors.AlreadyExists):
    """``create`` found the key already there: someone else owns it."""

    code = 'key_exists'


class NotFound(errors.NotFound):
    """The key is not in the store."""

    code = 'key_not_found'


class RevisionMismatch(errors.Busy):
    """A compare-and-swap lost: the key changed since it was read.

    The caller re-reads the key and decides again; retrying blindly would
    overwrite the change that won.
    """

    code = 'revision_mismatch'


class Exhausted(errors.NoSpace):
    """``allocate`` found every candidate number taken."""

    code = 'exhausted'


class InvalidStoreURL(errors.InvalidArgument):
    """The store URL cannot be used (no absolute path, bad option...)."""

    code = 'invalid_store_url'


class UnknownScheme(InvalidStoreURL):
    """No backend serves the URL's scheme."""

    code = 'unknown_store_scheme'


class StoreUnavailable(errors.Unavailable):
    """The store cannot be reached (etcd down, SQLite file unopenable or
    locked for longer than the busy timeout). Transient from the caller's
    point of view: the same request may succeed later.
    """

    code = 'store_unavailable'
    errno = _errno.ECONNREFUSED


class StoreError(errors.EngineError):
    """The store answered something this code does not understand (an
    unexpected HTTP status, a value that is not a JSON object...).
    """

    code = 'store_error'
