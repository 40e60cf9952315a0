"""A storage node brought up and down by devstack/lib/storage-engine, the
way the all-in-one bring-up does it: the node's configuration written, the
service started in the background with a PID file and waited for, a second
start a no-op, and a stop that ends exactly that process. (The devstack
plugin writes the same configuration but runs the node as a devstack
service: tests/functional/devstack/test_devstack_plugin.py.)
"""

import os
import subprocess

import requests

from tests.fixtures.etcd import free_port
from tests.fixtures.node import free_port_range
from tests.fixtures import processes

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
LIB = os.path.join(TOP, 'devstack', 'lib', 'storage-engine')


def bash(script, env):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith('STORAGE_ENGINE_')}
    clean.update(env)
    return subprocess.run(['bash', '-c', 'set -eu; source "$0"; ' + script,
                           LIB], env=clean, capture_output=True, text=True,
                          timeout=120)


def _alive(pid: int) -> bool:
    return processes.alive(pid)


def test_node_starts_answers_and_stops_by_its_pid_file(tmp_path):
    port = free_port()
    nbd_ports = free_port_range(2)
    env = {'STORAGE_ENGINE_STATE_PATH': str(tmp_path / 'state'),
           'STORAGE_ENGINE_CONF': str(tmp_path / 'node.conf'),
           'STORAGE_ENGINE_API_PORT': str(port),
           'STORAGE_ENGINE_NBD_PORT_RANGE': '%d:%d' % (nbd_ports[0],
                                                       nbd_ports[-1]),
           'STORAGE_ENGINE_POOL_SIZE': '1G'}
    pid_file = tmp_path / 'state' / 'storage-engine.pid'
    started = bash('write_storage_engine_node_conf; '
                   'start_storage_engine_node; start_storage_engine_node',
                   env)
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.splitlines() == [
            'storage-engine: ready at http://127.0.0.1:%d (PID %d)'
            % (port, pid),
            'storage-engine: already running (PID %d)' % pid]
        token = (tmp_path / 'state' / 'api-token').read_text().strip()
        ready = requests.get('http://127.0.0.1:%d/v1/ready' % port,
                             headers={'X-Auth-Token': token}, timeout=10)
        assert ready.status_code == 200
        assert ready.json()['ready'] is True
        pools = requests.get('http://127.0.0.1:%d/v1/pools' % port,
                             headers={'X-Auth-Token': token}, timeout=10)
        assert [p['name'] for p in pools.json()['pools']] == ['default']

        stopped = bash('stop_storage_engine_node; stop_storage_engine_node',
                       env)
        assert stopped.returncode == 0, stopped.stderr
        assert not _alive(pid)
        assert not pid_file.exists()
        assert 'stopping' in (tmp_path / 'state' /
                              'storage-engine.log').read_text()
    finally:
        if pid and _alive(pid):
            os.kill(pid, 9)
