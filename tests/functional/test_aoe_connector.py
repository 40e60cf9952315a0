"""The os-brick AoE connector against a real storage node serving AoE.

The node's AoE target is in network namespace A of a veth pair, this
host's AoE interface in namespace B (tests/fixtures/netns.py): no frame
leaves them. The connector is set up as a service sets it up (os-brick's
privsep daemon, an external lock) with ``network_namespace`` B, and runs
the real bridge (our initiator and NBD server), nbdfuse, losetup,
mkfs.ext4 and mount. Kernel mode is not tested here: this machine has no
aoe.ko (its command sequence is tested in tests/unit/test_aoe_connector.py).

Whatever a test leaves (loop devices, mounts, nbdfuse and bridge
processes) is removed afterwards by device and by PID, without the
connector's help.
"""

import os
import random
import re
import signal
import time

import pytest

from storage_engine import units
from tests.fixtures import host
from tests.fixtures import netns

MiB = units.Mi
# A refusal is silence: the connector waits this long for an answer.
TIMEOUT = 3.0
NOT_ADMITTED = '52:54:00:00:00:99'

veth_pair = netns.veth_pair


@pytest.fixture(scope='module', autouse=True)
def as_root():
    if os.geteuid() != 0:
        pytest.fail('the connector tests attach real loop devices, FUSE '
                    'mounts and raw sockets: run them as root',
                    pytrace=False)


def _ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json() if response.content else None


# -- what is left on the host ------------------------------------------------

def bridges_under(top: str) -> list:
    """PIDs of live AoE bridges whose socket is below ``top``."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                args = f.read().decode(errors='replace').split('\0')
            with open('/proc/%s/stat' % entry) as f:
                if f.read().rpartition(')')[2].split()[0] == 'Z':
                    continue
        except OSError:
            continue
        if 'os_brick_connectors.aoe_bridge' in args and \
                any(a.startswith(top + '/') for a in args):
            found.append(int(entry))
    return found


def nothing_left(top: str) -> None:
    host.nothing_left(top)
    assert bridges_under(top) == []
    assert not os.path.exists(top) or os.listdir(top) == []


@pytest.fixture(scope='module')
def brick(tmp_path_factory):
    with host.brick(tmp_path_factory.mktemp('os-brick-locks')) as setup:
        yield setup


@pytest.fixture
def run_dir(tmp_path):
    return str(tmp_path / 'run')


@pytest.fixture
def cleaner(run_dir):
    c = host.Cleaner(run_dir)
    try:
        yield c
    finally:
        c.clean()
        for pid in bridges_under(run_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while bridges_under(run_dir) and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def aoe_node(veth_pair, node_factory):
    """A node whose AoE target is on the pair's end in namespace A (the
    pair is closed after the node stops).
    """
    return node_factory('aoe-node', aoe={
        'interface': veth_pair.if_a,
        'network_namespace': veth_pair.ns_a})


@pytest.fixture
def make_connector(brick, run_dir, cleaner, veth_pair):
    from os_brick.initiator import connector

    def make(**kwargs):
        kwargs.setdefault('run_dir', run_dir)
        kwargs.setdefault('network_namespace', veth_pair.ns_b)
        kwargs.setdefault('timeout', TIMEOUT)
        return connector.InitiatorConnector.factory('AOE', None, **kwargs)
    return make


def _volume(node, name='vol', size=64 * MiB) -> dict:
    return _ok(node.post('/volumes', {'name': name, 'size': size}), 201)


def _export(node, volume, hosts, access_mode='rw') -> dict:
    """Connection properties, as our Cinder AoE driver passes them."""
    export = _ok(node.post('/exports', {
        'volume_id': volume['id'], 'hosts': list(hosts),
        'protocol': 'aoe', 'read_only': access_mode == 'ro'}), 201)
    conn = export['connection']
    return {'target_shelf': conn['shelf'], 'target_lun': conn['slot'],
            'target_mac': conn['mac'], 'target_interface': conn['interface'],
            'volume_id': volume['id'], 'export_id': export['id'],
            'access_mode': access_mode}


def _state_dir(run_dir, props):
    return os.path.join(run_dir, 'e%d.%d-%s' % (
        props['target_shelf'], props['target_lun'],
        props['target_mac'].replace(':', '')))


# -- the host's properties ----------------------------------------------------

def test_the_hosts_properties_are_the_macs_of_its_aoe_interfaces(
        brick, veth_pair):
    from os_brick.initiator import connector
    from oslo_config import cfg

    from os_brick_connectors import aoe     # registers [aoe_connector]

    cfg.CONF.set_override('network_namespace', veth_pair.ns_b, aoe.GROUP)
    try:
        props = connector.get_connector_properties(
            None, '127.0.0.1', multipath=False, enforce_multipath=False)
    finally:
        cfg.CONF.clear_override('network_namespace', aoe.GROUP)
    # Namespace B has its loopback and the veth end: only the latter.
    assert props['aoe_macs'] == [veth_pair.mac_b]


# -- fuse mode ----------------------------------------------------------------

def test_fuse_mode_keeps_a_filesystem_across_disconnect_and_connect(
        aoe_node, veth_pair, make_connector, cleaner, run_dir, tmp_path):
    props = _export(aoe_node, _volume(aoe_node), [veth_pair.mac_b])
    conn = make_connector(mode='fuse')

    attached = conn.connect_volume(props)
    device = attached['path']
    assert attached['type'] == 'block'
    assert re.fullmatch(r'/dev/loop\d+', device)
    assert host.device_size(device) == 64 * MiB
    assert conn.get_volume_paths(props) == [device]
    assert conn.check_valid_device(device)
    assert host.loops_under(run_dir) == [device]
    assert len(host.nbdfuse_under(run_dir)) == 1
    [bridge] = bridges_under(run_dir)
    # Detached: a session of its own, outliving the service.
    assert os.getsid(bridge) == bridge
    # Connecting again gives the same device, and nothing more.
    assert make_connector(mode='fuse').connect_volume(dict(props))[
        'path'] == device
    assert host.loops_under(run_dir) == [device]
    assert bridges_under(run_dir) == [bridge]

    host.run('mkfs.ext4', '-q', '-F', device)
    mnt = cleaner.mount(device, tmp_path / 'mnt')
    files = {'a.txt': b'hello over AoE\n', 'b.bin': os.urandom(3 * MiB + 17)}
    for name, data in files.items():
        with open(os.path.join(mnt, name), 'wb') as f:
            f.write(data)
    cleaner.umount(mnt)

    # Disconnect from the properties alone, as a restarted service would.
    make_connector().disconnect_volume(props, None)
    nothing_left(run_dir)
    assert conn.get_volume_paths(props) == []

    again = conn.connect_volume(props)['path']
    mnt = cleaner.mount(again, tmp_path / 'mnt2')
    for name, data in files.items():
        with open(os.path.join(mnt, name), 'rb') as f:
            assert f.read() == data
    cleaner.umount(mnt)
    conn.disconnect_volume(props, {'type': 'block', 'path': again})
    nothing_left(run_dir)


def test_a_read_only_export_gives_a_read_only_device(
        aoe_node, veth_pair, make_connector, run_dir):
    props = _export(aoe_node, _volume(aoe_node), [veth_pair.mac_b],
                    access_mode='ro')
    device = make_connector(mode='fuse').connect_volume(props)['path']
    assert host.run('blockdev', '--getro', device).stdout.strip() == '1'
    make_connector().disconnect_volume(props, None)
    nothing_left(run_dir)


def test_disconnecting_what_was_never_connected_is_fine(
        aoe_node, veth_pair, make_connector, run_dir):
    props = _export(aoe_node, _volume(aoe_node), [veth_pair.mac_b])
    conn = make_connector()
    conn.disconnect_volume(props, None)
    conn.disconnect_volume(dict(props, target_lun=200), None)
    nothing_left(run_dir)


@pytest.mark.parametrize('mode', ['fuse', 'file'])
def test_a_host_the_export_does_not_admit_is_refused_leaving_nothing(
        aoe_node, veth_pair, make_connector, run_dir, mode):
    from os_brick_connectors import aoe

    props = _export(aoe_node, _volume(aoe_node), [NOT_ADMITTED])
    with pytest.raises(aoe.AoEExportUnavailable) as err:
        make_connector(mode=mode).connect_volume(props)
    message = str(err.value)
    assert 'AoE target e%d.%d (%s) is not available to this host' % (
        props['target_shelf'], props['target_lun'],
        props['target_mac']) in message
    assert '%s: no answer within %gs' % (veth_pair.if_b, TIMEOUT) in message
    assert 'does not admit the MAC addresses of these interfaces' in message
    nothing_left(run_dir)
    assert not os.path.exists(_state_dir(run_dir, props))


# -- file mode ----------------------------------------------------------------

def test_file_mode_round_trips_unaligned_io_and_agrees_with_fuse_mode(
        aoe_node, veth_pair, make_connector, run_dir):
    size = 16 * MiB
    props = _export(aoe_node, _volume(aoe_node, size=size),
                    [veth_pair.mac_b])
    rng = random.Random(4321)
    writes = [(0, 1), (1, 511), (511, 2), (512, 512), (1000, 5000),
              (4095, 4097 + 2 * MiB), (size - 700, 700), (size - 1, 1)]
    writes += [(rng.randrange(size - 70000), rng.randrange(1, 70000))
               for _ in range(10)]
    expected = bytearray(size)

    attached = make_connector(mode='file').connect_volume(props)
    assert attached['type'] == 'file'
    handle = attached['path']
    conn = make_connector()
    assert conn.check_valid_device(handle)
    assert handle.size == size
    for offset, length in writes:
        data = rng.randbytes(length)
        expected[offset:offset + length] = data
        handle.seek(offset)
        assert handle.write(data) == length
    handle.flush()
    for offset, length in writes:
        handle.seek(offset)
        assert handle.read(length) == expected[offset:offset + length]
    conn.disconnect_volume(props, attached)
    assert handle.closed
    assert not conn.check_valid_device(handle)

    # What fuse mode reads is what file mode wrote.
    device = make_connector(mode='fuse').connect_volume(props)['path']
    with open(device, 'rb', buffering=0) as dev:
        for offset, length in writes:
            assert os.pread(dev.fileno(), length, offset) == \
                expected[offset:offset + length]
    make_connector().disconnect_volume(props, None)
    nothing_left(run_dir)


# -- extend -------------------------------------------------------------------

def test_extend_shows_the_new_size_on_the_same_device(
        aoe_node, veth_pair, make_connector, run_dir):
    vol = _volume(aoe_node, size=32 * MiB)
    props = _export(aoe_node, vol, [veth_pair.mac_b])
    conn = make_connector(mode='fuse')
    device = conn.connect_volume(props)['path']
    head = os.urandom(MiB)
    with open(device, 'r+b', buffering=0) as dev:
        os.pwrite(dev.fileno(), head, 0)
        os.fsync(dev.fileno())
    assert conn.extend_volume(props) == 32 * MiB

    _ok(aoe_node.request('PATCH', '/volumes/' + vol['id'],
                         json={'size': 96 * MiB}))
    assert conn.extend_volume(props) == 96 * MiB
    assert host.device_size(device) == 96 * MiB
    assert conn.get_volume_paths(props) == [device]
    assert len(bridges_under(run_dir)) == 1
    tail = os.urandom(MiB)
    with open(device, 'r+b', buffering=0) as dev:
        assert os.pread(dev.fileno(), MiB, 0) == head
        os.pwrite(dev.fileno(), tail, 95 * MiB)
        os.fsync(dev.fileno())
    # File mode: the size on the target, nothing on the host to refresh.
    assert make_connector(mode='file').extend_volume(props) == 96 * MiB
    handle = make_connector(mode='file').connect_volume(props)['path']
    with handle:
        handle.seek(95 * MiB)
        assert handle.read() == tail
    conn.disconnect_volume(props, None)
    nothing_left(run_dir)


def test_a_withdrawn_export_fails_io_and_still_disconnects(
        aoe_node, veth_pair, make_connector, run_dir):
    props = _export(aoe_node, _volume(aoe_node), [veth_pair.mac_b])
    # Each read of the device now waits this long for no answer.
    conn = make_connector(mode='fuse', timeout=1)
    device = conn.connect_volume(props)['path']
    _ok(aoe_node.request('DELETE', '/exports/' + props['export_id']), 204)
    with pytest.raises(OSError):
        with open(device, 'rb', buffering=0) as dev:
            os.pread(dev.fileno(), 4096, 40 * MiB)
    conn.disconnect_volume(props, None)
    nothing_left(run_dir)
