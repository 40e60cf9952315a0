"""The LVM-style Cinder driver against a real storage node, call by call.

Cinder's volume manager is not in the loop here (tests/functional/
test_cinder_*.py run the real services); this tier drives the driver the
way the manager does, with Cinder's own objects, and checks what the
storage node then holds and serves.
"""

import uuid

from cinder import context as cinder_context
from cinder import exception
from cinder import objects
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver
from oslo_config import cfg
import pytest

from storage_engine.nbd import client as nbd_client
from storage_engine import units

from cinder_drivers import lvm

GiB = units.Gi
CTX = None


@pytest.fixture(scope='module', autouse=True)
def cinder_objects():
    """Cinder's object classes, registered when these tests run.

    Not at import: registering imports most of Cinder, and done while
    pytest collects it left the in-process HTTP servers of the unit tests
    (tests/unit/cannedhttp.py), which run first, unable to answer.
    """
    global CTX
    objects.register_all()
    CTX = cinder_context.get_admin_context()


def _conf(node, group, **more):
    conf = cfg.CONF
    if conf._args is None:
        conf([], project='cinder', default_config_files=[])
    config = configuration.Configuration(
        cinder_driver.volume_opts, config_group=group)
    config.append_config_values(lvm.base.engine_opts)
    settings = {'engine_api_url': node.url, 'engine_api_token': node.token,
                'volume_backend_name': group, 'engine_api_timeout': 10}
    settings.update(more)
    for key, value in settings.items():
        conf.set_override(key, value, group=group)
    return config


@pytest.fixture
def make_driver():
    """A driver over ``node`` (``more``: other option values), not set
    up yet.
    """
    made = []

    def make(node, **more):
        group = 'engine-%s' % uuid.uuid4().hex[:8]
        made.append(group)
        return lvm.EngineLVMDriver(configuration=_conf(node, group, **more),
                                   host='test@%s' % group)

    yield make
    for group in made:
        for key in lvm.base.engine_opts:
            cfg.CONF.clear_override(key.name, group=group)
        cfg.CONF.clear_override('volume_backend_name', group=group)


@pytest.fixture
def driver(node, make_driver):
    drv = make_driver(node)
    drv.do_setup(CTX)
    drv.check_for_setup_error()
    return drv


def _type(provisioning=None):
    specs = {} if provisioning is None else {
        'provisioning:type': provisioning}
    return objects.VolumeType(CTX, id=str(uuid.uuid4()), name='t',
                              extra_specs=specs)


def _volume(size=1, provisioning=None, **kwargs):
    return objects.Volume(
        CTX, id=str(uuid.uuid4()), _name_id=None, size=size,
        provider_id=None,
        volume_type=_type(provisioning), display_name='v',
        volume_attachment=objects.VolumeAttachmentList(objects=[]),
        **kwargs)


def _snapshot(volume):
    return objects.Snapshot(CTX, id=str(uuid.uuid4()), volume=volume,
                            volume_id=volume.id, volume_size=volume.size,
                            provider_id=None)


def _create(driver, volume):
    volume.update(driver.create_volume(volume) or {})
    return volume


CONNECTOR = {'ip': '127.0.0.1', 'host': 'compute-1', 'initiator': None}


def _attach(driver, volume):
    info = driver.initialize_connection(volume, CONNECTOR)
    assert info['driver_volume_type'] == 'nbd'
    data = info['data']
    return nbd_client.NBDClient.connect(data['export_name'],
                                        host=data['host'], port=data['port'])


def _engine(node, path):
    r = node.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def test_stats_report_the_pool_with_its_capabilities(driver, node):
    stats = driver.get_volume_stats(refresh=True)
    assert stats['storage_protocol'] == 'NBD'
    pool, = stats['pools']
    assert pool['pool_name'] == 'default'
    assert pool['backend_state'] == 'up'
    assert pool['thin_provisioning_support'] is True
    assert pool['thick_provisioning_support'] is True
    assert pool['multiattach'] is True
    engine_pool = _engine(node, '/pools/default')
    assert pool['total_capacity_gb'] == round(engine_pool['total'] / GiB, 2)


@pytest.mark.parametrize('provisioning', ['thin', 'thick', None])
def test_create_follows_the_types_provisioning(driver, node, provisioning):
    vol = _create(driver, _volume(provisioning=provisioning))
    assert vol.provider_id == vol.id
    engine = _engine(node, '/volumes/' + vol.id)
    assert engine['name'] == vol.name
    assert engine['size'] == GiB
    assert engine['provisioning'] == (provisioning or 'thin')
    # Cinder retrying a create it thinks failed makes no second volume.
    driver.create_volume(vol)
    assert len(_engine(node, '/volumes')['volumes']) == 1


def test_bad_extra_spec_is_refused_and_nothing_is_made(driver, node):
    with pytest.raises(exception.InvalidVolumeType, match='thin or thick'):
        driver.create_volume(_volume(provisioning='fat'))
    assert _engine(node, '/volumes')['volumes'] == []


def test_snapshot_clone_revert_and_extend_keep_the_data(driver, node):
    vol = _create(driver, _volume())
    with _attach(driver, vol) as c:
        c.pwrite(b'1' * 4096, 0)
        snap = _snapshot(vol)
        snap.update(driver.create_snapshot(snap) or {})
        c.pwrite(b'2' * 4096, 0)
    from_snap = _volume(size=2)
    from_snap.update(driver.create_volume_from_snapshot(from_snap, snap))
    clone = _volume()
    clone.update(driver.create_cloned_volume(clone, vol))
    with _attach(driver, from_snap) as c:
        assert c.size == 2 * GiB
        assert c.pread(4096, 0) == b'1' * 4096
    with _attach(driver, clone) as c:
        assert c.pread(4096, 0) == b'2' * 4096
    driver.revert_to_snapshot(CTX, vol, snap)
    driver.extend_volume(vol, 3)
    with _attach(driver, vol) as c:
        assert c.size == 3 * GiB
        assert c.pread(4096, 0) == b'1' * 4096
    # As in Cinder, the snapshot can go while a volume made from it lives
    # on, and that volume keeps its data.
    driver.delete_snapshot(snap)
    assert _engine(node, '/snapshots')['snapshots'] == []
    with _attach(driver, from_snap) as c:
        assert c.pread(4096, 0) == b'1' * 4096
    for v in (from_snap, clone):
        driver.terminate_connection(v, CONNECTOR)
        driver.delete_volume(v)
    driver.terminate_connection(vol, CONNECTOR)
    driver.delete_volume(vol)
    assert _engine(node, '/volumes')['volumes'] == []
    assert _engine(node, '/snapshots')['snapshots'] == []
    assert _engine(node, '/exports')['exports'] == []


def test_export_admits_only_the_connectors_host(driver, node):
    vol = _create(driver, _volume())
    info = driver.initialize_connection(vol, {'ip': '192.0.2.10'})
    data = info['data']
    assert _engine(node, '/exports/' + data['export_id'])['hosts'] == \
        ['192.0.2.10']
    with pytest.raises(nbd_client.NBDError):
        nbd_client.NBDClient.connect(data['export_name'], host=data['host'],
                                     port=data['port']).close()
    # Repeating initialize_connection gives the same export.
    assert driver.initialize_connection(vol, {'ip': '192.0.2.10'}) == info
    with pytest.raises(exception.InvalidConnectorException):
        driver.initialize_connection(vol, {'host': 'no-ip'})


def test_multiattach_on_one_host_keeps_the_export_until_the_last(driver,
                                                                 node):
    vol = _create(driver, _volume())
    info = driver.initialize_connection(vol, CONNECTOR)
    vol.volume_attachment = objects.VolumeAttachmentList(objects=[
        objects.VolumeAttachment(CTX, id=str(uuid.uuid4()),
                                 connector=CONNECTOR,
                                 attach_status='attached')
        for _ in range(2)])
    assert driver.terminate_connection(vol, CONNECTOR) is True
    assert _engine(node, '/exports')['exports'] != []
    vol.volume_attachment = objects.VolumeAttachmentList(
        objects=vol.volume_attachment.objects[:1])
    assert driver.terminate_connection(vol, CONNECTOR) is False
    assert _engine(node, '/exports')['exports'] == []
    # A force detach (no connector) removes every host's export.
    driver.initialize_connection(vol, CONNECTOR)
    driver.initialize_connection(vol, {'ip': '192.0.2.11'})
    assert len(_engine(node, '/exports')['exports']) == 2
    assert driver.terminate_connection(vol, None) is False
    assert _engine(node, '/exports')['exports'] == []
    assert info['data']['volume_id'] == vol.id


def test_retype_between_thin_and_thick_in_place(driver, node):
    vol = _create(driver, _volume(provisioning='thin'))
    host = {'capabilities': driver.get_volume_stats(True)['pools'][0]}
    assert driver.retype(CTX, vol, _type('thick'), {}, host) is True
    assert _engine(node, '/volumes/' + vol.id)['provisioning'] == 'thick'
    assert driver.retype(CTX, vol, _type('thin'), {}, host) is True
    assert _engine(node, '/volumes/' + vol.id)['provisioning'] == 'thin'
    # Another backend: Cinder must migrate instead.
    assert driver.retype(CTX, vol, _type('thick'), {},
                         {'capabilities': {'location_info': 'other'}}) \
        is False


def test_manage_and_unmanage_an_engine_volume(driver, node):
    r = node.post('/volumes', {'name': 'legacy', 'size': 1536 * units.Mi})
    assert r.status_code == 201
    legacy = r.json()
    ref = {'source-name': 'legacy'}
    vol = _volume(size=0)
    assert driver.manage_existing_get_size(vol, ref) == 2
    vol.size = 2
    vol.update(driver.manage_existing(vol, ref))
    assert vol.provider_id == legacy['id']
    engine = _engine(node, '/volumes/' + legacy['id'])
    assert (engine['name'], engine['size']) == (vol.name, 2 * GiB)
    listed = driver.get_manageable_volumes([vol], None, 10, 0, ['size'],
                                           ['asc'])
    assert [e['safe_to_manage'] for e in listed] == [False]
    with pytest.raises(exception.ManageExistingInvalidReference):
        driver.manage_existing(_volume(), {'source-name': 'missing'})
    driver.unmanage(vol)
    assert _engine(node, '/volumes/' + legacy['id'])['name'] == vol.name


def test_node_down_gives_an_actionable_error(driver, node):
    node.stop()
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='unavailable.*storage-engine serve'):
        driver.create_volume(_volume())
    stats = driver.get_volume_stats(refresh=True)
    assert stats['pools'][0]['backend_state'] == 'down'
    node.start()
    assert _engine(node, '/volumes')['volumes'] == []


def test_pool_full_is_reported_and_nothing_is_left(driver, node):
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='pool default is full'):
        driver.create_volume(_volume(size=64, provisioning='thick'))
    assert _engine(node, '/volumes')['volumes'] == []


def test_a_node_not_up_yet_is_not_fatal_to_the_set_up(node, make_driver):
    """Boot order: the backend starts down and comes up with the node."""
    from cinder.scheduler import host_manager

    node.stop()
    drv = make_driver(node)
    drv.do_setup(CTX)
    drv.check_for_setup_error()
    down, = drv.get_volume_stats(refresh=True)['pools']
    assert (down['backend_state'], down['total_capacity_gb'],
            down['free_capacity_gb']) == ('down', 0, 0)
    node.start()
    up, = drv.get_volume_stats(refresh=True)['pools']
    assert up['backend_state'] == 'up'
    assert up['total_capacity_gb'] > 0
    # The scheduler compares the keys it requires of one report with the
    # next (HostManager._get_updated_pools): one missing from the down
    # report made it drop every later one, and the backend stayed down.
    assert host_manager.HostManager.REQUIRED_KEYS <= set(down) & set(up)


def test_a_certificate_that_does_not_verify_fails_the_set_up(
        node_factory, make_driver, pki):
    tls = node_factory(
        'secure', start=False, scheme='https',
        api_extra='tls_cert_file = %s\ntls_key_file = %s'
        % (pki.path('server-cert.pem'), pki.path('server-key.pem')))
    tls.verify = pki.path('ca-cert.pem')
    tls.start()
    # Not transient, unlike a node that is down: the operator must act.
    drv = make_driver(tls)
    drv.do_setup(CTX)
    with pytest.raises(exception.InvalidConfigurationValue,
                       match='set engine_api_ca_file to the CA that signed '
                             'its certificate'):
        drv.check_for_setup_error()
    drv = make_driver(tls, engine_api_ca_file=pki.path('ca-cert.pem'))
    drv.do_setup(CTX)
    drv.check_for_setup_error()
    assert drv.get_volume_stats(True)['pools'][0]['backend_state'] == 'up'
