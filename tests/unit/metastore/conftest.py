"""Fixtures of the metadata store tests: a real etcd, and store URLs.

The etcd is the Debian package's ``/usr/bin/etcd``, started once per
session on 127.0.0.1 with free ports and a temporary data directory, ready
when its ``/health`` endpoint says so (polled, never a fixed sleep), and
stopped by the PID this fixture started. Without it the etcd tests fail
(never skip): the contract would otherwise silently be checked against one
backend only.

Every test gets its own store: a new SQLite file, or a new namespace in the
shared etcd, so counts of keys are exact.
"""

from collections.abc import Iterator
import dataclasses
import json
import os
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

ETCD = '/usr/bin/etcd'
READY_TIMEOUT = 30.0


@dataclasses.dataclass
class Etcd:
    process: subprocess.Popen
    client_url: str
    log_path: str

    def store_url(self, namespace: str) -> str:
        return 'etcd3+' + self.client_url + '/' + namespace

    def log_tail(self, lines: int = 20) -> str:
        with open(self.log_path, errors='replace') as log:
            return ''.join(log.readlines()[-lines:])


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _healthy(client_url: str) -> bool:
    try:
        with urllib.request.urlopen(client_url + '/health',
                                    timeout=1) as response:
            return json.load(response).get('health') == 'true'
    except (OSError, ValueError):
        return False


@pytest.fixture(scope='session')
def etcd(tmp_path_factory) -> Iterator[Etcd]:
    if not os.access(ETCD, os.X_OK):
        pytest.fail('%s not found: the metadata store tests need a real etcd;'
                    ' run tools/setup-env.sh (it installs etcd-server from'
                    ' bindep.txt)' % ETCD, pytrace=False)
    top = tmp_path_factory.mktemp('etcd')
    client_url = 'http://127.0.0.1:%d' % free_port()
    peer_url = 'http://127.0.0.1:%d' % free_port()
    log_path = str(top / 'etcd.log')
    with open(log_path, 'wb') as log:
        process = subprocess.Popen(
            [ETCD, '--name', 'metastore-test',
             '--data-dir', str(top / 'data'),
             '--listen-client-urls', client_url,
             '--advertise-client-urls', client_url,
             '--listen-peer-urls', peer_url,
             '--initial-advertise-peer-urls', peer_url,
             '--initial-cluster', 'metastore-test=' + peer_url,
             '--initial-cluster-state', 'new',
             '--initial-cluster-token', uuid.uuid4().hex],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = Etcd(process, client_url, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _healthy(client_url):
            if process.poll() is not None:
                pytest.fail('etcd exited with status %s before it was ready:'
                            '\n%s' % (process.returncode, server.log_tail()),
                            pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail('etcd was not healthy after %ds:\n%s'
                            % (READY_TIMEOUT, server.log_tail()),
                            pytrace=False)
            time.sleep(0.05)
        yield server
    finally:
        # Exactly the process started above, by its PID.
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
