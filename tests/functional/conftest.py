"""Fixtures of the functional tier: real services, started and stopped here.

``node_factory`` makes storage-node services (tests/fixtures/node.py) and
stops every one it started when the test ends; ``node`` is one started
node with the embedded SQLite metadata store.

The Cinder fixtures are per session (``etcd`` is in tests/conftest.py):

- ``rabbitmq``: a private RabbitMQ (tests/fixtures/rabbitmq.py); its
  ``transport_url`` is the session's vhost;
- ``mariadb``: a private MariaDB (tests/fixtures/mariadb.py);
  ``create_database(name)`` returns a SQLAlchemy URL;
- ``cinder_node``: the storage node behind Cinder (a 64G sparse pool);
- ``glance``: glance-api without Keystone, a file store, its database on
  ``mariadb`` (tests/fixtures/glance.py): ``glance.client()`` is a
  python-glanceclient Client calling as Cinder does, ``url``;
- ``cinder``: cinder-api, cinder-scheduler and cinder-volume with our
  LVM-style backend over ``cinder_node``, its image service ``glance``
  (tests/fixtures/cinder.py):
  ``cinder.client()`` is a python-cinderclient Client,
  ``restart_volume_service()``, ``log_tails()``, ``node``, ``backend``;
- ``cinder_client``: ``cinder.client()``.

How long each took to start is printed at the end of the run, and a
failing test that used ``cinder`` gets the end of the services' logs in
its report (and of glance-api's, if it used ``glance``).
"""

import time

import pytest

from tests.fixtures import cinder as cinder_mod
from tests.fixtures import glance as glance_mod
from tests.fixtures import mariadb as mariadb_mod
from tests.fixtures import node as node_mod
from tests.fixtures import rabbitmq as rabbitmq_mod

STARTUP_TIMES = pytest.StashKey[dict]()


def _record(config, name: str, seconds: float) -> None:
    config.stash.setdefault(STARTUP_TIMES, {})[name] = seconds


@pytest.fixture
def node_factory(tmp_path):
    started = []

    def make(name: str = 'node1', start: bool = True, **kwargs):
        node = node_mod.NodeProcess(tmp_path, name, **kwargs)
        started.append(node)
        return node.start() if start else node

    yield make
    # Every node is stopped even if stopping one of them fails (which
    # fails the test, after the others are gone).
    failed = []
    for node in started:
        try:
            node.stop()
        except BaseException as exc:      # pytest.fail is not Exception
            failed.append(exc)
    if failed:
        raise failed[0]


@pytest.fixture
def node(node_factory):
    return node_factory()


@pytest.fixture(scope='session')
def rabbitmq(pytestconfig):
    """A private RabbitMQ for the session (its own vhost and user)."""
    begin = time.monotonic()
    server = rabbitmq_mod.start()
    _record(pytestconfig, 'rabbitmq', time.monotonic() - begin)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='session')
def mariadb(pytestconfig):
    """A private MariaDB for the session."""
    begin = time.monotonic()
    server = mariadb_mod.start()
    _record(pytestconfig, 'mariadb', time.monotonic() - begin)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='session')
def cinder_node(tmp_path_factory, pytestconfig):
    """The storage-node service behind the session's Cinder."""
    begin = time.monotonic()
    node = node_mod.NodeProcess(tmp_path_factory.mktemp('cinder-node'),
                                'cinder-node', pool_size='64G').start()
    _record(pytestconfig, 'storage node', time.monotonic() - begin)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope='session')
def glance(tmp_path_factory, pytestconfig, mariadb):
    """glance-api (no Keystone, a file store), ready."""
    server = glance_mod.Glance(tmp_path_factory.mktemp('glance'),
                               database_url=mariadb.create_database('glance'))
    try:
        server.start()
        for step, seconds in server.timings.items():
            _record(pytestconfig, 'glance ' + step, seconds)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='session')
def cinder(tmp_path_factory, pytestconfig, rabbitmq, mariadb, etcd,
           cinder_node, glance):
    """cinder-api, -scheduler and -volume with our backend, ready."""
    services = cinder_mod.Cinder(
        tmp_path_factory.mktemp('cinder'),
        transport_url=rabbitmq.transport_url,
        database_url=mariadb.create_database('cinder'),
        coordination_url='etcd3+' + etcd.client_url,
        node=cinder_node, glance_url=glance.url)
    try:
        services.start()
        for step, seconds in services.timings.items():
            _record(pytestconfig, 'cinder ' + step, seconds)
        yield services
    finally:
        services.stop()


@pytest.fixture
def cinder_client(cinder):
    """A python-cinderclient Client (noauth, admin) of the session's
    Cinder.
    """
    return cinder.client()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, 'funcargs', {})
    services = funcargs.get('cinder')
    if report.failed and isinstance(services, cinder_mod.Cinder):
        report.sections.append(('Cinder service logs', services.log_tails()))
    images = funcargs.get('glance')
    if report.failed and isinstance(images, glance_mod.Glance):
        report.sections.append(('glance-api log (%s)' % images.log_path(),
                                images.log_tail()))


def pytest_terminal_summary(terminalreporter, config):
    times = config.stash.get(STARTUP_TIMES, None)
    if times:
        terminalreporter.write_sep('-', 'functional fixtures: start-up')
        for name, seconds in times.items():
            terminalreporter.write_line('%-28s %6.1f s' % (name, seconds))
