"""What only the SQLite backend has: WAL mode and its lock waiting.

Several processes on one host share the file; these prove the settings
that make that safe: WAL, and a writer that waits for another's
transaction (up to the busy timeout) instead of failing at once.
"""

import sqlite3
import threading

import pytest

from storage_engine import metastore


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / 'meta.db')


def test_the_store_file_is_in_wal_mode(path):
    with metastore.open_store('sqlite://' + path) as store:
        store.create('k', {})

    with sqlite3.connect(path) as db:
        assert db.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'


def test_a_writer_waits_for_another_transaction_to_finish(path):
    with metastore.open_store('sqlite://' + path) as store:
        other = sqlite3.connect(path, isolation_level=None,
                                check_same_thread=False)
        other.execute('BEGIN IMMEDIATE')
        other.execute("INSERT INTO kv VALUES ('first', '{}', 1000)")
        # Commit from another thread while the store waits for the lock.
        committer = threading.Timer(0.2, other.execute, ('COMMIT',))
        committer.start()
        try:
            revision = store.create('second', {})
        finally:
            committer.join()
            other.close()

        assert set(store.list('')) == {'first', 'second'}
        assert store.get('second') == ({}, revision)


def test_a_writer_locked_out_past_the_busy_timeout_gets_unavailable(path):
    with metastore.open_store('sqlite://%s?timeout=0.1' % path) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute('BEGIN IMMEDIATE')
        try:
            with pytest.raises(metastore.StoreUnavailable) as raised:
                store.create('k', {})
            assert 'locked' in str(raised.value)
        finally:
            other.execute('ROLLBACK')
            other.close()

        store.create('k', {})
        assert list(store.list('')) == ['k']
