"""The devstack plugin (devstack/override-defaults, settings, plugin.sh) run
through stack.sh's, unstack.sh's and clean.sh's phases, in their order,
against a stand-in for the devstack functions it calls.

The stand-in (``STUB`` below) is devstack's side only: how devstack sources
the plugin's files (from functions, as ``run_phase`` does), lib/cinder's
default backend and its loop over CINDER_ENABLED_BACKENDS, service
switches, and recording stand-ins for package installation. Everything of
ours is real: the INI editing (lib/ini-compat, devstack's calling
conventions), the cinder.conf and node configuration written, and a real
storage node on free ports, started by the stack phases and stopped by
unstack.
"""

import os
import signal
import socket
import subprocess
import sys

import requests

from tests.fixtures.etcd import free_port
from tests.fixtures.node import free_port_range
from tests.fixtures import processes
from tests.unit.test_devstack_lib import parsed

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PLUGIN = os.path.join(TOP, 'devstack')
# The devstack settings the stub or the plugin read from the environment.
DEVSTACK_VARIABLES = ('HOST_IP', 'ENABLED_SERVICES', 'DISABLED_SERVICES',
                      'VOLUME_BACKING_FILE_SIZE', 'LOGDIR', 'DATA_DIR')

# devstack, as far as the plugin sees it. Paths come from STUB_ROOT; the
# devstack variables can be given in the environment, as localrc would.
STUB = r'''
DEST=$STUB_ROOT/opt/stack
DATA_DIR=$DEST/data
LOGDIR=$DEST/logs
STACK_USER=$(id -un)
HOST_IP=${HOST_IP:-127.0.0.2}
CINDER_CONF=$STUB_ROOT/etc/cinder/cinder.conf
ENABLED_SERVICES=${ENABLED_SERVICES:-key,g-api,c-api,c-sch,c-vol,n-api,n-cpu}
DISABLED_SERVICES=${DISABLED_SERVICES:-}
DEVSTACK_VENV=$STUB_VENV

# inc/ini-config: iniset, iniget, inidelete with devstack's conventions.
source "$STUB_PLUGIN/lib/ini-compat"

function _record {
    echo "$*" >> "$STUB_ROOT/calls"
}

# functions-common
function is_service_enabled {
    local service
    for service in "$@"; do
        [[ ,$ENABLED_SERVICES, == *,$service,* ]] && return 0
    done
    return 1
}
function enable_service {
    local service
    for service in "$@"; do
        [[ ,$DISABLED_SERVICES, == *,$service,* ]] && continue
        is_service_enabled "$service" || ENABLED_SERVICES+=,$service
    done
}
function define_plugin { _record define_plugin "$@"; }
function plugin_requires { _record plugin_requires "$@"; }
function echo_summary { echo "$*"; }
function warn { echo "[WARNING] $2"; }
function die {
    shift
    echo "[ERROR] $*" >&2
    exit 1
}
function is_ubuntu { return 0; }
function install_package { _record install_package "$@"; }
# Run as the stack user can: no password, no root needed here.
function sudo { "$@"; }

# inc/python: the checkout is already installed in this venv.
function get_python_exec_prefix { echo "$DEVSTACK_VENV/bin"; }
function setup_develop { _record setup_develop "$@"; }
function pip_install { _record pip_install "$@"; }

# lib/cinder's start_cinder, as far as our backends see it: their driver
# asks the node for its pool when cinder-volume starts
# (check_for_setup_error). Recorded: the answer's status.
function start_cinder {
    local be url status
    for be in $(iniget "$CINDER_CONF" DEFAULT enabled_backends | tr , ' '); do
        url=$(iniget "$CINDER_CONF" "$be" engine_api_url)
        [[ -n $url ]] || continue
        status=$(python3 - "$url" \
            "$(iniget "$CINDER_CONF" "$be" engine_api_token)" <<'EOF'
import sys
import urllib.error
import urllib.request

url, token = sys.argv[1:3]
request = urllib.request.Request(url + '/v1/pools/default',
                                 headers={'X-Auth-Token': token})
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError as exc:
    print(type(exc).__name__)
EOF
        )
        _record "start_cinder $be $status"
    done
}

# How stack.sh, unstack.sh and clean.sh source a plugin's files.
function plugin_override_defaults { source "$STUB_PLUGIN/override-defaults"; }
function load_plugin_settings { source "$STUB_PLUGIN/settings"; }
function run_phase { source "$STUB_PLUGIN/plugin.sh" "$@"; }

# lib/cinder: its default backend, and what configure_cinder does with
# CINDER_ENABLED_BACKENDS.
function source_lib_cinder {
    CINDER_ENABLED_BACKENDS=${CINDER_ENABLED_BACKENDS:-lvm:lvmdriver-1}
}
function configure_cinder {
    mkdir -p "$(dirname "$CINDER_CONF")"
    iniset "$CINDER_CONF" DEFAULT debug True
    if is_service_enabled c-vol && [[ -n "$CINDER_ENABLED_BACKENDS" ]]; then
        local enabled_backends="" default_name="" be be_type be_name
        for be in ${CINDER_ENABLED_BACKENDS//,/ }; do
            be_type=${be%%:*}
            be_name=${be##*:}
            if type "configure_cinder_backend_$be_type" >/dev/null 2>&1; then
                "configure_cinder_backend_$be_type" "$be_name"
            fi
            if [[ -z "$default_name" ]]; then
                default_name=$be_name
            fi
            enabled_backends+=$be_name,
        done
        iniset "$CINDER_CONF" DEFAULT enabled_backends "${enabled_backends%,*}"
        iniset "$CINDER_CONF" DEFAULT default_volume_type "$default_name"
    fi
}
'''

# stack.sh, from the plugin's point of view. POST_CONFIG_MERGE is what
# local.conf's [[post-config|...]] sections do between the post-config
# phase and the start of the services (Cinder's among them).
STACK = r'''
plugin_override_defaults
source_lib_cinder
load_plugin_settings
run_phase stack pre-install
configure_cinder
run_phase stack install
run_phase stack post-config
eval "${POST_CONFIG_MERGE:-}"
start_cinder
run_phase stack extra
echo "CINDER_ENABLED_BACKENDS=$CINDER_ENABLED_BACKENDS"
'''
UNSTACK = r'''
plugin_override_defaults
source_lib_cinder
load_plugin_settings
run_phase unstack
'''
CLEAN = r'''
load_plugin_settings
run_phase clean
'''


class Devstack:
    """devstack's scripts, each a new bash, on a tree under ``root``."""

    def __init__(self, root, **env):
        self.root = root
        self.stub = root / 'devstack-stub'
        self.stub.write_text(STUB)
        self.data = root / 'opt' / 'stack' / 'data'
        self.state = self.data / 'storage-engine'
        self.conf_dir = root / 'etc' / 'storage-engine'
        self.node_conf = self.conf_dir / 'storage-engine.conf'
        self.cinder_conf = root / 'etc' / 'cinder' / 'cinder.conf'
        self.pid_file = self.state / 'storage-engine.pid'
        self.log_file = root / 'opt' / 'stack' / 'logs' / 'storage-engine.log'
        # None of the caller's devstack settings.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(('STORAGE_ENGINE_', 'CINDER_'))
                    and k not in DEVSTACK_VARIABLES}
        self.env.update(STUB_ROOT=str(root), STUB_PLUGIN=PLUGIN,
                        STUB_VENV=os.path.dirname(
                            os.path.dirname(sys.executable)),
                        STORAGE_ENGINE_CONF_DIR=str(self.conf_dir))
        self.env.update(env)

    def run(self, script, **env) -> subprocess.CompletedProcess:
        return subprocess.run(
            ['bash', '-c', 'set -o errexit -o nounset; source "$0"; '
             + script, str(self.stub)],
            env=dict(self.env, **env), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=180)

    def ok(self, script, **env) -> str:
        result = self.run(script, **env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def calls(self) -> list:
        path = self.root / 'calls'
        return path.read_text().splitlines() if path.exists() else []

    def pid(self):
        if self.pid_file.exists():
            return int(self.pid_file.read_text())
        return None


def _alive(pid: int) -> bool:
    return processes.alive(pid)


def _kill(devstack, pids=()) -> None:
    """Stop the nodes a failed test left behind, by their PIDs (``pids``
    and the PID file's), if they are still storage nodes.
    """
    for pid in {*pids, devstack.pid()} - {None}:
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ')
        except OSError:
            continue
        if b'storage-engine serve' in cmdline and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _node_env():
    port = free_port()
    nbd_ports = free_port_range(2)
    return {'STORAGE_ENGINE_API_PORT': str(port),
            'STORAGE_ENGINE_NBD_PORT_RANGE': '%d:%d' % (nbd_ports[0],
                                                        nbd_ports[-1]),
            'STORAGE_ENGINE_POOL_SIZE': '1G'}


def _get(port, path, token):
    return requests.get('http://127.0.0.1:%d%s' % (port, path),
                        headers={'X-Auth-Token': token}, timeout=10)


def test_stack_configures_cinder_and_runs_the_node_until_unstack(tmp_path):
    env = _node_env()
    port = int(env['STORAGE_ENGINE_API_PORT'])
    devstack = Devstack(tmp_path, **env)
    pid = None
    try:
        out = devstack.ok(STACK)
        pid = devstack.pid()

        # Our backend is Cinder's (the only one: none was asked for).
        assert 'CINDER_ENABLED_BACKENDS=storage_engine_lvm:se-lvm' in \
            out.splitlines()
        # The install phase installed this checkout and the packages, and
        # the node was up when Cinder started.
        assert devstack.calls() == [
            'define_plugin storage-engine',
            'install_package nbd-client libnbd-bin fuse3 nbdkit aoetools',
            'setup_develop %s' % TOP,
            'start_cinder se-lvm 200']

        node = parsed(devstack.node_conf)
        token = node['api']['auth_token'][0]
        assert len(token) == 64
        assert node['api']['port'] == [str(port)]
        # Exports listen where hosts attach from: HOST_IP.
        assert node['nbd']['host'] == ['127.0.0.2']
        cinder = parsed(devstack.cinder_conf)
        assert cinder['DEFAULT']['enabled_backends'] == ['se-lvm']
        assert cinder['se-lvm'] == {
            'volume_driver': ['cinder_drivers.lvm.EngineLVMDriver'],
            'volume_backend_name': ['se-lvm'],
            'engine_api_url': ['http://127.0.0.1:%d' % port],
            'engine_api_token': [token],
            'engine_pool': ['default'],
            'engine_provisioning': ['thin'],
            'engine_export_protocol': ['nbd'],
            'max_over_subscription_ratio': ['20.0'],
            'reserved_percentage': ['0'],
        }

        # The node runs, answers with that token and only with it, and
        # the extra phase left it alone (nothing changed its
        # configuration).
        assert 'storage-engine: ready at http://127.0.0.1:%d (PID %d)' \
            % (port, pid) in out
        assert 'restarting' not in out
        assert _alive(pid)
        ready = _get(port, '/v1/ready', token)
        assert ready.status_code == 200 and ready.json()['ready'] is True
        assert _get(port, '/v1/ready', 'wrong').status_code == 401
        assert [p['name'] for p in _get(port, '/v1/pools', token).json()[
            'pools']] == ['default']
        assert 'stopping' not in devstack.log_file.read_text()
        # nova-compute is enabled: the operator is told what it cannot do.
        assert '[WARNING] storage-engine: nova-compute cannot attach' in out

        devstack.ok(UNSTACK)
        assert not _alive(pid)
        assert not devstack.pid_file.exists()
        assert 'stopping' in devstack.log_file.read_text()
        assert devstack.state.is_dir()

        devstack.ok(CLEAN)
        assert not devstack.state.exists()
        assert not devstack.conf_dir.exists()
        assert devstack.data.is_dir()
    finally:
        _kill(devstack, [pid])


def test_extra_restarts_the_node_that_local_conf_reconfigured(tmp_path):
    env = _node_env()
    port = int(env['STORAGE_ENGINE_API_PORT'])
    devstack = Devstack(tmp_path, **env)
    pids = []
    try:
        # local.conf: [[post-config|$STORAGE_ENGINE_CONF]]
        # [pool:default] reserved_percentage = 7
        out = devstack.ok(STACK, POST_CONFIG_MERGE=(
            'iniset "$STORAGE_ENGINE_CONF" pool:default '
            'reserved_percentage 7'))
        pids = [int(line.rsplit('(PID ', 1)[1].rstrip(')'))
                for line in out.splitlines()
                if line.startswith('storage-engine: ready at ')]
        assert len(pids) == 2
        assert 'storage-engine.conf changed; restarting the node' in out
        assert not _alive(pids[0])
        assert devstack.pid() == pids[1] and _alive(pids[1])

        token = parsed(devstack.node_conf)['api']['auth_token'][0]
        pools = _get(port, '/v1/pools', token).json()['pools']
        assert [p['reserved_percentage'] for p in pools] == [7]

        devstack.ok(UNSTACK)
        assert not _alive(pids[1])
        assert not devstack.pid_file.exists()
    finally:
        _kill(devstack, pids)


def test_a_node_that_cannot_start_fails_the_stack(tmp_path):
    env = _node_env()
    devstack = Devstack(tmp_path, **env)
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', int(env['STORAGE_ENGINE_API_PORT'])))
        busy.listen()
        try:
            result = devstack.run(STACK)
        finally:
            _kill(devstack)
    assert result.returncode != 0
    assert ('[ERROR] storage-engine: the storage node did not start; see %s'
            % devstack.log_file) in result.stderr
    # Nothing half-started is left, and the extra phase never ran.
    assert not devstack.pid_file.exists()
    assert 'CINDER_ENABLED_BACKENDS=' not in result.stdout


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


def test_nothing_happens_when_the_service_is_disabled(tmp_path):
    devstack = Devstack(tmp_path, DISABLED_SERVICES='storage-engine')
    out = devstack.ok(STACK)
    devstack.ok(UNSTACK)
    devstack.ok(CLEAN)
    assert 'CINDER_ENABLED_BACKENDS=lvm:lvmdriver-1' in out.splitlines()
    assert devstack.calls() == ['define_plugin storage-engine'] * 3
    assert not devstack.pid_file.exists()
    assert not devstack.state.exists()
    assert not devstack.node_conf.exists()
    assert 'se-lvm' not in parsed(devstack.cinder_conf)
