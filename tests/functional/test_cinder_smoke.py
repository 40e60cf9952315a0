"""Cinder with our backend, end to end, through python-cinderclient.

The real services (tests/fixtures/cinder.py): cinder-api, cinder-scheduler
and cinder-volume as separate processes over RabbitMQ, MariaDB and etcd,
with the LVM-style driver on a storage node. What a user sees: the volume
service of our backend is up, and a volume goes from 'creating' to
'available' and is gone after a delete, its engine volume with it.
"""

import pytest

from storage_engine import errors
from storage_engine import units
from tests.fixtures import waiting

TIMEOUT = 120.0


def _wait(what, check):
    return waiting.wait_for(what, check, TIMEOUT)


def _status(client, volume_id):
    return waiting.cinder_status(client, volume_id)


def test_volume_service_of_our_backend_is_up(cinder, cinder_client):
    services = {(s.binary, s.host): s for s in cinder_client.services.list()}
    volume = services[('cinder-volume', cinder.volume_host)]
    assert (volume.state, volume.status) == ('up', 'enabled')
    # The scheduler has stats from the driver (3.49: backend_state).
    assert volume.backend_state == 'up'
    scheduler = services[('cinder-scheduler', cinder.host)]
    assert scheduler.state == 'up'
    pools = [p for p in cinder_client.pools.list(detailed=True)
             if p.name.startswith(cinder.volume_host + '#')]
    assert [p.volume_backend_name for p in pools] == [cinder.backend]
    assert pools[0].total_capacity_gb == pytest.approx(64, abs=0.5)


def test_volume_becomes_available_and_is_deleted(cinder, cinder_client):
    node_client = cinder.node.client()
    volume = cinder_client.volumes.create(1, name='smoke')
    try:
        final = _wait('volume %s leaves creating' % volume.id,
                      lambda: _status(cinder_client, volume.id)
                      not in ('creating', 'downloading') and
                      _status(cinder_client, volume.id))
        assert final == 'available', cinder_client.volumes.get(volume.id)
        volume = cinder_client.volumes.get(volume.id)
        assert volume.size == 1
        assert volume.volume_type == cinder.backend
        assert getattr(volume, 'os-vol-host-attr:host') == \
            cinder.volume_host + '#' + cinder.engine_pool
        # The engine holds it, under the Cinder volume's id.
        held = node_client.volume(volume.id)
        assert (held['pool'], held['size']) == (cinder.engine_pool,
                                                units.Gi)
    finally:
        cinder_client.volumes.delete(volume.id)
    _wait('volume %s deleted' % volume.id,
          lambda: _status(cinder_client, volume.id) in ('deleted',
                                                        'error_deleting'))
    assert _status(cinder_client, volume.id) == 'deleted'
    with pytest.raises(errors.NotFound):
        node_client.volume(volume.id)


def test_volume_survives_a_volume_service_restart(cinder, cinder_client):
    volume = cinder_client.volumes.create(1, name='restart')
    _wait('volume %s available' % volume.id,
          lambda: _status(cinder_client, volume.id) == 'available')
    cinder.restart_volume_service()
    assert _status(cinder_client, volume.id) == 'available'
    cinder_client.volumes.delete(volume.id)
    _wait('volume %s deleted' % volume.id,
          lambda: _status(cinder_client, volume.id) in ('deleted',
                                                        'error_deleting'))
    assert _status(cinder_client, volume.id) == 'deleted'
