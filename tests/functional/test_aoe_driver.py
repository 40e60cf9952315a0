"""The AoE Cinder driver against a real storage node serving AoE, call by
call.

Cinder's volume manager is not in the loop (tests/functional/
test_cinder_aoe.py runs the real services); this tier drives the driver
the way the manager does, with Cinder's own objects, and reads and writes
what it exports with our AoE initiator. The node's target is in network
namespace A of a veth pair, the initiator in namespace B
(tests/fixtures/netns.py): no frame leaves them.
"""

import uuid

from cinder import context as cinder_context
from cinder import exception
from cinder import objects
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver
from oslo_config import cfg
import pytest

from storage_engine import errors
from storage_engine import units
from tests.fixtures import netns

from cinder_drivers import aoe

GiB = units.Gi
CTX = None
# An initiator the export does not admit hears nothing: it waits this long.
TIMEOUT = 3.0
OTHER_MAC = '52:54:00:00:00:99'

veth_pair = netns.veth_pair


@pytest.fixture(scope='module', autouse=True)
def cinder_objects():
    """Cinder's object classes, registered when these tests run (not at
    collection: see tests/functional/test_lvm_driver.py).
    """
    global CTX
    objects.register_all()
    CTX = cinder_context.get_admin_context()


@pytest.fixture
def aoe_node(veth_pair, node_factory):
    return node_factory('aoe-node', aoe={
        'interface': veth_pair.if_a,
        'network_namespace': veth_pair.ns_a})


def _conf(node, group, **extra):
    conf = cfg.CONF
    if conf._args is None:
        conf([], project='cinder', default_config_files=[])
    config = configuration.Configuration(
        cinder_driver.volume_opts, config_group=group)
    config.append_config_values(aoe.base.engine_opts)
    for key, value in (('engine_api_url', node.url),
                       ('engine_api_token', node.token),
                       ('volume_backend_name', group),
                       ('engine_api_timeout', 10), *extra.items()):
        conf.set_override(key, value, group=group)
    return config


@pytest.fixture
def make_driver():
    groups = []

    def make(node, **extra):
        group = 'engine-aoe-%s' % uuid.uuid4().hex[:8]
        groups.append((group, ['engine_api_url', 'engine_api_token',
                               'volume_backend_name', 'engine_api_timeout',
                               *extra]))
        drv = aoe.EngineAoEDriver(configuration=_conf(node, group, **extra),
                                  host='test@%s' % group)
        drv.do_setup(CTX)
        return drv

    yield make
    for group, keys in groups:
        for key in keys:
            cfg.CONF.clear_override(key, group=group)


@pytest.fixture
def driver(aoe_node, make_driver):
    drv = make_driver(aoe_node)
    drv.check_for_setup_error()
    return drv


def _volume(size=1, **kwargs):
    vtype = objects.VolumeType(CTX, id=str(uuid.uuid4()), name='t',
                               extra_specs={})
    return objects.Volume(
        CTX, id=str(uuid.uuid4()), _name_id=None, size=size,
        provider_id=None, volume_type=vtype, display_name='v',
        volume_attachment=objects.VolumeAttachmentList(objects=[]),
        **kwargs)


def _create(driver, volume):
    volume.update(driver.create_volume(volume) or {})
    return volume


def _connector(pair, *macs):
    return {'ip': '192.0.2.1', 'host': 'compute-1',
            'aoe_macs': list(macs or [pair.mac_b])}


def _client(pair, info, timeout=30.0):
    """Our initiator on the host's end of the pair, as the connector's
    file mode opens it.
    """
    from storage_engine.aoe import client as aoe_client

    assert info['driver_volume_type'] == 'aoe'
    data = info['data']
    return aoe_client.AoEClient(pair.if_b, data['target_shelf'],
                                data['target_lun'],
                                target_mac=data['target_mac'],
                                netns=pair.ns_b, timeout=timeout)


def _engine(node, path):
    r = node.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def test_stats_say_aoe(driver):
    stats = driver.get_volume_stats(refresh=True)
    assert stats['storage_protocol'] == 'AoE'
    pool, = stats['pools']
    assert pool['backend_state'] == 'up'
    assert pool['multiattach'] is True


def test_the_export_admits_only_the_connectors_macs(
        driver, aoe_node, veth_pair):
    vol = _create(driver, _volume())
    node_aoe = _engine(aoe_node, '/node')['aoe']
    info = driver.initialize_connection(vol, _connector(veth_pair))
    data = info['data']
    assert data['target_shelf'] == node_aoe['shelf']
    assert data['target_mac'] == node_aoe['mac'] == veth_pair.mac_a
    assert data['target_interface'] == veth_pair.if_a
    assert (data['volume_id'], data['access_mode']) == (vol.id, 'rw')
    exp = _engine(aoe_node, '/exports/' + data['export_id'])
    assert (exp['protocol'], exp['hosts']) == ('aoe', [veth_pair.mac_b])
    assert exp['connection']['slot'] == data['target_lun']
    with _client(veth_pair, info) as c:
        assert c.size == GiB
        c.write(0, b'A' * 4096)
        assert c.read(0, 4096) == b'A' * 4096
    # Repeating initialize_connection gives the same export.
    assert driver.initialize_connection(vol, _connector(veth_pair)) == info

    # Exported to another MAC only: this host gets no answer at all.
    other = driver.initialize_connection(
        vol, _connector(veth_pair, OTHER_MAC))
    assert other['data']['export_id'] != data['export_id']
    driver.terminate_connection(vol, _connector(veth_pair))
    with pytest.raises(errors.Unavailable):
        _client(veth_pair, other, timeout=TIMEOUT)
    driver.terminate_connection(vol, _connector(veth_pair, OTHER_MAC))
    assert _engine(aoe_node, '/exports')['exports'] == []

    with pytest.raises(exception.InvalidConnectorException,
                       match='aoe_macs'):
        driver.initialize_connection(vol, {'ip': '192.0.2.1', 'host': 'x'})
    driver.delete_volume(vol)


def test_snapshot_clone_and_extend_keep_the_data(driver, aoe_node,
                                                 veth_pair):
    connector = _connector(veth_pair)
    vol = _create(driver, _volume())
    with _client(veth_pair, driver.initialize_connection(vol,
                                                         connector)) as c:
        c.write(0, b'1' * 4096)
        c.flush()
        snap = objects.Snapshot(CTX, id=str(uuid.uuid4()), volume=vol,
                                volume_id=vol.id, volume_size=vol.size,
                                provider_id=None)
        snap.update(driver.create_snapshot(snap) or {})
        c.write(0, b'2' * 4096)
        c.flush()
    from_snap = _volume(size=2)
    from_snap.update(driver.create_volume_from_snapshot(from_snap, snap))
    clone = _volume()
    clone.update(driver.create_cloned_volume(clone, vol))
    with _client(veth_pair, driver.initialize_connection(from_snap,
                                                         connector)) as c:
        assert c.size == 2 * GiB
        assert c.read(0, 4096) == b'1' * 4096
    with _client(veth_pair, driver.initialize_connection(clone,
                                                         connector)) as c:
        assert c.read(0, 4096) == b'2' * 4096
    # Extended while exported: a new initiator sees the new size.
    driver.extend_volume(vol, 3)
    with _client(veth_pair, driver.initialize_connection(vol,
                                                         connector)) as c:
        assert c.size == 3 * GiB
        assert c.read(0, 4096) == b'2' * 4096
    for v in (from_snap, clone):
        driver.terminate_connection(v, connector)
        driver.delete_volume(v)
    driver.delete_snapshot(snap)
    driver.terminate_connection(vol, connector)
    driver.delete_volume(vol)
    assert _engine(aoe_node, '/volumes')['volumes'] == []
    assert _engine(aoe_node, '/snapshots')['snapshots'] == []
    assert _engine(aoe_node, '/exports')['exports'] == []


def test_attachments_of_one_host_share_its_export_until_the_last(
        driver, aoe_node, veth_pair):
    connector = _connector(veth_pair)
    vol = _create(driver, _volume())
    info = driver.initialize_connection(vol, connector)
    vol.volume_attachment = objects.VolumeAttachmentList(objects=[
        objects.VolumeAttachment(CTX, id=str(uuid.uuid4()),
                                 connector=dict(connector),
                                 attach_status='attached')
        for _ in range(2)])
    assert driver.terminate_connection(vol, connector) is True
    assert len(_engine(aoe_node, '/exports')['exports']) == 1
    vol.volume_attachment = objects.VolumeAttachmentList(
        objects=vol.volume_attachment.objects[:1])
    assert driver.terminate_connection(vol, connector) is False
    assert _engine(aoe_node, '/exports')['exports'] == []
    # A force detach (no connector) removes every host's export.
    driver.initialize_connection(vol, connector)
    driver.initialize_connection(vol, _connector(veth_pair, OTHER_MAC))
    assert len(_engine(aoe_node, '/exports')['exports']) == 2
    assert driver.terminate_connection(vol, None) is False
    assert _engine(aoe_node, '/exports')['exports'] == []
    assert info['data']['volume_id'] == vol.id
    # Delete removes exports a lost detach left behind.
    driver.initialize_connection(vol, connector)
    driver.delete_volume(vol)
    assert _engine(aoe_node, '/exports')['exports'] == []
    assert _engine(aoe_node, '/volumes')['volumes'] == []


def test_a_node_without_aoe_refuses_the_export_with_the_reason(
        node, make_driver, veth_pair):
    drv = make_driver(node)
    drv.check_for_setup_error()
    vol = _create(drv, _volume())
    with pytest.raises(exception.VolumeBackendAPIException) as err:
        drv.initialize_connection(vol, _connector(veth_pair))
    assert "protocol 'aoe' is not served by node node1" in str(err.value)
    assert _engine(node, '/exports')['exports'] == []
    drv.delete_volume(vol)


def test_a_backend_configured_for_another_protocol_does_not_start(
        aoe_node, make_driver):
    drv = make_driver(aoe_node, engine_export_protocol='nbd')
    with pytest.raises(exception.InvalidConfigurationValue,
                       match='engine_export_protocol is nbd, but '
                             'EngineAoEDriver exports over aoe'):
        drv.check_for_setup_error()
