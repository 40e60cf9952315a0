"""devstack/lib/storage-engine for the AoE family: the backend section of
``configure_storage_engine_backend CONF NAME aoe``, the cinder-volume
host's ``[aoe_connector]``, and the node's ``[aoe]`` section, read back
with oslo.config's own parser (helpers of test_devstack_lib.py); and the
devstack plugin's systemd drop-in that gives a node serving AoE, run as the
stack user, the capabilities its AF_PACKET socket needs (and no others).
"""

import subprocess
import sys

import pytest

from tests.fixtures.etcd import free_port
from tests.functional.devstack.devstack_stub import Devstack
from tests.functional.devstack.devstack_stub import FAKE_SERVICES
from tests.functional.devstack.test_devstack_lib import bash
from tests.functional.devstack.test_devstack_lib import LIB
from tests.functional.devstack.test_devstack_lib import parsed

TOKEN = {'STORAGE_ENGINE_API_TOKEN': 't'}


def test_an_aoe_backend_gets_the_aoe_driver_and_its_hosts_connector(
        tmp_path):
    conf = tmp_path / 'cinder.conf'
    env = dict(TOKEN, STORAGE_ENGINE_AOE_CONNECTOR_INTERFACES='san0,san1',
               STORAGE_ENGINE_AOE_CONNECTOR_NETWORK_NAMESPACE='storage',
               # A global protocol does not apply to a family's backend.
               STORAGE_ENGINE_EXPORT_PROTOCOL='nbd')
    bash('configure_storage_engine_backend "$1" lvm-1; '
         'configure_storage_engine_backend "$1" aoe-1 aoe', conf, env=env,
         lib=LIB)
    sections = parsed(conf)
    assert sections['aoe-1']['volume_driver'] == [
        'cinder_drivers.aoe.EngineAoEDriver']
    assert sections['aoe-1']['engine_export_protocol'] == ['aoe']
    assert sections['lvm-1']['volume_driver'] == [
        'cinder_drivers.lvm.EngineLVMDriver']
    assert sections['lvm-1']['engine_export_protocol'] == ['nbd']
    assert sections['aoe_connector'] == {'interfaces': ['san0,san1'],
                                         'network_namespace': ['storage']}
    before = conf.read_text()
    bash('configure_storage_engine_backend "$1" aoe-1 aoe', conf, env=env,
         lib=LIB)
    assert conf.read_text() == before


@pytest.mark.parametrize('family, env, driver, protocol', [
    ('lvm', {}, 'cinder_drivers.lvm.EngineLVMDriver', 'nbd'),
    ('cinder_drivers.aoe.EngineAoEDriver', {},
     'cinder_drivers.aoe.EngineAoEDriver', 'aoe'),
    ('', {'STORAGE_ENGINE_VOLUME_DRIVER':
          'cinder_drivers.aoe.EngineAoEDriver'},
     'cinder_drivers.aoe.EngineAoEDriver', 'aoe'),
    ('', {}, 'cinder_drivers.lvm.EngineLVMDriver', 'nbd'),
], ids=['lvm', 'aoe class path', 'aoe driver variable', 'default'])
def test_the_export_protocol_follows_the_driver(tmp_path, family, env,
                                                driver, protocol):
    conf = tmp_path / 'cinder.conf'
    bash('configure_storage_engine_backend "$1" be "$2"', conf, family,
         env=dict(TOKEN, **env), lib=LIB)
    section = parsed(conf)['be']
    assert (section['volume_driver'], section['engine_export_protocol']) \
        == ([driver], [protocol])
    # No AoE backend: no [aoe_connector] either.
    if protocol == 'nbd':
        assert 'aoe_connector' not in parsed(conf)


def test_an_unknown_family_is_refused(tmp_path):
    conf = tmp_path / 'cinder.conf'
    result = subprocess.run(
        ['bash', '-c', 'source "$0"; configure_storage_engine_backend '
         '"$1" be iscsi', LIB, str(conf)],
        env={'PATH': '/usr/bin:/bin', **TOKEN}, capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown family 'iscsi' (lvm, aoe, or a volume driver's class " \
        "path)" in result.stderr
    assert not conf.exists()


def test_every_option_written_is_one_the_code_registers(tmp_path):
    from cinder.volume import driver as cinder_driver

    from cinder_drivers import base
    from os_brick_connectors import aoe
    from storage_engine.service import serve

    conf = tmp_path / 'cinder.conf'
    node_conf = tmp_path / 'node.conf'
    env = dict(TOKEN, STORAGE_ENGINE_AOE_CONNECTOR_INTERFACES='san0',
               STORAGE_ENGINE_AOE_CONNECTOR_NETWORK_NAMESPACE='storage',
               STORAGE_ENGINE_AOE_CONNECTOR_MODE='fuse',
               STORAGE_ENGINE_AOE_INTERFACE='san0',
               STORAGE_ENGINE_AOE_NETWORK_NAMESPACE='storage',
               STORAGE_ENGINE_AOE_SHELF='12',
               STORAGE_ENGINE_STATE_PATH=str(tmp_path / 'state'))
    bash('configure_storage_engine_backend "$1" be aoe; '
         'write_storage_engine_node_conf "$2"', conf, node_conf, env=env,
         lib=LIB)
    known = {opt.dest for opt in cinder_driver.volume_opts +
             base.engine_opts} | {'volume_driver'}
    cinder_conf = parsed(conf)
    assert set(cinder_conf['be']) <= known
    assert cinder_conf['aoe_connector'] == {
        'interfaces': ['san0'], 'network_namespace': ['storage'],
        'mode': ['fuse']}
    assert set(cinder_conf['aoe_connector']) <= {
        opt.dest for opt in aoe.aoe_connector_opts}
    node = parsed(node_conf)
    assert node['aoe'] == {'interface': ['san0'],
                           'network_namespace': ['storage'],
                           'shelf': ['12']}
    assert set(node['aoe']) <= {opt.dest for opt in serve.aoe_opts}


def test_the_nodes_aoe_section_follows_the_variables(tmp_path):
    node_conf = tmp_path / 'node.conf'
    state = str(tmp_path / 'state')
    bash('write_storage_engine_node_conf "$1"', node_conf, lib=LIB,
         env=dict(TOKEN, STORAGE_ENGINE_STATE_PATH=state))
    assert 'aoe' not in parsed(node_conf)
    bash('write_storage_engine_node_conf "$1"', node_conf, lib=LIB,
         env=dict(TOKEN, STORAGE_ENGINE_STATE_PATH=state,
                  STORAGE_ENGINE_AOE_INTERFACE='san0',
                  STORAGE_ENGINE_AOE_SHELF='3'))
    assert parsed(node_conf)['aoe'] == {'interface': ['san0'],
                                        'shelf': ['3']}
    # The shelf unset again: allocated, and the stale value goes.
    bash('write_storage_engine_node_conf "$1"', node_conf, lib=LIB,
         env=dict(TOKEN, STORAGE_ENGINE_STATE_PATH=state,
                  STORAGE_ENGINE_AOE_INTERFACE='san0'))
    assert parsed(node_conf)['aoe'] == {'interface': ['san0']}


# -- the node's privilege under devstack (plugin.sh) -------------------------

DROP_IN = 'devstack@storage-engine.service.d/storage-engine-aoe.conf'

# stack.sh up to the node's configuration in the post-config phase.
CONFIGURE_NODE = r'''
plugin_override_defaults
source_lib_cinder
load_plugin_settings
run_phase stack pre-install
configure_cinder
configure_storage_engine
'''


@pytest.mark.parametrize('env, capabilities', [
    ({'STORAGE_ENGINE_AOE_INTERFACE': 'san0'}, 'CAP_NET_RAW'),
    # Joining the namespace that holds the interface (setns) takes
    # CAP_SYS_ADMIN.
    ({'STORAGE_ENGINE_AOE_INTERFACE': 'san0',
      'STORAGE_ENGINE_AOE_NETWORK_NAMESPACE': 'storage'},
     'CAP_NET_RAW CAP_SYS_ADMIN'),
], ids=['interface', 'interface in a namespace'])
def test_an_aoe_node_gets_the_capabilities_it_needs(tmp_path, env,
                                                    capabilities):
    devstack = Devstack(tmp_path, **env)
    devstack.ok(CONFIGURE_NODE)
    assert parsed(devstack.units / DROP_IN) == {'Service': {
        'AmbientCapabilities': [capabilities],
        'CapabilityBoundingSet': [capabilities]}}
    # Configured without AoE again: no capability left behind.
    devstack.ok(CONFIGURE_NODE, STORAGE_ENGINE_AOE_INTERFACE='')
    assert not (devstack.units / DROP_IN).exists()


def test_a_node_without_aoe_gets_no_capability(tmp_path):
    devstack = Devstack(tmp_path)
    devstack.ok(CONFIGURE_NODE)
    assert not (devstack.units / DROP_IN).parent.exists()


def test_the_node_starts_with_its_capabilities(tmp_path):
    # No AoE target in the root network namespace here: the node is the
    # stand-in of fake_services.py, which serves the API only.
    fake_node = tmp_path / 'storage-engine'
    fake_node.write_text('#!/bin/sh\nexec "%s" "%s" storage-engine "$@"\n'
                         % (sys.executable, FAKE_SERVICES))
    fake_node.chmod(0o755)
    devstack = Devstack(tmp_path, STORAGE_ENGINE_BIN=str(fake_node),
                        STORAGE_ENGINE_AOE_INTERFACE='san0',
                        STORAGE_ENGINE_API_PORT=str(free_port()))
    try:
        devstack.ok(CONFIGURE_NODE + 'start_storage_engine\n')
        # The drop-in was there when run_process reloaded systemd.
        service = devstack.started()['loaded']['Service']
        assert service['AmbientCapabilities'] == ['CAP_NET_RAW']
        assert service['CapabilityBoundingSet'] == ['CAP_NET_RAW']
        assert service['User'] == [devstack.ok('id -un').strip()]
    finally:
        devstack.stop_everything()


def test_user_units_cannot_serve_aoe(tmp_path):
    # A user's systemd cannot give a service a capability: the node would
    # fail to open its AoE socket. The stack stops before, saying why.
    devstack = Devstack(tmp_path, USER_UNITS='True',
                        STORAGE_ENGINE_AOE_INTERFACE='san0')
    result = devstack.run(CONFIGURE_NODE)
    assert result.returncode != 0
    assert ('[ERROR] storage-engine: serving AoE '
            '(STORAGE_ENGINE_AOE_INTERFACE) takes CAP_NET_RAW, which a user '
            'unit (USER_UNITS=True) cannot be given') in result.stderr
    assert not (devstack.units / DROP_IN).exists()
