"""The os-brick NBD connector against a real storage-node service.

Real nbdfuse, losetup, mkfs.ext4 and mount, through os-brick's own privsep
daemon (run here as root with ``[privsep_osbrick] helper_command``), as
cinder-volume would run it. Kernel mode is not tested: this machine has no
nbd.ko.

Whatever a test leaves (loop devices, mounts, nbdfuse processes) is removed
afterwards by device and by PID, without the connector's help.
"""

import os
import random
import re
import subprocess
import sys
import threading
import time

import pytest

from storage_engine import units
from tests.fixtures import host

MiB = units.Mi


@pytest.fixture(scope='module', autouse=True)
def as_root():
    # Loop devices and FUSE mounts need root: without it these tests fail
    # (never skip), as the project's README says to run them as root.
    if os.geteuid() != 0:
        pytest.fail('the connector tests attach real loop devices and FUSE '
                    'mounts: run them as root', pytrace=False)


def _ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json() if response.content else None


@pytest.fixture(scope='module')
def brick(tmp_path_factory):
    with host.brick(tmp_path_factory.mktemp('os-brick-locks')) as setup:
        yield setup


@pytest.fixture
def run_dir(tmp_path):
    top = tmp_path / 'run'
    return str(top)


@pytest.fixture
def cleaner(run_dir):
    c = host.Cleaner(run_dir)
    try:
        yield c
    finally:
        c.clean()


@pytest.fixture
def make_connector(brick, run_dir, cleaner):
    from os_brick.initiator import connector

    def make(**kwargs):
        kwargs.setdefault('run_dir', run_dir)
        return connector.InitiatorConnector.factory('NBD', None, **kwargs)
    return make


def _volume(node, name='vol', size=64 * MiB) -> dict:
    return _ok(node.post('/volumes', {'name': name, 'size': size}), 201)


def _export(node, volume, hosts=('127.0.0.1',), access_mode='rw') -> dict:
    """Connection properties, as our Cinder driver will pass them."""
    export = _ok(node.post('/exports', {'volume_id': volume['id'],
                                        'hosts': list(hosts)}), 201)
    return dict(export['connection'], volume_id=volume['id'],
                export_id=export['id'], access_mode=access_mode)


# -- registration -------------------------------------------------------------

def test_register_is_idempotent_and_the_factory_builds_our_connector(brick):
    from os_brick import initiator
    from os_brick.initiator import connector

    import os_brick_connectors
    from os_brick_connectors import nbd

    before = dict(connector.get_connector_mapping())
    threads = [threading.Thread(target=os_brick_connectors.register)
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os_brick_connectors.register()
    assert connector.get_connector_mapping() == before
    assert before['NBD'] == 'os_brick_connectors.nbd.NBDConnector'
    for arch in ('x86_64', 's390x', 'ppc64le'):
        assert connector.get_connector_mapping(arch)['NBD'] == before['NBD']
    assert initiator.NBD == 'NBD'
    # driver_volume_type 'nbd', as Cinder passes it.
    built = connector.InitiatorConnector.factory(
        'nbd', None, use_multipath=False, device_scan_attempts=3,
        conn={'driver_volume_type': 'nbd'})
    assert isinstance(built, nbd.NBDConnector)
    assert built.run_dir == nbd.DEFAULT_RUN_DIR
    assert nbd.NBDConnector.get_connector_properties(
        None, multipath=False, enforce_multipath=False) == {}


@pytest.mark.parametrize('change, words', [
    ({'host': None}, 'host is missing'),
    ({'port': 0}, 'port must be an integer from 1 to 65535'),
    ({'port': 'ten'}, 'port must be an integer from 1 to 65535'),
    ({'export_name': ''}, 'export_name must be a non-empty string'),
    ({'tls_mode': 'maybe'}, 'tls_mode must be one of off, optional, '
                            'require'),
    ({'access_mode': 'rx'}, 'access_mode must be one of rw, ro'),
    ({'nbd_mode': 'magic'}, 'nbd_mode must be one of kernel, fuse, file'),
], ids=['no host', 'port 0', 'port not a number', 'empty export name',
        'unknown tls_mode', 'unknown access_mode', 'unknown nbd_mode'])
def test_invalid_connection_properties_are_refused_by_name(
        make_connector, change, words):
    from os_brick import exception

    props = {'host': '127.0.0.1', 'port': 10809, 'export_name': 'x',
             'tls_mode': 'off'}
    props.update(change)
    props = {k: v for k, v in props.items() if v is not None}
    with pytest.raises(exception.InvalidParameterValue) as err:
        make_connector().connect_volume(props)
    assert 'invalid NBD connection properties' in str(err.value)
    assert words in str(err.value)


# -- fuse mode ----------------------------------------------------------------

def test_fuse_mode_keeps_a_filesystem_across_disconnect_and_connect(
        node, make_connector, cleaner, run_dir, tmp_path):
    vol = _volume(node, size=64 * MiB)
    props = _export(node, vol)
    conn = make_connector()
    state = os.path.join(run_dir, props['export_name'])

    attached = conn.connect_volume(props)
    device = attached['path']
    assert attached['type'] == 'block'
    assert re.fullmatch(r'/dev/loop\d+', device)
    assert host.device_size(device) == 64 * MiB
    assert conn.get_volume_paths(props) == [device]
    assert conn.check_valid_device(device)
    assert host.loops_under(run_dir) == [device]
    assert len(host.nbdfuse_under(run_dir)) == 1

    host.run('mkfs.ext4', '-q', '-F', device)
    mnt = cleaner.mount(device, tmp_path / 'mnt')
    files = {'a.txt': b'hello over NBD\n', 'b.bin': os.urandom(3 * MiB + 17)}
    for name, data in files.items():
        with open(os.path.join(mnt, name), 'wb') as f:
            f.write(data)
    cleaner.umount(mnt)

    # Disconnect from the properties alone, as a restarted service would.
    make_connector().disconnect_volume(props, None)
    host.nothing_left(run_dir)
    assert not os.path.exists(state)
    assert conn.get_volume_paths(props) == []

    again = conn.connect_volume(props)['path']
    mnt = cleaner.mount(again, tmp_path / 'mnt2')
    for name, data in files.items():
        with open(os.path.join(mnt, name), 'rb') as f:
            assert f.read() == data
    cleaner.umount(mnt)
    conn.disconnect_volume(props, {'type': 'block', 'path': again})
    host.nothing_left(run_dir)


def test_connecting_twice_gives_the_same_device_and_one_loop(
        node, make_connector, run_dir):
    props = _export(node, _volume(node))
    first = make_connector().connect_volume(props)['path']
    second = make_connector(mode='fuse').connect_volume(dict(props))['path']
    assert second == first
    assert host.loops_under(run_dir) == [first]
    assert len(host.nbdfuse_under(run_dir)) == 1
    make_connector().disconnect_volume(props, None)
    host.nothing_left(run_dir)


# A service attaching, then exiting (or restarting).
SERVICE = """
import json
import sys

from oslo_config import cfg
from os_brick import privileged  # noqa: registers [privsep_osbrick]
from os_brick.initiator import connector

import os_brick_connectors

conf, run_dir, props = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg.CONF.set_override('lock_path', conf['lock_path'], 'os_brick')
cfg.CONF.set_override('helper_command', conf['helper_command'],
                      'privsep_osbrick')
os_brick_connectors.register()
nbd = connector.InitiatorConnector.factory('NBD', None, run_dir=run_dir)
print(nbd.connect_volume(json.loads(props))['path'])
"""


def test_the_device_outlives_the_process_that_connected_it(
        node, brick, make_connector, run_dir):
    import json

    props = _export(node, _volume(node))
    service = subprocess.run(
        [sys.executable, '-c', SERVICE, json.dumps(brick), run_dir,
         json.dumps(props)], capture_output=True, text=True, timeout=120)
    assert service.returncode == 0, service.stderr
    device = service.stdout.split()[-1]
    # The service and its privsep daemon are gone; nbdfuse is not, and
    # is in a session of its own.
    [pid] = host.nbdfuse_under(run_dir)
    assert os.getsid(pid) == pid
    data = os.urandom(MiB)
    with open(device, 'r+b', buffering=0) as dev:
        os.pwrite(dev.fileno(), data, 5 * MiB)
        os.fsync(dev.fileno())
    handle = make_connector(mode='file').connect_volume(props)['path']
    with handle:
        handle.seek(5 * MiB)
        assert handle.read(MiB) == data
    assert make_connector().connect_volume(props)['path'] == device
    make_connector().disconnect_volume(props, None)
    host.nothing_left(run_dir)


def test_disconnecting_what_was_never_connected_is_fine(
        node, make_connector, run_dir):
    props = _export(node, _volume(node))
    conn = make_connector()
    conn.disconnect_volume(props, None)
    conn.disconnect_volume(dict(props, export_name='never-seen'), None)
    assert not os.path.exists(run_dir) or os.listdir(run_dir) == []


def test_a_read_only_export_gives_a_read_only_device(
        node, make_connector, run_dir):
    props = _export(node, _volume(node), access_mode='ro')
    device = make_connector().connect_volume(props)['path']
    assert host.run('blockdev', '--getro', device).stdout.strip() == '1'
    make_connector().disconnect_volume(props, None)
    host.nothing_left(run_dir)


def test_disconnect_leaves_a_device_a_process_holds_open_working(
        node, make_connector, run_dir):
    from os_brick_connectors import nbd

    props = _export(node, _volume(node))
    device = make_connector().connect_volume(props)['path']
    data = os.urandom(MiB)
    with open(device, 'r+b', buffering=0) as dev:
        with pytest.raises(nbd.NBDDeviceBusy) as err:
            make_connector().disconnect_volume(props, None)
        assert '%s (NBD export %s) is in use: a process has it open' % (
            device, props['export_name']) in str(err.value)
        # nbdfuse still serves the device for the process that has it.
        os.pwrite(dev.fileno(), data, MiB)
        os.fsync(dev.fileno())
        assert os.pread(dev.fileno(), MiB, MiB) == data
    # Closed, the kernel let the loop device go; the rest goes now.
    make_connector().disconnect_volume(props, None)
    host.nothing_left(run_dir)
    handle = make_connector(mode='file').connect_volume(props)['path']
    with handle:
        handle.seek(MiB)
        assert handle.read(MiB) == data


def test_kernel_mode_without_nbd_ko_is_a_clear_error(
        node, make_connector, run_dir):
    from os_brick_connectors import nbd

    if os.path.exists('/dev/nbd0'):
        pytest.skip('this machine has nbd.ko')
    props = _export(node, _volume(node))
    with pytest.raises(nbd.NBDConnectorError) as err:
        make_connector(mode='kernel').connect_volume(props)
    assert 'no free /dev/nbdN device to connect NBD export %s at ' \
        '127.0.0.1:%d' % (props['export_name'], props['port']) \
        in str(err.value)
    assert not os.path.exists(os.path.join(run_dir, props['export_name']))


@pytest.mark.parametrize('case', ['unknown export name', 'host not admitted'])
def test_an_export_this_host_cannot_use_is_a_clear_error_leaving_nothing(
        node, make_connector, run_dir, case):
    from os_brick_connectors import nbd

    vol = _volume(node)
    if case == 'unknown export name':
        props = dict(_export(node, vol), export_name='no-such-export')
    else:
        props = _export(node, vol, hosts=['192.0.2.7'])
    for mode in ('fuse', 'file'):
        with pytest.raises(nbd.NBDExportUnavailable) as err:
            make_connector(mode=mode).connect_volume(props)
        message = str(err.value)
        assert 'NBD export %s at 127.0.0.1:%d is not available to this ' \
            'host' % (props['export_name'], props['port']) in message
        assert 'no such export, or the export does not admit this host' \
            in message
        host.nothing_left(run_dir)
        assert not os.path.exists(os.path.join(run_dir,
                                               props['export_name']))


def test_nbdfuse_refusing_the_export_is_reported_and_cleaned_up(
        node, make_connector, run_dir):
    """The same refusal met by nbdfuse itself, past our own check."""
    from os_brick_connectors import nbd

    vol = _volume(node)
    props = dict(_export(node, vol), export_name='no-such-export')
    conn = make_connector(mode='fuse')

    class Reachable:
        def close(self):
            pass

    # Skip only the connector's own first check, so nbdfuse runs.
    conn._open_client = lambda props: Reachable()
    with pytest.raises(nbd.NBDExportUnavailable) as err:
        conn.connect_volume(props)
    assert 'nbdfuse exited' in str(err.value)
    assert 'no-such-export' in str(err.value)
    host.nothing_left(run_dir)
    assert not os.path.exists(os.path.join(run_dir, 'no-such-export'))


@pytest.fixture
def tls_node(node_factory, pki):
    """A node whose NBD server requires TLS and a client certificate."""
    return node_factory(
        'secure', nbd_extra='tls_mode = require\ntls_cert_file = %s\n'
        'tls_key_file = %s\ntls_ca_file = %s'
        % (pki.path('server-cert.pem'), pki.path('server-key.pem'),
           pki.path('ca-cert.pem')))


def test_tls_exports_attach_with_the_client_certificates(
        tls_node, pki, make_connector, run_dir):
    from os_brick_connectors import nbd

    props = _export(tls_node, _volume(tls_node, size=8 * MiB))
    assert props['tls_mode'] == 'require'
    with pytest.raises(nbd.NBDExportUnavailable) as err:
        make_connector().connect_volume(dict(props, tls_mode='off'))
    assert 'the server requires TLS (connection tls_mode is off)' in \
        str(err.value)
    host.nothing_left(run_dir)

    props['tls_certificates'] = pki.client_dir()
    data = os.urandom(4096)
    handle = make_connector(mode='file').connect_volume(props)['path']
    with handle:
        handle.seek(12345)
        handle.write(data)
    device = make_connector(mode='fuse').connect_volume(props)['path']
    assert host.device_size(device) == 8 * MiB
    with open(device, 'rb', buffering=0) as dev:
        assert os.pread(dev.fileno(), 4096, 12345) == data
    proxy = 'export=' + props['export_name']
    assert len(host.processes('nbdkit', proxy)) == 1
    make_connector().disconnect_volume(props, None)
    host.nothing_left(run_dir)
    deadline = time.monotonic() + 30
    while host.processes('nbdkit', proxy) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert host.processes('nbdkit', proxy) == []


# -- file mode ----------------------------------------------------------------

def test_file_mode_round_trips_unaligned_io_and_agrees_with_fuse_mode(
        node, make_connector, run_dir):
    size = 16 * MiB
    vol = _volume(node, size=size)
    props = _export(node, vol)
    rng = random.Random(1234)
    writes = [(0, 1), (1, 511), (511, 2), (512, 512), (1000, 5000),
              (4095, 4097 + 8 * MiB), (size - 700, 700), (size - 1, 1)]
    writes += [(rng.randrange(size - 70000), rng.randrange(1, 70000))
               for _ in range(20)]
    expected = bytearray(size)

    attached = make_connector(mode='file').connect_volume(props)
    assert attached['type'] == 'file'
    handle = attached['path']
    conn = make_connector()
    assert conn.check_valid_device(handle)
    assert (handle.readable(), handle.writable(), handle.seekable()) == \
        (True, True, True)
    assert handle.size == size
    for offset, length in writes:
        data = rng.randbytes(length)
        expected[offset:offset + length] = data
        assert handle.seek(offset) == offset
        assert handle.write(data) == length
        assert handle.tell() == offset + length
    handle.flush()
    handle.fsync()
    for offset, length in writes:
        handle.seek(offset)
        assert handle.read(length) == expected[offset:offset + length]
        into = bytearray(length + 3)
        handle.seek(offset)
        got = handle.readinto(into)
        assert got == min(length + 3, size - offset)
        assert into[:got] == expected[offset:offset + got]
    assert handle.seek(-100, os.SEEK_END) == size - 100
    assert handle.read() == expected[-100:]
    assert handle.read(10) == b''
    handle.seek(0)
    assert handle.read() == expected
    # Past the end, like a block device: what fits, then no space.
    handle.seek(size - 3)
    assert handle.write(b'wxyz') == 3
    expected[size - 3:] = b'wxy'
    with pytest.raises(OSError):
        handle.write(b'!')
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
    host.nothing_left(run_dir)


def test_file_mode_of_a_read_only_export_refuses_writes(
        node, make_connector):
    import io

    props = _export(node, _volume(node), access_mode='ro')
    conn = make_connector()
    handle = conn.connect_volume(dict(props, nbd_mode='file'))['path']
    assert not handle.writable()
    with pytest.raises(io.UnsupportedOperation):
        handle.write(b'x')
    assert handle.read(4096) == bytes(4096)
    conn.disconnect_volume(props, {'path': handle})
    assert handle.closed


# -- extend -------------------------------------------------------------------

def test_extend_shows_the_new_size_on_the_same_device(
        node, make_connector, run_dir):
    vol = _volume(node, size=32 * MiB)
    props = _export(node, vol)
    conn = make_connector()
    device = conn.connect_volume(props)['path']
    head = os.urandom(MiB)
    with open(device, 'r+b', buffering=0) as dev:
        os.pwrite(dev.fileno(), head, 0)
        os.fsync(dev.fileno())

    # Nothing grew yet: nothing to do.
    assert conn.extend_volume(props) == 32 * MiB
    grown = _ok(node.request('PATCH', '/volumes/' + vol['id'],
                             json={'size': 96 * MiB}))
    assert grown['size'] == 96 * MiB
    assert conn.extend_volume(props) == 96 * MiB
    assert host.device_size(device) == 96 * MiB
    assert conn.get_volume_paths(props) == [device]
    assert host.loops_under(run_dir) == [device]
    assert len(host.nbdfuse_under(run_dir)) == 1

    tail = os.urandom(MiB)
    with open(device, 'r+b', buffering=0) as dev:
        assert os.pread(dev.fileno(), MiB, 0) == head
        os.pwrite(dev.fileno(), tail, 95 * MiB)
        os.fsync(dev.fileno())
    handle = make_connector(mode='file').connect_volume(props)['path']
    try:
        assert handle.size == 96 * MiB
        handle.seek(95 * MiB)
        assert handle.read() == tail
    finally:
        handle.close()
    # File mode: the size on the server, nothing on the host to refresh.
    assert make_connector(mode='file').extend_volume(props) == 96 * MiB
    conn.disconnect_volume(props, None)
    host.nothing_left(run_dir)


def test_extend_refuses_a_mounted_device_and_leaves_it_working(
        node, make_connector, cleaner, run_dir, tmp_path):
    from os_brick_connectors import nbd

    vol = _volume(node, size=32 * MiB)
    props = _export(node, vol)
    conn = make_connector()
    device = conn.connect_volume(props)['path']
    host.run('mkfs.ext4', '-q', '-F', device)
    mnt = cleaner.mount(device, tmp_path / 'mnt')
    _ok(node.request('PATCH', '/volumes/' + vol['id'],
                     json={'size': 64 * MiB}))
    with pytest.raises(nbd.NBDDeviceBusy) as err:
        conn.extend_volume(props)
    assert '%s (NBD export %s) is in use: mounted on %s' % (
        device, props['export_name'], mnt) in str(err.value)
    with open(os.path.join(mnt, 'still-works'), 'w') as f:
        f.write('yes')
    cleaner.umount(mnt)
    assert host.device_size(device) == 32 * MiB
    # Unmounted, the same call succeeds.
    assert conn.extend_volume(props) == 64 * MiB
    assert host.device_size(device) == 64 * MiB
    mnt = cleaner.mount(device, tmp_path / 'mnt')
    with open(os.path.join(mnt, 'still-works')) as f:
        assert f.read() == 'yes'
    cleaner.umount(mnt)
    conn.disconnect_volume(props, None)
    host.nothing_left(run_dir)
