"""The devstack plugin's test-config phase: tempest.conf describes the
backend tempest's volume tests land on (Cinder's default volume type) when
that is ours: its storage protocol and vendor as the driver classes report
them (tempest's volume-type tests ask the scheduler for them), the
features our drivers have, and none that need Nova to attach our volumes.

The phase runs after lib/tempest's configure_tempest, as in devstack
(tests/functional/devstack/devstack_stub.py), which turns manage_snapshot and
friends on for any backend type containing "lvm", ours included.
"""

import pytest

from cinder_drivers import aoe
from cinder_drivers import lvm
from tests.functional.devstack.devstack_stub import Devstack
from tests.functional.devstack.test_devstack_lib import parsed

# stack.sh up to the test-config phase, without starting anything (of the
# post-config phase, only what it writes in cinder.conf): the phase needs
# cinder.conf and the installed drivers only.
TEST_CONFIG = r'''
plugin_override_defaults
source_lib_cinder
if is_service_enabled tempest; then source_lib_tempest; fi
load_plugin_settings
run_phase stack pre-install
configure_cinder
configure_storage_engine_cinder_backup
run_phase stack test-config
'''


def _tempest(tmp_path, **env):
    devstack = Devstack(tmp_path, **env)
    devstack.ok(TEST_CONFIG)
    return parsed(devstack.tempest_conf)


def test_tempest_targets_our_default_backend(tmp_path):
    # ENABLE_VOLUME_MULTIATTACH: devstack turns Nova's multiattach tests on.
    conf = _tempest(tmp_path, ENABLE_VOLUME_MULTIATTACH='True')
    assert conf['volume']['storage_protocol'] == [
        lvm.EngineLVMDriver.storage_protocol]
    assert conf['volume']['storage_protocol'] == ['NBD']
    assert conf['volume']['vendor_name'] == [lvm.EngineLVMDriver.vendor_name]
    # tempest manages back what it unmanaged by the name the driver gave
    # it: Cinder's volume and snapshot names.
    assert conf['volume']['manage_volume_ref'] == ['source-name,volume-%s']
    assert conf['volume']['manage_snapshot_ref'] == [
        'source-name,snapshot-%s']
    assert conf['volume-feature-enabled'] == {
        'snapshot': ['True'],
        'clone': ['True'],
        'extend_volume_with_snapshot': ['True'],
        'manage_volume': ['True'],
        'manage_snapshot': ['True'],
        'volume_revert': ['True'],
        # Nova cannot attach our volumes yet.
        'extend_attached_volume': ['False'],
        # No cinder-backup.
        'backup': ['False'],
    }
    assert conf['compute-feature-enabled']['volume_multiattach'] == ['False']


def test_the_default_backends_family_gives_the_protocol(tmp_path):
    conf = _tempest(tmp_path, STORAGE_ENGINE_CINDER_BACKENDS=(
        'storage_engine_aoe:se-aoe,storage_engine_lvm:se-lvm'))
    assert conf['volume']['storage_protocol'] == [
        aoe.EngineAoEDriver.storage_protocol]
    assert conf['volume']['storage_protocol'] == ['AoE']
    assert conf['volume']['vendor_name'] == ['storage-engine']
    assert conf['volume']['backend_names'] == ['se-aoe,se-lvm']


def test_cinder_name_templates_give_the_manage_references(tmp_path):
    devstack = Devstack(tmp_path)
    devstack.ok(TEST_CONFIG.replace(
        'configure_cinder\n',
        'configure_cinder\n'
        'iniset "$CINDER_CONF" DEFAULT volume_name_template "vol_%s"\n'
        'iniset "$CINDER_CONF" DEFAULT snapshot_name_template "snap_%s"\n'))
    conf = parsed(devstack.tempest_conf)
    assert conf['volume']['manage_volume_ref'] == ['source-name,vol_%s']
    assert conf['volume']['manage_snapshot_ref'] == ['source-name,snap_%s']


def test_backup_tests_run_with_cinder_backup(tmp_path):
    conf = _tempest(tmp_path, ENABLED_SERVICES=(
        'key,c-api,c-sch,c-vol,c-bak,tempest'))
    assert conf['volume-feature-enabled']['backup'] == ['True']
    # No swift: the plugin gave cinder-backup the POSIX driver.
    assert conf['volume']['backup_driver'] == ['posix']


def test_another_default_backend_keeps_devstacks_settings(tmp_path):
    conf = _tempest(tmp_path, CINDER_ENABLED_BACKENDS='lvm:lvmdriver-1')
    assert 'storage_protocol' not in conf.get('volume', {})
    assert 'manage_snapshot_ref' not in conf.get('volume', {})
    # devstack's, for its LVM backend (the default type).
    assert conf['volume-feature-enabled']['extend_attached_volume'] == [
        'True']


@pytest.mark.parametrize('services', ['key,c-api,c-sch,c-vol'])
def test_nothing_is_written_without_tempest(tmp_path, services):
    devstack = Devstack(tmp_path, ENABLED_SERVICES=services)
    devstack.ok(TEST_CONFIG)
    assert not devstack.tempest_conf.exists()
