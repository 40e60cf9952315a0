"""The embedded metadata store: one SQLite file, for a single node.

Why SQLite and how it stays safe when several processes on one host open
the same file (the service, the CLI, a second service instance started by
mistake):

* WAL journal mode, so readers never block the one writer and a crash
  leaves a database that opens cleanly;
* every change runs in a ``BEGIN IMMEDIATE`` transaction: the write lock
  is taken *before* the read that decides (does the key exist? which
  numbers are taken?), so no other process can slip in between the check
  and the write. That is what makes ``create`` and ``allocate`` atomic;
* a busy timeout, so a process waits for the lock instead of failing at
  once; past it the store reports :class:`StoreUnavailable`.

Revisions come from one counter for the whole file (like etcd's store
revision): every change takes the next value and records it on the key.
A per-key counter starting at 1 would give a deleted-then-recreated key a
revision it already had, and a compare-and-swap holding the old one would
wrongly succeed.
"""

from collections.abc import Iterable
from collections.abc import Iterator
import contextlib
import os
import sqlite3
import threading
import urllib.parse

import tenacity

from storage_engine.metastore import base
from storage_engine.metastore import errors

DEFAULT_BUSY_TIMEOUT = 10.0

_SCHEMA = (
    'CREATE TABLE IF NOT EXISTS kv ('
    ' key TEXT PRIMARY KEY,'
    ' value TEXT NOT NULL,'
    ' revision INTEGER NOT NULL) WITHOUT ROWID',
    'CREATE TABLE IF NOT EXISTS meta ('
    ' name TEXT PRIMARY KEY,'
    ' value INTEGER NOT NULL) WITHOUT ROWID',
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0)",
)


def _range(prefix: str) -> tuple[str, str]:
    """Bounds of the keys under a directory prefix ending with ``/``.

    ``'/'`` is 0x2F and ``'0'`` 0x30, so ``[a/, a0)`` is exactly the keys
    starting with ``a/`` in SQLite's byte-wise (BINARY) ordering.
    """
    return prefix, prefix[:-1] + '0'


class SQLiteStore(base.MetadataStore):
    """A :class:`MetadataStore` in one SQLite file."""

    def __init__(self, path: str,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        if not os.path.isabs(path):
            raise errors.InvalidStoreURL(
                'the SQLite metadata store needs an absolute path, '
                'not %r' % path, path=path)
        self.url = 'sqlite://' + path
        self.path = path
        # One connection per store object, used under a lock: sqlite3
        # connections must not run two statements at once.
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None,
                check_same_thread=False)
            mode = self._set_wal(self._db, busy_timeout)
            if mode != 'wal':
                raise errors.StoreError(
                    'cannot put %s in WAL mode (got %r)' % (path, mode),
                    path=path)
            # Durable commits: a created key survives a power cut.
            self._db.execute('PRAGMA synchronous=FULL')
            with self._write() as cur:
                for statement in _SCHEMA:
                    cur.execute(statement)
        except BaseException as exc:
            self.close()
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise

    @staticmethod
    def _set_wal(db: sqlite3.Connection, busy_timeout: float) -> str:
        """Switch to WAL (a no-op once the file is in WAL: it persists).

        The switch needs an exclusive lock, and when several processes
        open a new file at once SQLite may answer "locked" without calling
        the busy handler: poll for it, up to the busy timeout.
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(busy_timeout),
            wait=tenacity.wait_random_exponential(multiplier=0.005, max=0.1),
            retry=tenacity.retry_if_exception_type(sqlite3.OperationalError),
            reraise=True)
        return retrying(
            lambda: db.execute('PRAGMA journal_mode=WAL').fetchone()[0])

    @classmethod
    def from_url(cls, url: str) -> 'SQLiteStore':
        """Open ``sqlite:///abs/path.db[?timeout=SECONDS]``."""
        parts = urllib.parse.urlsplit(url)
        if parts.netloc or not parts.path.startswith('/'):
            raise errors.InvalidStoreURL(
                'invalid SQLite store URL %r: use sqlite:///absolute/path.db'
                % url, url=url)
        busy_timeout = base.url_timeout(url, parts.query,
                                        DEFAULT_BUSY_TIMEOUT)
        return cls(urllib.parse.unquote(parts.path), busy_timeout)

    # -- plumbing -------------------------------------------------------------

    def _translate(self, exc: sqlite3.Error) -> Exception:
        if isinstance(exc, sqlite3.OperationalError):
            # "database is locked" past the busy timeout, "unable to open
            # database file", disk I/O errors: the request may succeed later.
            return errors.StoreUnavailable(
                'SQLite metadata store %s is unavailable: %s'
                % (self.path, exc), url=self.url)
        return errors.StoreError(
            'SQLite metadata store %s failed: %s' % (self.path, exc),
            url=self.url)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise errors.StoreError('metadata store %s is closed' % self.url,
                                    url=self.url)
        return self._db

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            try:
                yield self._connection().cursor()
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One ``BEGIN IMMEDIATE`` transaction, committed on success."""
        with self._lock:
            db = self._connection()
            try:
                db.execute('BEGIN IMMEDIATE')
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc
            try:
                yield db.cursor()
                db.execute('COMMIT')
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute('ROLLBACK')
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from exc
                raise

    @staticmethod
    def _revision_of(cur: sqlite3.Cursor, key: str) -> int:
        row = cur.execute('SELECT revision FROM kv WHERE key = ?',
                          (key,)).fetchone()
        return row[0] if row else 0

    @staticmethod
    def _store(cur: sqlite3.Cursor, key: str, text: str) -> int:
        revision = cur.execute(
            "UPDATE meta SET value = value + 1 WHERE name = 'revision' "
            'RETURNING value').fetchone()[0]
        cur.execute(
            'INSERT INTO kv (key, value, revision) VALUES (?, ?, ?) '
            'ON CONFLICT (key) DO UPDATE SET value = excluded.value, '
            'revision = excluded.revision', (key, text, revision))
        return revision

    # -- the interface --------------------------------------------------------

    def create(self, key: str, value: base.Value) -> base.Revision:
        text = base.encode_value(base.check_key(key), value)
        with self._write() as cur:
            if self._revision_of(cur, key):
                raise errors.KeyExists('metadata key %s already exists' % key,
                                       key=key)
            return self._store(cur, key, text)

    def get(self, key: str) -> tuple[base.Value, base.Revision]:
        base.check_key(key)
        with self._read() as cur:
            row = cur.execute('SELECT value, revision FROM kv WHERE key = ?',
                              (key,)).fetchone()
        if row is None:
            raise errors.NotFound('metadata key %s not found' % key, key=key)
        return base.decode_value(key, row[0]), row[1]

    def put(self, key: str, value: base.Value,
            expect_revision: base.Revision | None = None) -> base.Revision:
        text = base.encode_value(base.check_key(key), value)
        base.check_revision(expect_revision)
        with self._write() as cur:
            if expect_revision is not None:
                actual = self._revision_of(cur, key)
                if actual != expect_revision:
                    raise base.mismatch(key, expect_revision, actual)
            return self._store(cur, key, text)

    def delete(self, key: str,
               expect_revision: base.Revision | None = None) -> None:
        base.check_key(key)
        base.check_revision(expect_revision)
        with self._write() as cur:
            actual = self._revision_of(cur, key)
            if not actual:
                raise errors.NotFound('metadata key %s not found' % key,
                                      key=key)
            if expect_revision is not None and actual != expect_revision:
                raise base.mismatch(key, expect_revision, actual)
            cur.execute('DELETE FROM kv WHERE key = ?', (key,))

    def list(self, prefix: str) -> dict[str, tuple[base.Value,
                                                   base.Revision]]:
        directory = base.check_prefix(prefix)
        with self._read() as cur:
            if directory:
                rows = cur.execute(
                    'SELECT key, value, revision FROM kv '
                    'WHERE key >= ? AND key < ? ORDER BY key',
                    _range(directory)).fetchall()
            else:
                rows = cur.execute('SELECT key, value, revision FROM kv '
                                   'ORDER BY key').fetchall()
        return {key: (base.decode_value(key, text), revision)
                for key, text, revision in rows}

    def allocate(self, prefix: str, candidates: Iterable[int],
                 value: base.Value) -> int:
        directory = base.check_prefix(prefix)
        if not directory:
            raise base.no_allocation_root()
        text = base.encode_value(directory, value)
        with self._write() as cur:
            # The write lock is held from here: what we see taken stays
            # taken, and what we see free stays free until we commit.
            taken = base.numbers_in(
                directory, (key for (key,) in cur.execute(
                    'SELECT key FROM kv WHERE key >= ? AND key < ?',
                    _range(directory))))
            tried = 0
            for number in candidates:
                tried += 1
                base.check_number(prefix, number)
                if number not in taken:
                    self._store(cur, directory + str(number), text)
                    return number
            raise base.exhausted(prefix, tried)

    def release(self, prefix: str, number: int) -> None:
        self.delete(base.allocation_key(prefix, number))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
