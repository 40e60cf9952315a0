"""A backend's faults stay that backend's, as the operator sees them.

The session's real services (tests/fixtures/cinder.py) get more backends
of ours next to ``se-lvm`` (``Cinder.add_backend``: their sections written
by devstack/lib/storage-engine, then cinder-volume restarted), each
broken in one way:

- a configuration error (a scheme-less ``engine_api_url``, a token the
  node refuses, a pool it does not have) fails that backend only: the
  cinder-volume process stays up, ``se-lvm`` goes on creating volumes, the
  broken backend has no pool, and the log says what to write instead;
- a storage node that is not up yet when cinder-volume starts is not one:
  the backend starts ``down`` without capacity and comes up by itself at
  the next stats poll after the node answers, with nothing restarted.
  A wrong token found only then is reported and keeps that backend down.

What is asserted is what an operator sees: the services and pools Cinder
lists, volume statuses, and the lines of cinder-volume's log.
"""

import contextlib

import pytest

from tests.fixtures import cinder as cinder_mod
from tests.fixtures import waiting

TIMEOUT = 180.0


def _wait(what, check, cinder, timeout=TIMEOUT):
    return waiting.wait_for(what, check, timeout, logs=cinder.log_tails)


def _status(client, ident):
    return waiting.cinder_status(client, ident)


@contextlib.contextmanager
def _backends(cinder, *specs):
    """Enable backends ``(name, node, settings)`` with one restart of
    cinder-volume, its driver stats polled every few seconds; then the
    usual again with one more. ``settings`` may say ``ready=False``: that
    backend is expected not to initialise.
    """
    added = []
    cinder.set_options('DEFAULT', **cinder_mod.FAST_STATS)
    try:
        for number, (name, node, settings) in enumerate(specs, 1):
            added.append(name)
            cinder.add_backend(name, node, 'lvm',
                               restart=number == len(specs), **settings)
        yield
    finally:
        cinder.set_options('DEFAULT',
                           **dict.fromkeys(cinder_mod.FAST_STATS))
        for number, name in enumerate(added, 1):
            cinder.remove_backend(name, restart=number == len(added))


def _volume_service(client, host):
    for service in client.services.list(binary='cinder-volume'):
        if service.host == host:
            return service
    return None


def _pools(client):
    """The scheduler's pools, by backend host (HOST@BACKEND)."""
    return {p.name.split('#')[0]: p for p in client.pools.list(detailed=True)}


def _settled(client, vol, cinder):
    return _wait('volume %s leaves creating' % vol.id,
                 lambda: _status(client, vol.id) not in ('creating',
                                                         'deleting') and
                 _status(client, vol.id), cinder)


@contextlib.contextmanager
def _volume(client, cinder, volume_type, wanted):
    """A 1 GiB volume of ``volume_type``, which must end ``wanted``;
    deleted afterwards.
    """
    vol = client.volumes.create(1, volume_type=volume_type)
    try:
        final = _settled(client, vol, cinder)
        assert final == wanted, '%s: %s\n%s' % (
            vol.id, final, cinder.log_tails())
        yield vol
    finally:
        client.volumes.delete(vol.id)
        _wait('volume %s deleted' % vol.id,
              lambda: _status(client, vol.id) == 'deleted', cinder)


def _alive(cinder):
    """cinder-volume, the process of every backend, still runs."""
    status = cinder.processes['cinder-volume'].poll()
    if status is not None:
        pytest.fail('cinder-volume exited with status %s, taking every '
                    'backend down:\n%s' % (status, cinder.log_tails()),
                    pytrace=False)
    return True


def _logged(cinder, text):
    """Wait until the running cinder-volume has logged ``text``."""
    _wait('cinder-volume logs %r' % text,
          lambda: _alive(cinder) and text in cinder.volume_log(), cinder)


def test_a_scheme_less_api_url_fails_only_its_backend(cinder,
                                                      cinder_client):
    client = cinder_client
    address = cinder.node.url.split('://', 1)[1]
    bad = 'se-bad-url'
    bad_host = '%s@%s' % (cinder.host, bad)
    with _backends(cinder, (bad, cinder.node, dict(
            ready=False, api_url=address))):
        # The log says what to write instead, naming the backend.
        _logged(cinder, '[%s] engine_api_url = %s has no scheme: write '
                        'engine_api_url = http://%s' % (bad, address,
                                                        address))
        # The process, and the other backend in it, live on.
        _alive(cinder)
        with _volume(client, cinder, cinder.backend, 'available'):
            pass
        good = _volume_service(client, cinder.volume_host)
        assert (good.state, good.backend_state) == ('up', 'up')
        # The broken backend has no pool: its volumes cannot go anywhere.
        service = _wait('the volume service of %s is listed' % bad_host,
                        lambda: _volume_service(client, bad_host), cinder)
        assert service.backend_state != 'up'
        assert bad_host not in _pools(client)
        with _volume(client, cinder, bad, 'error'):
            pass
        _alive(cinder)


def test_a_refused_token_or_unknown_pool_fails_its_backend_with_the_reason(
        cinder, cinder_client):
    client = cinder_client
    token, pool = 'se-wrong-token', 'se-unknown-pool'
    with _backends(cinder,
                   (token, cinder.node, dict(ready=False,
                                             api_token='not-the-token')),
                   (pool, cinder.node, dict(ready=False, pool='nowhere'))):
        _logged(cinder, 'refused the token of backend %s: set '
                        'engine_api_token to its [api] auth_token' % token)
        _logged(cinder, 'has no pool nowhere (')
        _logged(cinder, 'set engine_pool of backend %s to one of its pools '
                        '(default)' % pool)
        _alive(cinder)
        pools = _pools(client)
        for backend in (token, pool):
            assert '%s@%s' % (cinder.host, backend) not in pools
        assert pools[cinder.volume_host].backend_state == 'up'


def test_a_backend_whose_node_starts_later_comes_up_by_itself(
        cinder, cinder_client, node_factory):
    client = cinder_client
    later = node_factory('later-node', start=False)
    name, wrong = 'se-later', 'se-later-wrong-token'
    host, wrong_host = ('%s@%s' % (cinder.host, b) for b in (name, wrong))
    # Both initialise although their node is down (add_backend waits for
    # their first stats): the token cannot be checked yet.
    with _backends(cinder, (name, later, {}),
                   (wrong, later, dict(api_token='not-the-token'))):
        pools = _pools(client)
        for h in (host, wrong_host):
            assert pools[h].backend_state == 'down'
            assert pools[h].total_capacity_gb == 0
            assert _volume_service(client, h).backend_state == 'down'
        # Down, without capacity: nothing is scheduled there.
        with _volume(client, cinder, name, 'error'):
            pass

        later.start()
        # Nothing is restarted: the next stats poll finds the node. (The
        # scheduler took it only if the down report had every key it
        # compares, and whether a missing one showed here depended on its
        # hash order: test_lvm_driver.py checks the keys themselves.)
        _wait('backend %s comes up' % host,
              lambda: _pools(client)[host].backend_state == 'up', cinder)
        assert _pools(client)[host].total_capacity_gb > 0
        assert _volume_service(client, host).backend_state == 'up'
        with _volume(client, cinder, name, 'available') as vol:
            assert later.client().volume(vol.id)['size'] == 1 << 30
        # The wrong token shows now, and keeps its backend down.
        _logged(cinder, 'refused the token of backend %s: set '
                        'engine_api_token to its [api] auth_token; the '
                        'backend stays down until then' % wrong)
        assert _pools(client)[wrong_host].backend_state == 'down'
        assert _pools(client)[wrong_host].total_capacity_gb == 0


@pytest.fixture(autouse=True)
def _no_leftovers(cinder):
    """Each test leaves the engine behind Cinder as it found it."""
    before = {v['id'] for v in cinder.node.client().volumes()}
    yield
    assert {v['id'] for v in cinder.node.client().volumes()} == before
