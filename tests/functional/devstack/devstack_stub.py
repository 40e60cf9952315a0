"""A stand-in for devstack, as far as the devstack plugin (devstack/) sees
it, to run the plugin's phases in stack.sh's, unstack.sh's and clean.sh's
order (test_devstack_*.py).

``STUB`` is devstack's side only, each part modelled on devstack's own:

- stack.sh's error traps: ``exit_trap`` kills the shell's background jobs
  when LOGFILE is set and VERBOSE is True (as in every devstack CI job),
  ``err_trap`` ends the run at the first failing command;
- functions-common's services: ``run_process`` writes a unit
  ``devstack@NAME.service`` (``write_user_unit_file``: User, ExecStart,
  Environment, KillMode=process...), reloads systemd and enables and
  starts the unit; ``stop_process`` stops and disables it. systemd is
  tests/functional/devstack/fake_systemctl.py, behind ``$SYSTEMCTL``;
- ``is_service_enabled`` with its catch-alls (cinder: c-*, swift: s-*);
- lib/cinder: its default backend, configure_cinder's loop over
  CINDER_ENABLED_BACKENDS, the backup driver (CINDER_BACKUP_DRIVER, swift
  unless set), and start_cinder / stop_cinder through run_process. The
  Cinder programs are fake_services.py, which says on its journal
  what it was run as and, as cinder-volume, whether each of our backends'
  node answers it;
- lib/tempest's configure_tempest, its volume part (the ``*lvm*`` test on
  CINDER_ENABLED_BACKENDS included), run first in the test-config phase as
  devstack's extras.d/80-tempest.sh is;
- how the plugin's files are sourced (``run_phase`` from a function).

Everything of ours is real: the INI editing (lib/ini-compat, with
devstack's calling conventions), the configuration written, and the
storage node, started through run_process and stopped by stop_process.
"""

import json
import os
import signal
import subprocess
import sys
import time

from tests.fixtures import processes

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
PLUGIN = os.path.join(TOP, 'devstack')
HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_SYSTEMCTL = os.path.join(HERE, 'fake_systemctl.py')
FAKE_SERVICES = os.path.join(HERE, 'fake_services.py')
# The devstack settings the stub or the plugin read from the environment.
DEVSTACK_VARIABLES = ('HOST_IP', 'HOST_IPV6', 'SERVICE_HOST',
                      'SERVICE_IP_VERSION', 'ENABLED_SERVICES',
                      'DISABLED_SERVICES', 'VOLUME_BACKING_FILE_SIZE',
                      'LOGDIR', 'LOGFILE', 'VERBOSE', 'DATA_DIR',
                      'USER_UNITS', 'ENABLE_VOLUME_MULTIATTACH',
                      'VIRT_DRIVER')
NODE_UNIT = 'devstack@storage-engine.service'

# devstack, as far as the plugin sees it. Paths come from STUB_ROOT; the
# devstack settings can be given in the environment, as localrc would.
STUB = r'''
DEST=$STUB_ROOT/opt/stack
DATA_DIR=$DEST/data
LOGDIR=$DEST/logs
LOGFILE=${LOGFILE-$LOGDIR/stack.sh.log}
VERBOSE=${VERBOSE:-True}
STACK_USER=$(id -un)
HOST_IP=${HOST_IP:-127.0.0.2}
SERVICE_IP_VERSION=${SERVICE_IP_VERSION:-4}
SERVICE_HOST=${SERVICE_HOST:-$HOST_IP}
DEFAULT_SERVICES=key,g-api,c-api,c-sch,c-vol,n-api,n-cpu,tempest
ENABLED_SERVICES=${ENABLED_SERVICES:-$DEFAULT_SERVICES}
DISABLED_SERVICES=${DISABLED_SERVICES:-}
VIRT_DRIVER=${VIRT_DRIVER:-libvirt}
ENABLE_VOLUME_MULTIATTACH=${ENABLE_VOLUME_MULTIATTACH:-False}
DEVSTACK_VENV=$STUB_VENV
PYTHON=$STUB_VENV/bin/python3
# stackrc: system units, driven through sudo systemctl.
USER_UNITS=${USER_UNITS:-False}
SYSTEMD_DIR=$STUB_ROOT/etc/systemd/system
SYSTEMCTL="sudo systemctl"
KILL_PATH=$(command -v kill)
mkdir -p "$STUB_ROOT/bin" "$LOGDIR"
printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$PYTHON" "$STUB_FAKE_SYSTEMCTL" \
    > "$STUB_ROOT/bin/systemctl"
chmod +x "$STUB_ROOT/bin/systemctl"
PATH=$STUB_ROOT/bin:$PATH

# inc/ini-config: iniset, iniget, inidelete with devstack's conventions.
source "$STUB_PLUGIN/lib/ini-compat"

function _record {
    echo "$*" >> "$STUB_ROOT/calls"
}

# stack.sh's traps: the exit trap kills the background jobs of stack.sh
# when stack.sh logs through a process substitution (LOGFILE and VERBOSE,
# as in CI); the error trap ends the run.
function exit_trap {
    local r=$?
    local bg
    bg=$(jobs -p)
    if [[ -n $bg && -n "$LOGFILE" && "$VERBOSE" == "True" ]]; then
        echo "exit_trap: cleaning up child processes"
        # shellcheck disable=SC2086
        kill 2>&1 $bg
    fi
    exit $r
}
function err_trap {
    local r=$?
    set +o xtrace
    echo "${0##*/} failed"
    exit $r
}

# functions-common
function is_service_enabled {
    local service enabled=1
    for service in "$@"; do
        [[ ,$ENABLED_SERVICES, == *,$service,* ]] && enabled=0
        if type "is_${service}_enabled" >/dev/null 2>&1; then
            "is_${service}_enabled" && enabled=0
        fi
        [[ $service == swift && ,$ENABLED_SERVICES == *,s-* ]] && enabled=0
    done
    return $enabled
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
function trueorfalse {
    local default=$1
    local value=${!2:-$default}
    case ${value,,} in
        1|yes|true|on) echo True ;;
        0|no|false|off) echo False ;;
        *) echo "$default" ;;
    esac
}
# Run as the stack user can: no password, no root needed here.
function sudo { "$@"; }

# functions-common: services under systemd.
function write_user_unit_file {
    local service=$1 command=$2 group=$3 user=$4 env_vars=$5
    local unitfile=$SYSTEMD_DIR/$service
    mkdir -p "$SYSTEMD_DIR"
    iniset -sudo "$unitfile" Unit Description "Devstack $service"
    iniset -sudo "$unitfile" Service Environment "\"PATH=$PATH\""
    iniset -sudo "$unitfile" Service User "$user"
    iniset -sudo "$unitfile" Service ExecStart "$command"
    iniset -sudo "$unitfile" Service KillMode process
    iniset -sudo "$unitfile" Service TimeoutStopSec 300
    iniset -sudo "$unitfile" Service ExecReload "$KILL_PATH -HUP \$MAINPID"
    if [[ -n $env_vars ]]; then
        iniset -sudo "$unitfile" Service Environment "$env_vars"
    fi
    if [[ -n $group ]]; then
        iniset -sudo "$unitfile" Service Group "$group"
    fi
    iniset -sudo "$unitfile" Install WantedBy multi-user.target
    $SYSTEMCTL daemon-reload
}
function _run_under_systemd {
    local service=$1 command=$2 group=$3 user=${4:-$STACK_USER} env_vars=$5
    if [[ $command =~ sudo ]]; then
        die $LINENO "run_process: $command: no sudo under systemd"
    fi
    if [[ ! $command =~ ^/ ]]; then
        die $LINENO "run_process: $command: not an absolute path"
    fi
    local unit=devstack@$service.service
    write_user_unit_file "$unit" "$command" "$group" "$user" "$env_vars"
    $SYSTEMCTL enable "$unit"
    $SYSTEMCTL start "$unit"
}
function run_process {
    local service=$1 command=$2 group=${3:-} user=${4:-} env_vars=${5:-}
    if is_service_enabled "$service"; then
        _run_under_systemd "$service" "$command" "$group" "$user" "$env_vars"
    fi
}
function stop_process {
    local service=$1
    if is_service_enabled "$service"; then
        if $SYSTEMCTL is-enabled "devstack@$service.service"; then
            $SYSTEMCTL stop "devstack@$service.service"
            $SYSTEMCTL disable "devstack@$service.service"
        fi
    fi
}

# inc/python: the checkout is already installed in this venv.
function get_python_exec_prefix { echo "$DEVSTACK_VENV/bin"; }
function setup_develop { _record setup_develop "$@"; }
function pip_install { _record pip_install "$@"; }

# How stack.sh, unstack.sh and clean.sh source a plugin's files; the
# test-config phase runs lib/tempest's configure_tempest first, as
# extras.d/80-tempest.sh does.
function plugin_override_defaults { source "$STUB_PLUGIN/override-defaults"; }
function load_plugin_settings { source "$STUB_PLUGIN/settings"; }
function run_phase {
    if [[ $1 == stack && $2 == test-config ]] && is_service_enabled tempest
    then
        configure_tempest
    fi
    source "$STUB_PLUGIN/plugin.sh" "$@"
}

# lib/cinder
function source_lib_cinder {
    CINDER_ENABLED_BACKENDS=${CINDER_ENABLED_BACKENDS:-lvm:lvmdriver-1}
    CINDER_BACKUP_DRIVER=${CINDER_BACKUP_DRIVER:-swift}
    CINDER_CONF=$STUB_ROOT/etc/cinder/cinder.conf
    CINDER_STATE_PATH=${CINDER_STATE_PATH:=$DATA_DIR/cinder}
    CINDER_BIN_DIR=$STUB_ROOT/cinder-bin
    local program
    mkdir -p "$CINDER_BIN_DIR"
    for program in cinder-scheduler cinder-volume cinder-backup \
            storage-engine-with-connectors; do
        printf '#!/bin/sh\nexec "%s" "%s" "%s" "$@"\n' "$PYTHON" \
            "$STUB_FAKE_SERVICES" "$program" > "$CINDER_BIN_DIR/$program"
        chmod +x "$CINDER_BIN_DIR/$program"
    done
}
function is_cinder_enabled {
    [[ ,$ENABLED_SERVICES == *,c-* ]]
}
function configure_cinder_backup_swift {
    iniset "$CINDER_CONF" DEFAULT backup_driver \
        cinder.backup.drivers.swift.SwiftBackupDriver
    iniset "$CINDER_CONF" DEFAULT backup_swift_url \
        "http://$SERVICE_HOST:8080/v1/AUTH_"
}
function configure_cinder {
    mkdir -p "$(dirname "$CINDER_CONF")" "$CINDER_STATE_PATH"
    iniset "$CINDER_CONF" DEFAULT debug True
    iniset "$CINDER_CONF" DEFAULT state_path "$CINDER_STATE_PATH"
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
    if is_service_enabled c-bak && [[ -n "$CINDER_BACKUP_DRIVER" ]]; then
        if type "configure_cinder_backup_$CINDER_BACKUP_DRIVER" >/dev/null 2>&1
        then
            "configure_cinder_backup_$CINDER_BACKUP_DRIVER"
        else
            die $LINENO \
                "configure_cinder_backup_$CINDER_BACKUP_DRIVER doesn't exist"
        fi
    fi
}
function start_cinder {
    local conf="--config-file $CINDER_CONF"
    run_process c-sch "$CINDER_BIN_DIR/cinder-scheduler $conf"
    local malloc_tuning="MALLOC_ARENA_MAX=1 MALLOC_TRIM_THRESHOLD_=262144"
    run_process c-bak "$CINDER_BIN_DIR/cinder-backup $conf" "" "" \
        "$malloc_tuning"
    run_process c-vol "$CINDER_BIN_DIR/cinder-volume $conf" "" "" \
        "$malloc_tuning"
}
function stop_cinder {
    stop_process c-api
    stop_process c-bak
    stop_process c-sch
    stop_process c-vol
}

# lib/tempest: its settings (sourced in the source phase) and the volume
# part of configure_tempest.
function source_lib_tempest {
    TEMPEST_CONFIG=$DEST/tempest/etc/tempest.conf
    TEMPEST_DEFAULT_VOLUME_VENDOR="Open Source"
    TEMPEST_VOLUME_VENDOR=${TEMPEST_VOLUME_VENDOR:-Open Source}
    TEMPEST_DEFAULT_STORAGE_PROTOCOL="iSCSI"
    TEMPEST_STORAGE_PROTOCOL=${TEMPEST_STORAGE_PROTOCOL:-iSCSI}
}
function configure_tempest {
    mkdir -p "$(dirname "$TEMPEST_CONFIG")"
    # devstack's "lvm" backends: any backend whose type contains lvm.
    if [[ $CINDER_ENABLED_BACKENDS == *lvm* ]]; then
        : "${TEMPEST_VOLUME_MANAGE_SNAPSHOT:=True}"
        : "${TEMPEST_VOLUME_MANAGE_VOLUME:=True}"
        : "${TEMPEST_VOLUME_REVERT_TO_SNAPSHOT:=True}"
        if [[ $VIRT_DRIVER == libvirt ]]; then
            : "${TEMPEST_EXTEND_ATTACHED_VOLUME:=True}"
        fi
    fi
    local flag
    for flag in manage_snapshot:TEMPEST_VOLUME_MANAGE_SNAPSHOT \
            manage_volume:TEMPEST_VOLUME_MANAGE_VOLUME \
            extend_attached_volume:TEMPEST_EXTEND_ATTACHED_VOLUME \
            volume_revert:TEMPEST_VOLUME_REVERT_TO_SNAPSHOT; do
        iniset "$TEMPEST_CONFIG" volume-feature-enabled "${flag%%:*}" \
            "$(trueorfalse False "${flag##*:}")"
    done
    if [[ $CINDER_BACKUP_DRIVER == *swift* ]]; then
        iniset "$TEMPEST_CONFIG" volume backup_driver swift
    fi
    if ! is_service_enabled c-bak; then
        iniset "$TEMPEST_CONFIG" volume-feature-enabled backup False
    fi
    if [[ $CINDER_ENABLED_BACKENDS == *,* ]]; then
        iniset "$TEMPEST_CONFIG" volume-feature-enabled multi_backend True
        local be names=""
        for be in ${CINDER_ENABLED_BACKENDS//,/ }; do
            names+=${names:+,}${be##*:}
        done
        iniset "$TEMPEST_CONFIG" volume backend_names "$names"
    fi
    if [[ $TEMPEST_VOLUME_VENDOR != "$TEMPEST_DEFAULT_VOLUME_VENDOR" ]]; then
        iniset "$TEMPEST_CONFIG" volume vendor_name "$TEMPEST_VOLUME_VENDOR"
    fi
    if [[ $TEMPEST_STORAGE_PROTOCOL != "$TEMPEST_DEFAULT_STORAGE_PROTOCOL" ]]
    then
        iniset "$TEMPEST_CONFIG" volume storage_protocol \
            "$TEMPEST_STORAGE_PROTOCOL"
    fi
    if [[ $ENABLE_VOLUME_MULTIATTACH == True ]]; then
        iniset "$TEMPEST_CONFIG" compute-feature-enabled volume_multiattach \
            True
    fi
}
'''

# stack.sh, from the plugin's point of view, in its order, with its traps.
# POST_CONFIG_MERGE is what local.conf's [[post-config|...]] sections do
# between the post-config phase and the start of the services (Cinder's
# among them); TEST_CONFIG_MERGE what [[test-config|...]] sections do
# after the test-config phase.
STACK = r'''
trap exit_trap EXIT
trap err_trap ERR
plugin_override_defaults
source_lib_cinder
if is_service_enabled tempest; then source_lib_tempest; fi
load_plugin_settings
run_phase stack pre-install
configure_cinder
run_phase stack install
run_phase stack post-config
eval "${POST_CONFIG_MERGE:-}"
if is_service_enabled cinder; then start_cinder; fi
run_phase stack extra
run_phase stack test-config
eval "${TEST_CONFIG_MERGE:-}"
echo "CINDER_ENABLED_BACKENDS=$CINDER_ENABLED_BACKENDS"
'''
UNSTACK = r'''
plugin_override_defaults
source_lib_cinder
load_plugin_settings
run_phase unstack
if is_service_enabled cinder; then stop_cinder; fi
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
        self.tempest_conf = root / 'opt' / 'stack' / 'tempest' / 'etc' / \
            'tempest.conf'
        self.units = root / 'etc' / 'systemd' / 'system'
        self.systemd = root / 'systemd-state'
        self.journal_dir = root / 'journal'
        self.cinder_bin = root / 'cinder-bin'
        # None of the caller's devstack settings.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(('STORAGE_ENGINE_', 'CINDER_',
                                         'TEMPEST_', 'FAKE_SYSTEMD_'))
                    and k not in DEVSTACK_VARIABLES}
        self.env.update(STUB_ROOT=str(root), STUB_PLUGIN=PLUGIN,
                        STUB_VENV=os.path.dirname(
                            os.path.dirname(sys.executable)),
                        STUB_FAKE_SYSTEMCTL=FAKE_SYSTEMCTL,
                        STUB_FAKE_SERVICES=FAKE_SERVICES,
                        FAKE_SYSTEMD_UNIT_DIR=str(self.units),
                        FAKE_SYSTEMD_STATE=str(self.systemd),
                        FAKE_SYSTEMD_JOURNAL=str(self.journal_dir),
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

    # -- the fake systemd's view ---------------------------------------------

    def main_pid(self, unit=NODE_UNIT):
        """The unit's main PID if it runs, else None."""
        path = self.systemd / (unit + '.pid')
        if not path.exists():
            return None
        pid = int(path.read_text())
        return pid if processes.alive(pid) else None

    def started(self, unit=NODE_UNIT) -> dict:
        """The unit's last start: its argv and the unit as loaded then."""
        return json.loads((self.systemd / (unit + '.started.json'))
                          .read_text())

    def starts(self, unit=NODE_UNIT) -> list:
        """Every start of the unit, oldest first."""
        path = self.systemd / 'starts'
        if not path.exists():
            return []
        return [record for record in map(json.loads,
                                         path.read_text().splitlines())
                if record['unit'] == unit]

    def enabled(self, unit=NODE_UNIT) -> bool:
        return (self.systemd / (unit + '.enabled')).exists()

    def journal(self, unit=NODE_UNIT) -> str:
        path = self.journal_dir / (unit + '.log')
        return path.read_text() if path.exists() else ''

    def wait_journal(self, text, unit, count=1, timeout=60):
        """Wait until ``text`` is ``count`` times in the unit's journal."""
        deadline = time.monotonic() + timeout
        while self.journal(unit).count(text) < count:
            assert time.monotonic() < deadline, (
                '%r not %d times in the journal of %s:\n%s'
                % (text, count, unit, self.journal(unit)))
            time.sleep(0.1)
        return self.journal(unit)

    def stop_everything(self) -> None:
        """Kill what a failed test left running: the services the fake
        systemd started, and a node started with lib/storage-engine's PID
        file (a plugin that does not run it as a service) if it is still
        a storage node.
        """
        pids = set()
        try:
            pids.add(int((self.state / 'storage-engine.pid').read_text()))
        except (OSError, ValueError):
            pass
        found = set()
        if self.systemd.exists():
            for path in self.systemd.glob('*.pid'):
                try:
                    found.add(int(path.read_text()))
                except ValueError:
                    pass
        for pid in found:
            if processes.alive(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in pids - found:
            try:
                with open('/proc/%d/cmdline' % pid, 'rb') as f:
                    cmdline = f.read().replace(b'\0', b' ')
            except OSError:
                continue
            if b'storage-engine serve' in cmdline and processes.alive(pid):
                os.kill(pid, signal.SIGKILL)
