"""The devstack plugin (devstack/override-defaults, settings, plugin.sh) run
through stack.sh's, unstack.sh's and clean.sh's phases, in their order and
under stack.sh's error traps, against the stand-in for devstack in
tests/functional/devstack/devstack_stub.py: the storage node is a devstack
service (``run_process storage-engine``, unit
devstack@storage-engine.service) that outlives stack.sh, and Cinder's
backends follow its configuration.
"""

import socket

import pytest
import requests

from tests.fixtures.etcd import free_port
from tests.fixtures.node import free_port_range
from tests.fixtures import processes
from tests.functional.devstack.devstack_stub import CLEAN
from tests.functional.devstack.devstack_stub import Devstack
from tests.functional.devstack.devstack_stub import NODE_UNIT
from tests.functional.devstack.devstack_stub import STACK
from tests.functional.devstack.devstack_stub import TOP
from tests.functional.devstack.devstack_stub import UNSTACK
from tests.functional.devstack.test_devstack_lib import parsed

# The address the stub gives devstack's HOST_IP: a loopback address other
# than 127.0.0.1, so that a node or URL pinned to 127.0.0.1 shows.
HOST_IP = '127.0.0.2'


@pytest.fixture
def devstack(tmp_path):
    """A devstack stand-in factory; whatever it started is stopped."""
    made = []

    def make(**env):
        made.append(Devstack(tmp_path, **env))
        return made[-1]

    yield make
    for stand_in in made:
        stand_in.stop_everything()


def _node_env():
    port = free_port()
    nbd_ports = free_port_range(2)
    return {'STORAGE_ENGINE_API_PORT': str(port),
            'STORAGE_ENGINE_NBD_PORT_RANGE': '%d:%d' % (nbd_ports[0],
                                                        nbd_ports[-1]),
            'STORAGE_ENGINE_POOL_SIZE': '1G'}


def _get(port, path, token, host=HOST_IP):
    return requests.get('http://%s:%d%s' % (host, port, path),
                        headers={'X-Auth-Token': token}, timeout=10)


def test_the_node_is_a_devstack_service_that_outlives_stack_sh(devstack):
    env = _node_env()
    port = int(env['STORAGE_ENGINE_API_PORT'])
    ds = devstack(**env)
    out = ds.ok(STACK)
    # stack.sh has exited, through its exit trap (LOGFILE and VERBOSE set,
    # as in CI): the node is still there.
    pid = ds.main_pid()
    assert pid is not None and processes.alive(pid), ds.journal()
    assert 'stopping' not in ds.journal()

    # Our backend is Cinder's (the only one: none was asked for).
    assert 'CINDER_ENABLED_BACKENDS=storage_engine_lvm:se-lvm' in \
        out.splitlines()
    assert ds.calls() == [
        'define_plugin storage-engine',
        'install_package nbd-client libnbd-bin fuse3 nbdkit aoetools',
        'setup_develop %s' % TOP]

    # A devstack unit runs it as the stack user, on its configuration.
    unit = parsed(ds.units / NODE_UNIT)['Service']
    assert unit['ExecStart'] == ['%s/storage-engine serve --config-file %s'
                                 % (ds.env['STUB_VENV'] + '/bin',
                                    ds.node_conf)]
    assert unit['User'] == [ds.ok('id -un').strip()]
    assert ds.enabled()
    assert ds.started()['pid'] == pid

    # It listens where other hosts reach it (HOST_IP), for the API and the
    # exports, and Cinder's backend section says so.
    node = parsed(ds.node_conf)
    token = node['api']['auth_token'][0]
    assert len(token) == 64
    assert node['api']['host'] == [HOST_IP]
    assert node['api']['port'] == [str(port)]
    assert node['nbd']['host'] == [HOST_IP]
    cinder = parsed(ds.cinder_conf)
    assert cinder['DEFAULT']['enabled_backends'] == ['se-lvm']
    assert cinder['se-lvm'] == {
        'volume_driver': ['cinder_drivers.lvm.EngineLVMDriver'],
        'volume_backend_name': ['se-lvm'],
        'engine_api_url': ['http://%s:%d' % (HOST_IP, port)],
        'engine_api_token': [token],
        'engine_pool': ['default'],
        'engine_provisioning': ['thin'],
        'engine_export_protocol': ['nbd'],
        'max_over_subscription_ratio': ['20.0'],
        'reserved_percentage': ['0'],
    }
    # cinder-volume found its node when it started.
    ds.wait_journal('backend se-lvm: 200', 'devstack@c-vol.service')

    # The node answers with that token and only with it, and the extra
    # phase left it alone (nothing changed its configuration).
    assert 'storage-engine: ready at http://%s:%d' % (HOST_IP, port) in out
    assert 'restarting' not in out
    assert len(ds.starts()) == 1
    ready = _get(port, '/v1/ready', token)
    assert ready.status_code == 200 and ready.json()['ready'] is True
    assert _get(port, '/v1/ready', 'wrong').status_code == 401
    assert [p['name'] for p in _get(port, '/v1/pools', token).json()[
        'pools']] == ['default']
    # nova-compute is enabled: the operator is told what it cannot do.
    assert '[WARNING] storage-engine: se-lvm is Cinder\'s default volume ' \
        'type, and nova-compute cannot attach its volumes' in out

    ds.ok(UNSTACK)
    assert not processes.alive(pid)
    assert not ds.enabled()
    assert 'stopping' in ds.journal()
    assert ds.state.is_dir()

    ds.ok(CLEAN)
    assert not ds.state.exists()
    assert not ds.conf_dir.exists()
    assert ds.data.is_dir()


def test_extra_restarts_the_node_that_local_conf_reconfigured(devstack):
    env = _node_env()
    port = int(env['STORAGE_ENGINE_API_PORT'])
    ds = devstack(**env)
    # local.conf: [[post-config|$STORAGE_ENGINE_CONF]]
    # [pool:default] reserved_percentage = 7
    out = ds.ok(STACK, POST_CONFIG_MERGE=(
        'iniset "$STORAGE_ENGINE_CONF" pool:default reserved_percentage 7'))
    assert 'storage-engine.conf changed; restarting the node' in out
    first, second = (start['pid'] for start in ds.starts())
    assert not processes.alive(first)
    assert ds.main_pid() == second

    token = parsed(ds.node_conf)['api']['auth_token'][0]
    pools = _get(port, '/v1/pools', token).json()['pools']
    assert [p['reserved_percentage'] for p in pools] == [7]
    # The API did not move: cinder-volume was left alone.
    assert len(ds.starts('devstack@c-vol.service')) == 1

    ds.ok(UNSTACK)
    assert not processes.alive(second)
    assert not ds.enabled()


def test_a_merged_api_port_and_token_reach_cinder(devstack):
    env = _node_env()
    new_port = free_port()
    ds = devstack(**env)
    # local.conf: [[post-config|$STORAGE_ENGINE_CONF]] [api] port, and
    # auth_token.
    out = ds.ok(STACK, POST_CONFIG_MERGE=(
        'iniset "$STORAGE_ENGINE_CONF" api port %d; '
        'iniset "$STORAGE_ENGINE_CONF" api auth_token merged-token'
        % new_port))
    assert 'restarting the node' in out
    assert _get(new_port, '/v1/ready', 'merged-token').status_code == 200

    section = parsed(ds.cinder_conf)['se-lvm']
    assert section['engine_api_url'] == ['http://%s:%d' % (HOST_IP,
                                                           new_port)]
    assert section['engine_api_token'] == ['merged-token']
    # cinder-volume was restarted, and found the node where it is now.
    assert len(ds.starts('devstack@c-vol.service')) == 2
    journal = ds.wait_journal('backend se-lvm: ', 'devstack@c-vol.service',
                              count=2)
    assert journal.rstrip().splitlines()[-1] == 'backend se-lvm: 200'


def test_a_node_that_cannot_start_fails_the_stack(devstack):
    env = _node_env()
    ds = devstack(**env)
    with socket.socket() as busy:
        busy.bind((HOST_IP, int(env['STORAGE_ENGINE_API_PORT'])))
        busy.listen()
        result = ds.run(STACK)
    assert result.returncode != 0
    assert ('[ERROR] storage-engine: the storage node did not start; see '
            'journalctl -u %s' % NODE_UNIT) in result.stderr
    # stack.sh stopped there: the extra phase never ran.
    assert not [line for line in result.stdout.splitlines()
                if line.startswith(('CINDER_ENABLED_BACKENDS=',
                                    'Restarting the storage-engine'))]
    assert ds.main_pid() is None


def test_override_defaults_adds_our_backends_once(tmp_path):
    devstack = Devstack(tmp_path)
    show = ('plugin_override_defaults; source_lib_cinder; '
            'echo "$CINDER_ENABLED_BACKENDS"')

    def backends(**env):
        return devstack.ok(show, **env).strip()

    assert backends() == 'storage_engine_lvm:se-lvm'
    assert backends(CINDER_ENABLED_BACKENDS='lvm:lvmdriver-1') == \
        'lvm:lvmdriver-1,storage_engine_lvm:se-lvm'
    # Listed already (by name), as the operator wrote it.
    assert backends(CINDER_ENABLED_BACKENDS='storage_engine_lvm:se-lvm,'
                    'lvm:lvmdriver-1') == \
        'storage_engine_lvm:se-lvm,lvm:lvmdriver-1'
    assert backends(STORAGE_ENGINE_CINDER_BACKENDS='storage_engine_lvm:a,'
                    'storage_engine_lvm:b',
                    CINDER_ENABLED_BACKENDS='storage_engine_lvm:a') == \
        'storage_engine_lvm:a,storage_engine_lvm:b'
    # disable_service storage-engine: devstack's default stays.
    assert backends(DISABLED_SERVICES='tempest,storage-engine') == \
        'lvm:lvmdriver-1'


def test_every_backend_of_ours_gets_its_section(tmp_path):
    devstack = Devstack(tmp_path, STORAGE_ENGINE_CINDER_BACKENDS=(
        'storage_engine_lvm:fast,storage_engine_lvm:slow'))
    devstack.ok('plugin_override_defaults; source_lib_cinder; '
                'load_plugin_settings; run_phase stack pre-install; '
                'configure_cinder')
    cinder = parsed(devstack.cinder_conf)
    assert cinder['DEFAULT']['enabled_backends'] == ['fast,slow']
    for name in ('fast', 'slow'):
        assert cinder[name]['volume_backend_name'] == [name]
        assert cinder[name]['volume_driver'] == [
            'cinder_drivers.lvm.EngineLVMDriver']
    assert cinder['fast']['engine_api_token'] == \
        cinder['slow']['engine_api_token']


def test_an_aoe_backend_gets_the_aoe_driver(tmp_path):
    devstack = Devstack(tmp_path, STORAGE_ENGINE_CINDER_BACKENDS=(
        'storage_engine_lvm:se-lvm,storage_engine_aoe:se-aoe'))
    devstack.ok('plugin_override_defaults; source_lib_cinder; '
                'load_plugin_settings; run_phase stack pre-install; '
                'configure_cinder')
    cinder = parsed(devstack.cinder_conf)
    assert cinder['DEFAULT']['enabled_backends'] == ['se-lvm,se-aoe']
    assert cinder['se-lvm']['volume_driver'] == [
        'cinder_drivers.lvm.EngineLVMDriver']
    assert cinder['se-aoe']['volume_driver'] == [
        'cinder_drivers.aoe.EngineAoEDriver']
    assert cinder['se-aoe']['volume_backend_name'] == ['se-aoe']


def test_nothing_happens_when_the_service_is_disabled(devstack):
    ds = devstack(DISABLED_SERVICES='storage-engine')
    out = ds.ok(STACK)
    ds.ok(UNSTACK)
    ds.ok(CLEAN)
    assert 'CINDER_ENABLED_BACKENDS=lvm:lvmdriver-1' in out.splitlines()
    assert ds.calls() == ['define_plugin storage-engine'] * 3
    assert not (ds.units / NODE_UNIT).exists()
    assert not ds.state.exists()
    assert not ds.node_conf.exists()
    assert 'se-lvm' not in parsed(ds.cinder_conf)
    # Nor does anything of ours reach tempest or cinder-backup.
    assert 'storage_protocol' not in parsed(ds.tempest_conf).get(
        'volume', {})


@pytest.mark.parametrize('env, host, url_host', [
    ({}, HOST_IP, HOST_IP),
    ({'SERVICE_IP_VERSION': '6', 'HOST_IPV6': 'fd00::2'}, 'fd00::2',
     '[fd00::2]'),
    ({'STORAGE_ENGINE_API_HOST': '192.0.2.7'}, '192.0.2.7', '192.0.2.7'),
], ids=['HOST_IP', 'IPv6', 'chosen'])
def test_the_api_listens_where_other_hosts_reach_it(tmp_path, env, host,
                                                    url_host):
    devstack = Devstack(tmp_path, STORAGE_ENGINE_API_PORT='8790', **env)
    devstack.ok('plugin_override_defaults; source_lib_cinder; '
                'load_plugin_settings; run_phase stack pre-install; '
                'configure_cinder; configure_storage_engine')
    assert parsed(devstack.node_conf)['api']['host'] == [host]
    assert parsed(devstack.cinder_conf)['se-lvm']['engine_api_url'] == [
        'http://%s:8790' % url_host]
