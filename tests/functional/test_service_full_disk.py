"""A storage node whose disk fills up, or fails, end to end.

A real ``storage-engine serve`` (tests/fixtures/node.py) with its pool's
physical volume on a filesystem of the test's own:

- a 64 MiB tmpfs under a 1 GiB sparse PV, written through NBD until it is
  full, then grown with ``mount -o remount,size=...``;
- a PV served by nbdkit's error filter through nbdfuse (a regular file in
  a FUSE mount), which answers every request with EIO while a trigger
  file exists: a real I/O error that stops the pool, until it is reopened
  through the API or the ``storage-engine`` command.

What is checked is what a user sees: NBD error codes, data read back, the
node's readiness, pool views and log, the command's exit code and the
Cinder driver's pool stats.
"""

import json
import os
import subprocess
import sys
import uuid

import pytest

from storage_engine.nbd import client as nbd_client
from storage_engine.nbd import constants as nbd_const
from storage_engine.volstore import VolumeGroup
from tests.fixtures.tmpfs import Tmpfs
from tests.fixtures.waiting import wait_for

MiB = 1 << 20
COMMAND = os.path.join(os.path.dirname(sys.executable), 'storage-engine')
TIMEOUT = 60


@pytest.fixture
def small_fs(tmp_path):
    """A 64 MiB tmpfs (set up before the node, so unmounted after it)."""
    fs = Tmpfs(tmp_path / 'fs', 64 * MiB)
    yield fs
    fs.unmount()


class FaultyDisk:
    """A 256 MiB disk image holding group ``default``, served as the file
    ``path`` by nbdfuse over nbdkit's error filter: every request fails
    with EIO while the trigger file exists.
    """

    def __init__(self, top):
        self.image = os.fspath(top / 'disk.img')
        self.trigger = os.fspath(top / 'fail-now')
        self.mount = os.fspath(top / 'fuse')
        self.path = os.path.join(self.mount, 'disk')
        pidfile = os.fspath(top / 'nbdfuse.pid')
        os.makedirs(self.mount)
        with open(self.image, 'wb') as f:
            f.truncate(256 * MiB)
        VolumeGroup.create([self.image], name='default').close()
        self.log = open(top / 'nbdfuse.log', 'ab')
        self.process = subprocess.Popen(
            ['nbdfuse', '-P', pidfile, self.path, '--command', 'nbdkit',
             '-s', '--filter=error', 'file', self.image, 'error-rate=100%',
             'error-file=%s' % self.trigger],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            start_new_session=True)
        wait_for('nbdfuse serving %s' % self.path,
                 lambda: os.path.exists(pidfile) and
                 os.path.getsize(pidfile) > 0 or self.process.poll(),
                 timeout=TIMEOUT, poll=0.05)
        assert self.process.poll() is None, 'nbdfuse exited'

    def fail(self) -> None:
        open(self.trigger, 'w').close()

    def heal(self) -> None:
        os.unlink(self.trigger)

    def stop(self) -> None:
        subprocess.run(['fusermount3', '-u', self.mount], check=False,
                       capture_output=True, timeout=TIMEOUT)
        try:
            self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()             # the process we started
            self.process.wait()
            subprocess.run(['fusermount3', '-u', '-z', self.mount],
                           check=False, capture_output=True)
        self.log.close()


@pytest.fixture
def faulty_disk(tmp_path):
    disk = FaultyDisk(tmp_path)
    yield disk
    disk.stop()


# -- helpers ------------------------------------------------------------------

def _ok(resp, status=200):
    assert resp.status_code == status, (resp.status_code, resp.text)
    return resp.json()


def _volume(node, name, size):
    return _ok(node.post('/volumes', json={'name': name, 'size': size}),
               201)


def _attach(node, volume_id):
    export = _ok(node.post('/exports', json={
        'volume_id': volume_id, 'hosts': ['127.0.0.1']}), 201)
    return export['connection']['export_name']


def _connect(node, export_name):
    port = _ok(node.get('/node'))['nbd']['port']
    return nbd_client.NBDClient.connect(export_name, port=port)


def _logged(node, level, *words):
    """Lines of the node's log at ``level`` naming every one of ``words``."""
    with open(node.log_path, errors='replace') as log:
        return [line for line in log
                if level in line and all(w in line for w in words)]


def _health(node, pool='default'):
    return _ok(node.get('/pools/%s' % pool))['health']


def _wait_state(node, state, pool='default'):
    return wait_for('pool %s %s' % (pool, state),
                    lambda: _health(node, pool)['state'] == state and
                    _health(node, pool), timeout=TIMEOUT,
                    logs=node.log_tail)


def _chunk(i):
    return (b'%08d' % i) * (MiB // 8)


def _se(node, *argv):
    env = dict(os.environ, STORAGE_ENGINE_URL=node.url,
               STORAGE_ENGINE_TOKEN=node.token)
    return subprocess.run([COMMAND, *argv], env=env, capture_output=True,
                          text=True, timeout=120)


# -- a full filesystem --------------------------------------------------------

def test_a_full_filesystem_gives_enospc_and_the_pool_comes_back_by_itself(
        small_fs, node_factory):
    pv = small_fs / 'default.pv0'
    node = node_factory(pv_path=pv, pool_size='1G')
    # Flagged at start: the PV may grow far beyond what its tmpfs holds.
    backing = _ok(node.get('/pools/default'))['backing']
    assert backing['shortfall'] > 800 * MiB
    assert [fs['mount'] for fs in backing['filesystems']] == [small_fs.path]
    assert _logged(node, 'WARNING', 'pool default', small_fs.path,
                   'ENOSPC')
    assert _health(node) == {'state': 'ok', 'reason': None, 'since': None}

    vol = _volume(node, 'v', 512 * MiB)
    spare = _volume(node, 'spare', MiB)
    export = _attach(node, vol['id'])
    acked = {}
    with _connect(node, export) as c:
        for i in range(200):
            try:
                c.pwrite(_chunk(i), i * MiB)
            except nbd_client.NBDError as exc:
                refused = exc
                break
            acked[i] = _chunk(i)
            if i % 8 == 7:
                try:
                    c.flush()
                except nbd_client.NBDError as exc:
                    assert exc.error == nbd_const.NBD_ENOSPC, exc
        else:
            pytest.fail('a 64 MiB filesystem took 200 MiB')
        # ENOSPC, not EIO: a guest with werror=enospc pauses on it.
        assert refused.error == nbd_const.NBD_ENOSPC, refused
        assert len(acked) > 30
        # Everything acknowledged reads back.
        for i, chunk in acked.items():
            assert c.pread(MiB, i * MiB) == chunk

        health = _wait_state(node, 'no_space')
        assert small_fs.path in health['reason'] and health['since']
        ready = _ok(node.get('/ready'))
        assert ready['ready'] is True
        assert ready['health']['state'] == 'degraded'
        assert [(p['name'], p['state']) for p in
                ready['health']['pools']] == [('default', 'no_space')]
        assert _ok(node.get('/node'))['health'] == ready['health']
        assert _logged(node, 'ERROR', 'pool default', 'out of space',
                       small_fs.path)
        # A change that could not be recorded is refused, and not made.
        resp = node.post('/volumes', json={'name': 'w', 'size': MiB})
        assert resp.status_code == 507, resp.text
        assert resp.json()['error']['code'] == 'device_full'
        resp = node.request('DELETE', '/volumes/%s' % spare['id'])
        assert resp.status_code == 507, resp.text
        assert [(v['name'], v['status']) for v in
                _ok(node.get('/volumes'))['volumes']] == \
            [('spare', 'available'), ('v', 'available')]

        # More room: the pool goes back into service by itself.
        small_fs.grow(256 * MiB)
        _wait_state(node, 'ok')
        assert _ok(node.get('/ready'))['health'] == \
            {'state': 'ok', 'pools': []}
        assert _logged(node, 'WARNING', 'pool default', 'back in service')
        failed = len(acked)
        for i in range(failed, failed + 4):
            c.pwrite(_chunk(i), i * MiB)
            acked[i] = _chunk(i)
        c.flush()
        _volume(node, 'w', MiB)
        assert node.request('DELETE', '/volumes/%s' % spare['id']) \
            .status_code == 204

    node.stop()
    check = subprocess.run([COMMAND, 'vg', 'check', pv], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    node.start()
    with _connect(node, export) as c:
        for i, chunk in acked.items():
            assert c.pread(MiB, i * MiB) == chunk, i


def test_the_cinder_driver_reports_a_pool_out_of_space_as_down(
        small_fs, node_factory):
    from cinder.volume import configuration
    from cinder.volume import driver as cinder_driver
    from oslo_config import cfg

    from cinder_drivers import lvm

    node = node_factory(pv_path=small_fs / 'default.pv0', pool_size='1G')
    group = 'engine-%s' % uuid.uuid4().hex[:8]
    if cfg.CONF._args is None:
        cfg.CONF([], project='cinder', default_config_files=[])
    config = configuration.Configuration(cinder_driver.volume_opts,
                                         config_group=group)
    config.append_config_values(lvm.base.engine_opts)
    overrides = {'engine_api_url': node.url, 'engine_api_token': node.token,
                 'volume_backend_name': group, 'engine_api_timeout': 10}
    for key, value in overrides.items():
        cfg.CONF.set_override(key, value, group=group)
    try:
        drv = lvm.EngineLVMDriver(configuration=config,
                                  host='test@%s' % group)

        def stats():
            (pool,) = drv.get_volume_stats(refresh=True)['pools']
            return pool

        up = stats()
        assert up['backend_state'] == 'up'
        # What the pool may still grow by is not free to Cinder.
        assert up['free_capacity_gb'] < 0.1
        vol = _volume(node, 'v', 64 * MiB)
        with _connect(node, _attach(node, vol['id'])) as c:
            small_fs.fill()
            with pytest.raises(nbd_client.NBDError) as info:
                c.pwrite(_chunk(0), 0)
            assert info.value.error == nbd_const.NBD_ENOSPC
        _wait_state(node, 'no_space')
        assert stats()['backend_state'] == 'down'
        small_fs.give_back()
        _wait_state(node, 'ok')
        assert stats()['backend_state'] == 'up'
    finally:
        for key in overrides:
            cfg.CONF.clear_override(key, group=group)


# -- a failed disk ------------------------------------------------------------

def _stop_the_pool(node, disk):
    """Write through NBD, then fail the disk under a flush: the pool
    stops. Returns the export name and the data flushed before.
    """
    vol = _volume(node, 'v', 64 * MiB)
    export = _attach(node, vol['id'])
    with _connect(node, export) as c:
        c.pwrite(_chunk(1), 0)
        c.flush()
        c.pwrite(_chunk(2), MiB)            # not flushed when it fails
        disk.fail()
        with pytest.raises(nbd_client.NBDError) as info:
            c.flush()
        assert info.value.error == nbd_const.NBD_EIO
    health = _wait_state(node, 'failed')
    assert 'Input/output error' in health['reason'] and health['since']
    assert _logged(node, 'ERROR', 'pool default', 'stopped after an I/O '
                   'error', 'storage-engine pool reopen default')
    ready = _ok(node.get('/ready'))
    assert [(p['name'], p['state']) for p in
            ready['health']['pools']] == [('default', 'failed')]
    # Stopped: no I/O, no change, until it is reopened; what it held
    # still shows.
    assert [v['name'] for v in _ok(node.get('/volumes'))['volumes']] == \
        ['v']
    resp = node.post('/volumes', json={'name': 'w', 'size': MiB})
    assert resp.status_code == 500
    assert 'reopen' in resp.json()['error']['message']
    return export, {0: _chunk(1)}


def test_a_pool_stopped_by_an_io_error_is_reopened_through_the_api(
        faulty_disk, node_factory):
    node = node_factory(pv_path=faulty_disk.path)
    export, flushed = _stop_the_pool(node, faulty_disk)
    with _connect(node, export) as c:
        with pytest.raises(nbd_client.NBDError) as info:
            c.pread(MiB, 0)
        assert info.value.error == nbd_const.NBD_EIO

    faulty_disk.heal()
    pool = _ok(node.post('/pools/default/reopen'))
    assert pool['health'] == {'state': 'ok', 'reason': None, 'since': None}
    assert _ok(node.get('/ready'))['health'] == {'state': 'ok', 'pools': []}
    assert _logged(node, 'WARNING', 'pool default reopened')
    # The same export, served from the group opened again.
    with _connect(node, export) as c:
        for i, chunk in flushed.items():
            assert c.pread(MiB, i * MiB) == chunk
        c.pwrite(_chunk(3), 2 * MiB)
        c.flush()
        flushed[2] = _chunk(3)
    _volume(node, 'w', MiB)
    # Reopening a pool in service changes nothing.
    assert _ok(node.post('/pools/default/reopen'))['health']['state'] == \
        'ok'
    node.restart()
    with _connect(node, export) as c:
        for i, chunk in flushed.items():
            assert c.pread(MiB, i * MiB) == chunk


def test_storage_engine_pool_reopen(faulty_disk, node_factory):
    node = node_factory(pv_path=faulty_disk.path)
    export, flushed = _stop_the_pool(node, faulty_disk)
    # The disk still fails: the pool cannot be opened, and stays stopped.
    result = _se(node, 'pool', 'reopen', 'default')
    assert result.returncode == 8, result
    assert 'Input/output error' in result.stderr
    assert _health(node)['state'] == 'failed'
    shown = _se(node, 'pool', 'show', 'default')
    assert 'failed since' in shown.stdout, shown

    faulty_disk.heal()
    result = _se(node, '--format', 'json', 'pool', 'reopen', 'default')
    assert result.returncode == 0, result
    assert json.loads(result.stdout)['health']['state'] == 'ok'
    shown = _se(node, 'pool', 'show', 'default')
    assert shown.returncode == 0 and 'health' in shown.stdout
    with _connect(node, export) as c:
        for i, chunk in flushed.items():
            assert c.pread(MiB, i * MiB) == chunk
