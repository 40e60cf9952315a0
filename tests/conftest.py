"""Options and fixtures shared by the test tiers."""

import pytest

from tests.fixtures import etcd as etcd_mod
from tests.fixtures import pki as pki_mod


def pytest_addoption(parser):
    group = parser.getgroup('storage-engine')
    group.addoption('--long', action='store_true', default=False,
                    help='run the long forms of the reliability tests '
                         '(crash torture: 500 kills)')
    group.addoption('--kills', type=int, default=None,
                    help='number of kills for the crash torture')
    group.addoption('--torture-seed', type=int, default=None,
                    help='seed of the crash torture (default: random)')
    group.addoption('--tempest-regex', default=None,
                    help='the tests the tempest tier runs (default: '
                         'tempest.api.volume and cinder-tempest-plugin\'s '
                         'API and RBAC tests)')


@pytest.fixture(scope='session')
def etcd(tmp_path_factory):
    """A real etcd (the Debian package), one per test session."""
    server = etcd_mod.start(tmp_path_factory.mktemp('etcd'))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='session')
def pki(tmp_path_factory):
    """A CA with server and client certificates (tests/fixtures/pki.py)."""
    return pki_mod.PKI(str(tmp_path_factory.mktemp('pki')))
