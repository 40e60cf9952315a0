"""Cinder on our engine, as a user and as Nova use it.

Real services (tests/fixtures/cinder.py): cinder-api, cinder-scheduler and
cinder-volume with the LVM-style driver on a storage node, driven with
python-cinderclient. Attaching is done as Nova does it: an attachment
created with this host's connector properties (os-brick's, with our
connectors registered), the connection made by our NBD connector (here:
nbdfuse and a loop device, a real /dev/loopN), then a filesystem on it.
"""

import os

import pytest

from storage_engine import errors
from storage_engine import units
from tests.fixtures import cinder as cinder_mod
from tests.fixtures import host
from tests.fixtures import waiting

TIMEOUT = 180.0
GiB = units.Gi
MiB = units.Mi


def _wait(what, check, timeout=TIMEOUT):
    return waiting.wait_for(what, check, timeout)


def _status(client, ident, manager='volumes'):
    return waiting.cinder_status(client, ident, manager)


def _settled(client, obj, wanted='available', manager='volumes',
             cinder=None):
    """Wait until ``obj`` leaves its transitional states; it must be
    ``wanted`` then.
    """
    moving = ('creating', 'downloading', 'extending', 'retyping',
              'attaching', 'detaching', 'deleting', 'uploading',
              'reverting', 'maintenance')
    final = _wait('%s %s settles' % (manager, obj.id),
                  lambda: _status(client, obj.id, manager) not in moving and
                  _status(client, obj.id, manager))
    if final != wanted:
        detail = getattr(client, manager).get(obj.id) \
            if final != 'deleted' else obj
        logs = cinder.log_tails() if cinder is not None else ''
        pytest.fail('%s %s is %s, not %s: %r\n%s'
                    % (manager, obj.id, final, wanted, detail, logs))
    return getattr(client, manager).get(obj.id) if final != 'deleted' \
        else None


@pytest.fixture(scope='module')
def brick(tmp_path_factory):
    with host.brick(tmp_path_factory.mktemp('os-brick-locks')) as setup:
        yield setup


@pytest.fixture
def compute(brick, tmp_path):
    """This host as Nova sees it: connector properties and a connector."""
    from os_brick.initiator import connector

    run_dir = str(tmp_path / 'run')
    props = connector.get_connector_properties(
        None, '127.0.0.1', multipath=False, enforce_multipath=False)
    cleaner = host.Cleaner(run_dir)

    class Compute:
        properties = props
        clean = cleaner

        def connector(self):
            return connector.InitiatorConnector.factory(
                'NBD', None, run_dir=run_dir)

    try:
        yield Compute()
    finally:
        cleaner.clean()


@pytest.fixture
def types(cinder, cinder_client):
    return {p: cinder_mod.volume_type(cinder_client, 'engine-%s' % p, {
        'volume_backend_name': cinder.backend, 'provisioning:type': p})
        for p in ('thin', 'thick')}


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
        # An attachment's connection_info is the driver's connection
        # data with driver_volume_type beside it: what Nova hands to the
        # connector.
        info = att['connection_info']
        assert info['driver_volume_type'] == 'nbd'
        self.properties = info
        self.connector = self.compute.connector()
        device = self.connector.connect_volume(info)
        self.client.attachments.complete(self.attachment_id)
        self.path = device['path']
        return self

    def __exit__(self, *exc):
        self.connector.disconnect_volume(self.properties, None)
        self.client.attachments.delete(self.attachment_id)


def _create(client, cinder, size=1, **kwargs):
    vol = client.volumes.create(size, **kwargs)
    return _settled(client, vol, cinder=cinder)


def _read_device(path, length, offset=0):
    with open(path, 'rb') as dev:
        dev.seek(offset)
        return dev.read(length)


def _write_device(path, payload, offset=0):
    with open(path, 'r+b') as dev:
        dev.seek(offset)
        dev.write(payload)
        dev.flush()
        os.fsync(dev.fileno())


def _engine_empty(node_client):
    assert node_client.volumes() == []
    assert node_client.snapshots() == []
    assert node_client.exports() == []


def test_types_snapshots_clones_extend_retype_and_attach(
        cinder, cinder_client, compute, types, tmp_path):
    client = cinder_client
    node = cinder.node.client()
    thin = _create(client, cinder, volume_type='engine-thin', name='thin')
    thick = _create(client, cinder, volume_type='engine-thick',
                    name='thick')
    assert node.volume(thin.id)['provisioning'] == 'thin'
    assert node.volume(thick.id)['provisioning'] == 'thick'

    first, second = os.urandom(MiB), os.urandom(MiB)
    mnt = tmp_path / 'mnt'
    # Nova's attach: a filesystem, files written, then detached.
    with Attachment(client, compute, thin.id) as att:
        assert host.device_size(att.path) == GiB
        host.run('mkfs.ext4', '-q', att.path)
        compute.clean.mount(att.path, mnt)
        (mnt / 'hello.txt').write_text('hello from the engine\n')
        (mnt / 'blob').write_bytes(first)
        compute.clean.umount(str(mnt))
    assert _status(client, thin.id) == 'available'
    assert node.exports(volume_id=thin.id) == []

    snap = client.volume_snapshots.create(thin.id, name='snap')
    snap = _settled(client, snap, manager='volume_snapshots', cinder=cinder)
    assert node.snapshot(snap.id)['volume_id'] == thin.id

    # Changed after the snapshot: the clone of the snapshot must not see it.
    with Attachment(client, compute, thin.id) as att:
        compute.clean.mount(att.path, mnt)
        assert (mnt / 'hello.txt').read_text() == 'hello from the engine\n'
        assert (mnt / 'blob').read_bytes() == first
        (mnt / 'blob').write_bytes(second)
        compute.clean.umount(str(mnt))

    from_snap = _create(client, cinder, size=2, snapshot_id=snap.id,
                        volume_type='engine-thin', name='from-snap')
    clone = _create(client, cinder, source_volid=thin.id,
                    volume_type='engine-thick', name='clone')
    with Attachment(client, compute, from_snap.id) as att:
        assert host.device_size(att.path) == 2 * GiB
        compute.clean.mount(att.path, mnt)
        assert (mnt / 'blob').read_bytes() == first
        compute.clean.umount(str(mnt))
    with Attachment(client, compute, clone.id) as att:
        compute.clean.mount(att.path, mnt)
        assert (mnt / 'blob').read_bytes() == second
        compute.clean.umount(str(mnt))
    assert node.volume(clone.id)['provisioning'] == 'thick'

    client.volumes.extend(thick.id, 3)
    _wait('volume %s extended' % thick.id,
          lambda: client.volumes.get(thick.id).size == 3 or
          _status(client, thick.id) not in ('available', 'extending'))
    thick = _settled(client, thick, cinder=cinder)
    assert thick.size == 3, cinder.log_tail('cinder-scheduler')
    assert node.volume(thick.id)['size'] == 3 * GiB

    client.volumes.retype(thin.id, 'engine-thick', 'never')
    thin = _settled(client, thin, cinder=cinder)
    assert thin.volume_type == 'engine-thick'
    assert node.volume(thin.id)['provisioning'] == 'thick'

    # Revert the volume to its snapshot (3.40).
    client.volumes.revert_to_snapshot(thin, snap)
    thin = _settled(client, thin, cinder=cinder)
    with Attachment(client, compute, thin.id) as att:
        compute.clean.mount(att.path, mnt)
        assert (mnt / 'blob').read_bytes() == first
        compute.clean.umount(str(mnt))

    # Delete everything: the engine holds nothing afterwards.
    for vol in (from_snap, clone):
        client.volumes.delete(vol.id)
    for vol in (from_snap, clone):
        _settled(client, vol, wanted='deleted', cinder=cinder)
    client.volume_snapshots.delete(snap.id)
    _settled(client, snap, wanted='deleted', manager='volume_snapshots',
             cinder=cinder)
    for vol in (thin, thick):
        client.volumes.delete(vol.id)
    for vol in (thin, thick):
        _settled(client, vol, wanted='deleted', cinder=cinder)
    _engine_empty(node)


def test_raw_data_written_through_the_device_reads_back(
        cinder, cinder_client, compute, types):
    vol = _create(cinder_client, cinder, volume_type='engine-thin')
    payload = os.urandom(4 * MiB)
    with Attachment(cinder_client, compute, vol.id) as att:
        _write_device(att.path, payload, 100 * MiB)
    with Attachment(cinder_client, compute, vol.id) as att:
        assert _read_device(att.path, len(payload), 100 * MiB) == payload
        assert _read_device(att.path, MiB, 0) == bytes(MiB)
        # Online extend: the volume grows while attached (in-use), and the
        # host's connector shows the new size on the same device.
        assert _status(cinder_client, vol.id) == 'in-use'
        cinder_client.volumes.extend(vol.id, 2)
        _wait('volume %s extended' % vol.id,
              lambda: cinder_client.volumes.get(vol.id).size == 2 or
              _status(cinder_client, vol.id) not in ('in-use', 'extending'))
        _settled(cinder_client, vol, wanted='in-use', cinder=cinder)
        assert cinder_client.volumes.get(vol.id).size == 2
        assert cinder.node.client().volume(vol.id)['size'] == 2 * GiB
        assert att.connector.extend_volume(att.properties) == 2 * GiB
        assert host.device_size(att.path) == 2 * GiB
        assert _read_device(att.path, len(payload), 100 * MiB) == payload
    cinder_client.volumes.delete(vol.id)
    _settled(cinder_client, vol, wanted='deleted', cinder=cinder)


def test_multiattach_volume_attaches_twice(cinder, cinder_client, compute,
                                           types):
    client = cinder_client
    name = 'engine-multiattach'
    cinder_mod.volume_type(client, name,
                           {'volume_backend_name': cinder.backend,
                            'multiattach': '<is> True'})
    vol = _create(client, cinder, volume_type=name)
    assert vol.multiattach
    with Attachment(client, compute, vol.id) as one:
        with Attachment(client, compute, vol.id) as two:
            assert one.path == two.path      # one host, one connection
            _write_device(one.path, b'm' * 4096)
            assert len(cinder.node.client().exports(volume_id=vol.id)) == 1
    assert cinder.node.client().exports(volume_id=vol.id) == []
    client.volumes.delete(vol.id)
    _settled(client, vol, wanted='deleted', cinder=cinder)


def test_volumes_still_attach_after_cinder_volume_restarts(
        cinder, cinder_client, compute, types):
    vol = _create(cinder_client, cinder, volume_type='engine-thin')
    with Attachment(cinder_client, compute, vol.id) as att:
        _write_device(att.path, b'r' * 4096)
    cinder.restart_volume_service()
    with Attachment(cinder_client, compute, vol.id) as att:
        assert _read_device(att.path, 4096) == b'r' * 4096
    cinder_client.volumes.delete(vol.id)
    _settled(cinder_client, vol, wanted='deleted', cinder=cinder)


def test_storage_node_down_fails_create_with_the_reason(
        cinder, cinder_client):
    node = cinder.node
    node.stop()
    try:
        vol = cinder_client.volumes.create(1, name='no-node')
        _settled(cinder_client, vol, wanted='error', cinder=cinder)
        # The operator finds why in cinder-volume's log.
        log = cinder.log_tail('cinder-volume', lines=400)
        assert 'creating volume %s' % vol.id in log
        assert 'unavailable' in log and 'storage-engine serve' in log
    finally:
        node.start()
    # The node never saw it; deleting the errored volume works.
    with pytest.raises(errors.NotFound):
        node.client().volume(vol.id)
    cinder_client.volumes.delete(vol.id)
    _settled(cinder_client, vol, wanted='deleted', cinder=cinder)
    # A stats poll while the node was down reported the backend down (no
    # capacity); the next one brings it back by itself.
    _wait('backend %s up again' % cinder.volume_host,
          lambda: [p.backend_state for p in cinder_client.pools.list(
              detailed=True) if p.name.startswith(cinder.volume_host + '#')]
          == ['up'])
    ok = _create(cinder_client, cinder, name='node-back')
    cinder_client.volumes.delete(ok.id)
    _settled(cinder_client, ok, wanted='deleted', cinder=cinder)


def test_bad_extra_spec_fails_create_with_the_reason(cinder, cinder_client):
    name = 'engine-bad'
    cinder_mod.volume_type(cinder_client, name,
                           {'volume_backend_name': cinder.backend,
                            'provisioning:type': 'fat'})
    vol = cinder_client.volumes.create(1, volume_type=name)
    _settled(cinder_client, vol, wanted='error', cinder=cinder)
    node = cinder.node.client()
    with pytest.raises(errors.NotFound):
        node.volume(vol.id)
    cinder_client.volumes.delete(vol.id)
    _settled(cinder_client, vol, wanted='deleted', cinder=cinder)
