"""cinder-backup under the devstack plugin: it attaches our volumes through
os-brick in its own process, so it runs through
storage-engine-with-connectors; and it gets a backup driver that works here
when neither the operator nor devstack chose one that does (devstack's
default is swift, which needs swift enabled).
"""

import pytest

from tests.fixtures.etcd import free_port
from tests.fixtures.node import free_port_range
from tests.fixtures import processes
from tests.functional.devstack.devstack_stub import Devstack
from tests.functional.devstack.devstack_stub import STACK
from tests.functional.devstack.devstack_stub import UNSTACK
from tests.functional.devstack.test_devstack_lib import parsed

WITH_BACKUP = 'key,c-api,c-sch,c-vol,c-bak,tempest'
C_BAK = 'devstack@c-bak.service'
POSIX = 'cinder.backup.drivers.posix.PosixBackupDriver'
SWIFT = 'cinder.backup.drivers.swift.SwiftBackupDriver'

# stack.sh up to the start of the Cinder services, without them or the
# node: what the post-config phase leaves in cinder.conf for cinder-backup.
BACKUP_CONFIG = r'''
plugin_override_defaults
source_lib_cinder
load_plugin_settings
run_phase stack pre-install
configure_cinder
configure_storage_engine_cinder_backup
'''


@pytest.fixture
def devstack(tmp_path):
    made = []

    def make(**env):
        made.append(Devstack(tmp_path, **env))
        return made[-1]

    yield make
    for stand_in in made:
        stand_in.stop_everything()


def test_cinder_backup_runs_with_our_connectors(devstack):
    nbd_ports = free_port_range(2)
    ds = devstack(ENABLED_SERVICES=WITH_BACKUP,
                  STORAGE_ENGINE_API_PORT=str(free_port()),
                  STORAGE_ENGINE_NBD_PORT_RANGE='%d:%d' % (nbd_ports[0],
                                                           nbd_ports[-1]),
                  STORAGE_ENGINE_POOL_SIZE='1G')
    ds.ok(STACK)
    cinder_conf = str(ds.cinder_conf)

    unit = parsed(ds.units / C_BAK)['Service']
    assert unit['ExecStart'] == [
        '%s/storage-engine-with-connectors cinder-backup --config-file %s'
        % (ds.cinder_bin, cinder_conf)]
    # The environment lib/cinder gave it is kept.
    assert 'MALLOC_ARENA_MAX=1' in unit['Environment'][-1].split()
    pid = ds.main_pid(C_BAK)
    assert pid is not None and ds.started(C_BAK)['pid'] == pid
    journal = ds.wait_journal('cinder-backup started', C_BAK, count=2)
    assert journal.splitlines()[-2:] == [
        'storage-engine-with-connectors: running cinder-backup with the '
        'connectors registered',
        'cinder-backup started: --config-file %s' % cinder_conf]

    # No swift and no choice made: backups go to a directory.
    default = parsed(ds.cinder_conf)['DEFAULT']
    assert default['backup_driver'] == [POSIX]
    backup_dir = ds.data / 'cinder' / 'backup'
    assert default['backup_posix_path'] == [str(backup_dir)]
    assert backup_dir.is_dir()

    ds.ok(UNSTACK)
    assert not processes.alive(pid)
    assert not ds.enabled(C_BAK)


@pytest.mark.parametrize('env, driver', [
    # devstack's default, swift, works when swift is enabled.
    ({'ENABLED_SERVICES': WITH_BACKUP + ',s-proxy,s-object'}, SWIFT),
    # The operator's choice, whatever it is.
    ({'ENABLED_SERVICES': WITH_BACKUP, 'CINDER_BACKUP_DRIVER': 'swift'},
     SWIFT),
    ({'ENABLED_SERVICES': WITH_BACKUP}, POSIX),
], ids=['swift enabled', 'chosen', 'no choice, no swift'])
def test_the_backup_driver_is_devstacks_unless_it_cannot_work(
        devstack, env, driver):
    ds = devstack(**env)
    ds.ok(BACKUP_CONFIG)
    default = parsed(ds.cinder_conf)['DEFAULT']
    assert default['backup_driver'] == [driver]
    assert ('backup_posix_path' in default) == (driver == POSIX)


def test_nothing_for_backups_without_cinder_backup(devstack):
    ds = devstack()
    ds.ok(BACKUP_CONFIG)
    assert 'backup_driver' not in parsed(ds.cinder_conf)['DEFAULT']
