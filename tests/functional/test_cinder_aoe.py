"""Cinder with an AoE backend, as a user and as Nova use it.

The session's real services (tests/fixtures/cinder.py) get a second
backend of ours, ``se-aoe`` (``cinder_drivers.aoe.EngineAoEDriver``),
over a second storage node whose AoE target is in network namespace A of a
veth pair (tests/fixtures/netns.py); cinder.conf's ``[aoe_connector]
network_namespace`` is namespace B, where this host's AoE interface is, so
cinder-volume's own copies attach there too. Both are written by
devstack/lib/storage-engine (``configure_storage_engine_backend ... aoe``).

Attaching is done as Nova does it: an attachment created with this host's
connector properties (os-brick's, with our connectors registered: they
carry ``aoe_macs``), the connection made by our AoE connector in fuse mode
(the bridge, nbdfuse and a real /dev/loopN), then a filesystem on it.
"""

import os

import pytest

from storage_engine import units
from tests.fixtures import host
from tests.fixtures import netns
from tests.fixtures import node as node_mod
from tests.fixtures import waiting

TIMEOUT = 180.0
GiB = units.Gi
MiB = units.Mi
BACKEND = 'se-aoe'
IMAGE_SIZE = 3 * MiB + 512
# ext4's discard at mkfs would become a write of zeros over the whole
# volume: AoE has no TRIM (see doc/source/cinder-aoe.rst).
MKFS = ('mkfs.ext4', '-q', '-E', 'nodiscard')


def _wait(what, check, timeout=TIMEOUT):
    return waiting.wait_for(what, check, timeout)


def _status(client, ident, manager='volumes'):
    return waiting.cinder_status(client, ident, manager)


def _settled(client, obj, cinder, wanted='available', manager='volumes'):
    moving = ('creating', 'downloading', 'attaching', 'detaching',
              'deleting', 'uploading')
    final = _wait('%s %s settles' % (manager, obj.id),
                  lambda: _status(client, obj.id, manager) not in moving and
                  _status(client, obj.id, manager))
    if final != wanted:
        pytest.fail('%s %s is %s, not %s\n%s' % (
            manager, obj.id, final, wanted, cinder.log_tails()))
    return getattr(client, manager).get(obj.id) if final != 'deleted' \
        else None


@pytest.fixture(scope='module', autouse=True)
def as_root():
    if os.geteuid() != 0:
        pytest.fail('AoE attaches need raw sockets, loop devices and FUSE: '
                    'run the tests as root', pytrace=False)


@pytest.fixture(scope='module')
def pair():
    veth = netns.open_pair()
    try:
        yield veth
    finally:
        veth.close()


@pytest.fixture(scope='module')
def aoe_node(pair, tmp_path_factory):
    node = node_mod.NodeProcess(
        tmp_path_factory.mktemp('aoe-cinder-node'), 'aoe-cinder-node',
        pool_size='16G', aoe={'interface': pair.if_a,
                              'network_namespace': pair.ns_a})
    try:
        yield node.start()
    finally:
        node.stop()


@pytest.fixture(scope='module')
def aoe_cinder(cinder, aoe_node, pair):
    """The session's Cinder with the AoE backend enabled too (then
    disabled again, so that the other modules see it as it was).
    """
    cinder.add_backend(BACKEND, aoe_node, 'aoe',
                       aoe_connector_network_namespace=pair.ns_b)
    try:
        yield cinder
    finally:
        cinder.remove_backend(BACKEND)


@pytest.fixture(scope='module')
def brick(tmp_path_factory):
    with host.brick(tmp_path_factory.mktemp('os-brick-locks')) as setup:
        yield setup


@pytest.fixture
def compute(brick, pair, tmp_path):
    """This host as Nova sees it: its AoE interface in namespace B."""
    from os_brick.initiator import connector
    from oslo_config import cfg

    from os_brick_connectors import aoe

    run_dir = str(tmp_path / 'run')
    cfg.CONF.set_override('network_namespace', pair.ns_b, aoe.GROUP)
    try:
        props = connector.get_connector_properties(
            None, '127.0.0.1', multipath=False, enforce_multipath=False)
    finally:
        cfg.CONF.clear_override('network_namespace', aoe.GROUP)
    cleaner = host.Cleaner(run_dir)

    class Compute:
        properties = props
        clean = cleaner

        def connector(self):
            return connector.InitiatorConnector.factory(
                'AOE', None, run_dir=run_dir, mode='fuse',
                network_namespace=pair.ns_b)

    try:
        yield Compute()
    finally:
        cleaner.clean()


class Attachment:
    """A Nova-style attach of a volume to this host, as a context."""

    def __init__(self, client, compute, volume_id):
        self.client = client
        self.compute = compute
        self.volume_id = volume_id

    def __enter__(self):
        att = self.client.attachments.create(
            self.volume_id, self.compute.properties, mode='rw')
        self.attachment_id = att['id']
        # The driver's connection data with driver_volume_type beside it:
        # what Nova hands to the connector.
        self.info = att['connection_info']
        assert self.info['driver_volume_type'] == 'aoe'
        self.connector = self.compute.connector()
        self.path = self.connector.connect_volume(self.info)['path']
        self.client.attachments.complete(self.attachment_id)
        return self

    def __exit__(self, *exc):
        self.connector.disconnect_volume(self.info, None)
        self.client.attachments.delete(self.attachment_id)


def _create(client, cinder, **kwargs):
    return _settled(client, client.volumes.create(1, **kwargs), cinder)


def _nothing_attached(node_client, compute):
    assert node_client.exports() == []
    host.nothing_left(compute.clean.top)


def test_aoe_volume_attach_snapshot_clone_and_delete(
        aoe_cinder, aoe_node, pair, cinder_client, compute, tmp_path):
    cinder, client = aoe_cinder, cinder_client
    node = aoe_node.client()
    assert compute.properties['aoe_macs'] == [pair.mac_b]
    pools = [p.name for p in client.pools.list()]
    assert '%s@%s#default' % (cinder.host, BACKEND) in pools

    vol = _create(client, cinder, volume_type=BACKEND, name='aoe-vol')
    assert getattr(vol, 'os-vol-host-attr:host') == \
        '%s@%s#default' % (cinder.host, BACKEND)
    assert node.volume(vol.id)['size'] == GiB

    first, second = os.urandom(MiB), os.urandom(MiB)
    mnt = tmp_path / 'mnt'
    with Attachment(client, compute, vol.id) as att:
        data = att.info
        assert data['target_mac'] == pair.mac_a
        assert data['target_interface'] == pair.if_a
        [exp] = node.exports(volume_id=vol.id)
        assert (exp['protocol'], exp['hosts']) == ('aoe', [pair.mac_b])
        assert exp['connection']['slot'] == data['target_lun']
        assert _status(client, vol.id) == 'in-use'
        assert host.device_size(att.path) == GiB
        host.run(*MKFS, att.path)
        compute.clean.mount(att.path, mnt)
        (mnt / 'hello.txt').write_text('hello over AoE\n')
        (mnt / 'blob').write_bytes(first)
        compute.clean.umount(str(mnt))
    assert _status(client, vol.id) == 'available'
    _nothing_attached(node, compute)

    snap = client.volume_snapshots.create(vol.id, name='aoe-snap')
    snap = _settled(client, snap, cinder, manager='volume_snapshots')
    assert node.snapshot(snap.id)['volume_id'] == vol.id

    # Changed after the snapshot: its clone must not see it.
    with Attachment(client, compute, vol.id) as att:
        compute.clean.mount(att.path, mnt)
        assert (mnt / 'hello.txt').read_text() == 'hello over AoE\n'
        assert (mnt / 'blob').read_bytes() == first
        (mnt / 'blob').write_bytes(second)
        compute.clean.umount(str(mnt))

    clone = _create(client, cinder, snapshot_id=snap.id,
                    volume_type=BACKEND, name='aoe-clone')
    with Attachment(client, compute, clone.id) as att:
        compute.clean.mount(att.path, mnt)
        assert (mnt / 'blob').read_bytes() == first
        compute.clean.umount(str(mnt))
    with Attachment(client, compute, vol.id) as att:
        compute.clean.mount(att.path, mnt)
        assert (mnt / 'blob').read_bytes() == second
        compute.clean.umount(str(mnt))
    _nothing_attached(node, compute)

    client.volumes.delete(clone.id)
    _settled(client, clone, cinder, wanted='deleted')
    client.volume_snapshots.delete(snap.id)
    _settled(client, snap, cinder, wanted='deleted',
             manager='volume_snapshots')
    client.volumes.delete(vol.id)
    _settled(client, vol, cinder, wanted='deleted')
    assert node.volumes() == []
    assert node.snapshots() == []
    assert node.exports() == []


def test_image_to_aoe_volume_through_cinder_volumes_own_attach(
        aoe_cinder, aoe_node, pair, cinder_client, compute, glance,
        tmp_path):
    """cinder-volume writes the image through our AoE connector, in
    namespace B as its cinder.conf says; the host then reads it back.
    """
    cinder, client = aoe_cinder, cinder_client
    node = aoe_node.client()
    payload = os.urandom(IMAGE_SIZE)
    images = glance.client()
    image = images.images.create(name='se-aoe-image', disk_format='raw',
                                 container_format='bare')
    try:
        path = tmp_path / 'image.raw'
        path.write_bytes(payload)
        with open(path, 'rb') as data:
            images.images.upload(image['id'], data)
        log_start = os.path.getsize(cinder.log_path('cinder-volume'))
        vol = _create(client, cinder, volume_type=BACKEND,
                      imageRef=image['id'], name='aoe-from-image')
    finally:
        images.images.delete(image['id'])
    assert vol.bootable == 'true'
    with open(cinder.log_path('cinder-volume'), 'rb') as log:
        log.seek(log_start)
        text = log.read().decode(errors='replace')
    # cinder-volume attached through our connector, in fuse mode.
    assert 'Connecting AoE target' in text and 'in fuse mode' in text, \
        cinder.log_tail('cinder-volume', 200)
    assert node.exports(volume_id=vol.id) == []

    with Attachment(client, compute, vol.id) as att:
        with open(att.path, 'rb') as dev:
            assert dev.read(IMAGE_SIZE) == payload
            assert dev.read(MiB) == bytes(MiB)
    client.volumes.delete(vol.id)
    _settled(client, vol, cinder, wanted='deleted')
    assert node.volumes() == []
    assert node.exports() == []
