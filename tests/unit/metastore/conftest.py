"""Fixtures of the metadata store tests: a real etcd, and store URLs.

The etcd is the session's (tests/conftest.py, tests/fixtures/etcd.py).
Without it the etcd tests fail (never skip): the contract would otherwise
silently be checked against one backend only.

Every test gets its own store: a new SQLite file, or a new namespace in the
shared etcd, so counts of keys are exact.
"""

import uuid

import pytest

from tests.fixtures.etcd import free_port


@pytest.fixture(params=['sqlite', 'etcd'])
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_url(backend, request, tmp_path) -> str:
    """The URL of a fresh, empty store of the backend under test."""
    if backend == 'sqlite':
        return 'sqlite://' + str(tmp_path / 'meta.db')
    etcd = request.getfixturevalue('etcd')
    return etcd.store_url('test-' + uuid.uuid4().hex)


@pytest.fixture
def unreachable_url(backend, tmp_path) -> str:
    """A URL of the backend where no store can be reached."""
    if backend == 'sqlite':
        # A directory that does not exist: SQLite cannot open the file.
        return 'sqlite://' + str(tmp_path / 'missing' / 'meta.db')
    return 'etcd3+http://127.0.0.1:%d/test' % free_port()


@pytest.fixture
def store(store_url):
    from storage_engine import metastore
    with metastore.open_store(store_url) as opened:
        yield opened
