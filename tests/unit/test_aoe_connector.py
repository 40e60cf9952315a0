"""The os-brick AoE connector without a network: connection properties,
the host's AoE interfaces, registration, the kernel mode's commands, the
file handle and the bridge's backend.

The kernel mode cannot run here (no aoe.ko): its commands go to a
recording executor that plays aoe.ko's part, making /dev/etherd/eS.L (a
temporary directory) appear when told. The fuse and file modes against a
real target are tests/functional/test_aoe_connector.py.
"""

import io
import json
import os

from oslo_config import cfg
import pytest

from storage_engine import errors

MAC_T = '02:00:00:00:00:07'
LINKS = [
    {'ifname': 'lo', 'flags': ['LOOPBACK', 'UP', 'LOWER_UP'],
     'link_type': 'loopback', 'address': '00:00:00:00:00:00'},
    {'ifname': 'eth0', 'flags': ['BROADCAST', 'MULTICAST', 'UP'],
     'link_type': 'ether', 'address': '52:54:00:AA:00:01'},
    {'ifname': 'eth1', 'flags': ['BROADCAST', 'MULTICAST'],
     'link_type': 'ether', 'address': '52:54:00:aa:00:02'},
    {'ifname': 'san0', 'flags': ['BROADCAST', 'UP'],
     'link_type': 'ether', 'address': '52:54:00:aa:00:03'},
    {'ifname': 'wg0', 'flags': ['POINTOPOINT', 'UP'],
     'link_type': 'none'},
]


class Recorder:
    """An os-brick executor that records commands and answers them."""

    def __init__(self, answers=None):
        self.commands = []
        self.answers = answers or {}

    def __call__(self, *cmd, **kwargs):
        self.commands.append((cmd, kwargs.get('run_as_root', False)))
        answer = self.answers.get(cmd[0])
        if callable(answer):
            return answer(cmd)
        return answer or ('', '')


def _ip_answer(cmd):
    return json.dumps(LINKS), ''


@pytest.fixture
def aoe():
    from os_brick_connectors import aoe
    return aoe


@pytest.fixture
def lock_path(tmp_path):
    cfg.CONF.set_override('lock_path', str(tmp_path / 'locks'), 'os_brick')
    yield
    cfg.CONF.clear_override('lock_path', 'os_brick')


# -- connection properties ----------------------------------------------------

def test_properties_are_parsed_once_and_named(aoe):
    props = aoe.AoEConnProps.from_dict({
        'target_shelf': '12', 'target_lun': 3,
        'target_mac': '02-00-00-00-00-07', 'target_interface': 'eth9',
        'access_mode': 'ro', 'volume_id': 'v'})
    assert (props.shelf, props.slot, props.target_mac) == (12, 3, MAC_T)
    assert props.device == 'e12.3'
    assert props.read_only
    assert str(props) == 'e12.3 (%s)' % MAC_T
    paths = aoe.StatePaths.for_target('/run/x', props)
    assert paths.dir == '/run/x/e12.3-020000000007'
    assert aoe.StatePaths.for_target(
        '/run/x', aoe.AoEConnProps(1, 2)).dir == '/run/x/e1.2'


@pytest.mark.parametrize('change, words', [
    ({'target_shelf': None}, 'target_shelf is missing'),
    ({'target_shelf': 65535}, 'target_shelf must be an integer from 0 to '
                              '65534'),
    ({'target_lun': 255}, 'target_lun must be an integer from 0 to 254'),
    ({'target_lun': True}, 'target_lun must be an integer'),
    ({'target_mac': 'ff:ff'}, 'target_mac must be a MAC address'),
    ({'access_mode': 'rx'}, 'access_mode must be one of rw, ro'),
    ({'aoe_mode': 'magic'}, 'aoe_mode must be one of kernel, fuse, file'),
])
def test_invalid_properties_are_refused_by_name(aoe, change, words):
    from os_brick import exception

    props = {'target_shelf': 1, 'target_lun': 2, 'target_mac': MAC_T}
    props.update(change)
    props = {k: v for k, v in props.items() if v is not None}
    with pytest.raises(exception.InvalidParameterValue) as err:
        aoe.AoEConnProps.from_dict(props)
    assert 'invalid AoE connection properties' in str(err.value)
    assert words in str(err.value)


# -- the host's AoE interfaces ----------------------------------------------

def test_by_default_every_up_ethernet_interface_is_an_aoe_interface(aoe):
    run = Recorder({'ip': _ip_answer})
    assert aoe.host_interfaces(run, None) == [
        ('eth0', '52:54:00:aa:00:01'), ('san0', '52:54:00:aa:00:03')]
    # No namespace: read without root.
    assert run.commands == [(('ip', '-j', 'link', 'show'), False)]


def test_configured_interfaces_in_a_namespace_are_read_as_root(aoe):
    run = Recorder({'ip': _ip_answer})
    assert aoe.host_interfaces(run, None, ['san0', 'missing', 'eth1'],
                               'storage') == [
        ('san0', '52:54:00:aa:00:03'), ('eth1', '52:54:00:aa:00:02')]
    assert run.commands == [(('ip', '-n', 'storage', '-j', 'link', 'show'),
                             True)]


def test_connector_properties_follow_the_configuration(aoe):
    cfg.CONF.set_override('interfaces', ['san0'], aoe.GROUP)
    cfg.CONF.set_override('network_namespace', 'storage', aoe.GROUP)
    try:
        run = Recorder({'ip': _ip_answer})
        assert aoe.AoEConnector.get_connector_properties(
            None, execute=run, host='h', multipath=False) == {
                'aoe_macs': ['52:54:00:aa:00:03']}
        assert run.commands[0][0][:3] == ('ip', '-n', 'storage')
        # Keyword arguments override the configuration.
        assert aoe.AoEConnector.get_connector_properties(
            None, execute=Recorder({'ip': _ip_answer}), interfaces=[],
            network_namespace='') == {
                'aoe_macs': ['52:54:00:aa:00:01', '52:54:00:aa:00:03']}
    finally:
        cfg.CONF.clear_override('interfaces', aoe.GROUP)
        cfg.CONF.clear_override('network_namespace', aoe.GROUP)


def test_connector_properties_never_fail(aoe):
    from oslo_concurrency import processutils

    def fails(cmd):
        raise processutils.ProcessExecutionError(
            stderr='Cannot open network namespace "gone"')

    assert aoe.AoEConnector.get_connector_properties(
        None, execute=Recorder({'ip': fails}),
        network_namespace='gone') == {}
    assert aoe.AoEConnector.get_connector_properties(
        None, execute=Recorder({'ip': ('[]', '')})) == {}


def test_register_adds_the_connector_and_its_properties_once():
    from os_brick import initiator
    from os_brick.initiator import connector

    import os_brick_connectors

    os_brick_connectors.register()
    os_brick_connectors.register()
    path = 'os_brick_connectors.aoe.AoEConnector'
    assert connector.unix_connector_list.count(path) == 1
    assert connector.get_connector_mapping()['AOE'] == path
    assert initiator.AOE == 'AOE'
    from os_brick_connectors import aoe
    built = connector.InitiatorConnector.factory(
        'aoe', None, mode='fuse', interfaces=['san0'],
        network_namespace='storage', timeout=5)
    assert isinstance(built, aoe.AoEConnector)
    assert (built.mode, built.interfaces, built.network_namespace,
            built.timeout) == ('fuse', ['san0'], 'storage', 5.0)


# -- kernel mode --------------------------------------------------------------

class AoEKernel(Recorder):
    """aoetools on a pretend aoe.ko: aoe-discover makes the device appear
    at the ``appear_after``-th run (never, if None).
    """

    def __init__(self, etherd, device, appear_after=1):
        super().__init__()
        self.path = os.path.join(etherd, device)
        self.appear_after = appear_after
        self.answers = {'aoe-discover': self._discover,
                        'aoe-flush': self._flush}

    def _discover(self, cmd):
        runs = sum(1 for c, _ in self.commands if c[0] == 'aoe-discover')
        if self.appear_after is not None and runs >= self.appear_after:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            open(self.path, 'w').close()
        return '', ''

    def _flush(self, cmd):
        os.unlink(self.path)
        return '', ''


@pytest.fixture
def kernel(aoe, tmp_path, lock_path):
    etherd = str(tmp_path / 'etherd')
    module = tmp_path / 'module-aoe'
    module.mkdir()

    def make(appear_after=1, **kwargs):
        run = AoEKernel(etherd, 'e3.4', appear_after)
        conn = aoe.AoEConnector(
            None, execute=run, etherd_dir=etherd,
            aoe_module_dir=str(module), run_dir=str(tmp_path / 'run'),
            scan_interval=0.01, network_namespace='', **kwargs)
        return conn, run
    return make


PROPS = {'target_shelf': 3, 'target_lun': 4, 'target_mac': MAC_T,
         'volume_id': 'v', 'export_id': 'x'}


def _names(run):
    return [cmd for cmd, _root in run.commands]


def test_kernel_mode_is_chosen_with_aoe_ko_and_discovers_the_device(kernel):
    conn, run = kernel()
    attached = conn.connect_volume(dict(PROPS))
    assert attached == {'type': 'block', 'path': run.path}
    assert _names(run) == [('aoe-discover',)]
    assert all(root for _cmd, root in run.commands)
    assert conn.get_volume_paths(dict(PROPS)) == [run.path]
    assert conn.get_search_path() == os.path.dirname(run.path)


def test_kernel_mode_discovers_again_until_the_device_shows(kernel):
    conn, run = kernel(appear_after=3, device_scan_attempts=3)
    assert conn.connect_volume(dict(PROPS))['path'] == run.path
    assert _names(run) == [('aoe-discover',)] * 3


def test_kernel_mode_gives_up_after_the_scan_attempts(kernel):
    from os_brick import exception

    conn, run = kernel(appear_after=None, device_scan_attempts=2)
    with pytest.raises(exception.VolumeDeviceNotFound) as err:
        conn.connect_volume(dict(PROPS))
    assert run.path in str(err.value)
    # The first discovery, then one per attempt.
    assert _names(run) == [('aoe-discover',)] * 3


def test_kernel_mode_revalidates_a_device_that_is_there(kernel):
    conn, run = kernel()
    conn.connect_volume(dict(PROPS))
    run.commands.clear()
    assert conn.connect_volume(dict(PROPS))['path'] == run.path
    assert _names(run) == [('aoe-revalidate', 'e3.4')]


def test_kernel_mode_disconnect_flushes_the_device_from_the_properties(
        kernel):
    conn, run = kernel()
    conn.connect_volume(dict(PROPS))
    run.commands.clear()
    conn.disconnect_volume(dict(PROPS), None)
    assert _names(run) == [('aoe-flush', 'e3.4')]
    assert not os.path.exists(run.path)
    # Nothing attached: nothing run, no error.
    run.commands.clear()
    conn.disconnect_volume(dict(PROPS), None)
    assert run.commands == []


def test_kernel_mode_extend_revalidates_and_reads_the_new_size(
        kernel, aoe, monkeypatch):
    conn, run = kernel()
    conn.connect_volume(dict(PROPS))
    run.commands.clear()
    # aoe.ko shows the new size in sysfs once revalidated.
    sizes = {}
    run.answers['aoe-revalidate'] = lambda cmd: (
        sizes.update({run.path: 3 << 30}) or ('', ''))
    monkeypatch.setattr(aoe.host_mod, 'block_size', sizes.get)
    assert conn.extend_volume(dict(PROPS)) == 3 << 30
    assert _names(run) == [('aoe-revalidate', 'e3.4')]


def test_kernel_mode_refuses_a_network_namespace(kernel, aoe):
    conn, run = kernel()
    conn.network_namespace = 'storage'
    with pytest.raises(aoe.AoEConnectorError) as err:
        conn.connect_volume(dict(PROPS, aoe_mode='kernel'))
    assert 'aoe.ko sees only the interfaces of the host\'s own network ' \
        'namespace' in str(err.value)
    assert run.commands == []


def test_without_aoe_ko_the_default_mode_is_fuse(aoe, tmp_path):
    conn = aoe.AoEConnector(None, aoe_module_dir=str(tmp_path / 'none'))
    assert conn._mode(aoe.AoEConnProps(1, 2)) == 'fuse'
    assert conn._mode(aoe.AoEConnProps(1, 2, aoe_mode='file')) == 'file'
    assert aoe.AoEConnector(None, mode='kernel')._mode(
        aoe.AoEConnProps(1, 2)) == 'kernel'


# -- file handle and bridge backend -------------------------------------------

class FakeClient:
    """AoEClient's I/O interface over memory, aligned requests only."""

    def __init__(self, size):
        self.data = bytearray(size)
        self.size = size
        self.flushes = 0
        self.closed = False
        self.fail = None

    def _check(self, offset, length):
        if offset % 512 or length % 512:
            raise errors.UnalignedIO('unaligned %d+%d' % (offset, length))
        if self.fail:
            raise self.fail

    def read(self, offset, length):
        self._check(offset, length)
        return bytes(self.data[offset:offset + length])

    def write(self, offset, data):
        data = bytes(data)
        self._check(offset, len(data))
        self.data[offset:offset + len(data)] = data

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def test_the_file_handle_takes_unaligned_io():
    from os_brick_connectors import aoe_io

    client = FakeClient(64 * 1024)
    handle = aoe_io.AoEVolumeIO(client, name='e1.2')
    expected = bytearray(client.size)
    for offset, data in ((1, b'x' * 700), (511, b'yz'), (4096, b'q' * 8192),
                         (client.size - 3, b'end')):
        handle.seek(offset)
        assert handle.write(data) == len(data)
        expected[offset:offset + len(data)] = data
    handle.seek(0)
    assert handle.read() == expected == client.data
    handle.seek(-3, io.SEEK_END)
    with pytest.raises(OSError):
        handle.seek(0, io.SEEK_END)
        handle.write(b'!')
    handle.close()
    assert client.flushes == 1 and client.closed


def test_a_read_only_file_handle_refuses_writes():
    from os_brick_connectors import aoe_io

    handle = aoe_io.AoEVolumeIO(FakeClient(4096), read_only=True)
    with pytest.raises(io.UnsupportedOperation):
        handle.write(b'x')
    assert handle.read(10) == bytes(10)


def test_the_bridge_backend_hands_reads_to_threads_and_translates_errors():
    from os_brick_connectors import aoe_bridge

    client = FakeClient(8192)
    backend = aoe_bridge.AoEBackend(client)
    with pytest.raises(BlockingIOError):
        backend.read_extents(0, 512, nowait=True)
    backend.write(512, b'a' * 512)
    assert backend.read_extents(0, 1024) == [(0, 1024, bytes(512) +
                                              b'a' * 512)]
    view = bytearray(1024)
    [(offset, length, got)] = backend.read_extents_into(0, view)
    assert (offset, length, bytes(got)) == (0, 1024, bytes(view))
    assert view[512:] == b'a' * 512
    backend.write_zeroes(512, 512)
    assert backend.read(512, 512) == bytes(512)
    [extent] = backend.allocation(0, 8192)
    assert (extent.offset, extent.length, extent.state) == (0, 8192, 'data')
    client.fail = IOError('AoE error 3: device unavailable')
    with pytest.raises(errors.EngineError) as err:
        backend.write(0, bytes(512))
    assert 'device unavailable' in str(err.value)
    ro = aoe_bridge.AoEBackend(FakeClient(512), read_only=True)
    with pytest.raises(errors.ReadOnly):
        ro.write(0, bytes(512))
