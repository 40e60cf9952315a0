#!/bin/bash
#
# plugin.sh - the storage-engine devstack plugin: a storage node on this host
# and its Cinder backends
#
# devstack sources this file at each of its phases (stack.sh's order):
#
# - stack pre-install: nothing (but see the functions below)
# - Cinder's configuration (devstack's configure_cinder, before the install
#   phase): configure_cinder_backend_storage_engine_lvm (or _aoe) for each
#   storage_engine_lvm:NAME (storage_engine_aoe:NAME) of
#   CINDER_ENABLED_BACKENDS (override-defaults puts ours there); devstack
#   then creates a volume type NAME for each
# - stack install: install_storage_engine (the node's packages and this
#   checkout, into devstack's Python environment)
# - stack post-config: configure_storage_engine (the node's configuration,
#   and its unit's capabilities when it serves AoE),
#   configure_storage_engine_cinder_backup, and start_storage_engine: the
#   node runs as the devstack service storage-engine (systemd unit
#   devstack@storage-engine.service) and answers before devstack starts
#   cinder-volume. Then devstack merges local.conf's post-config sections
#   and starts Cinder.
# - stack extra: restart_storage_engine (restarts the node if those
#   post-config sections changed its configuration, and points Cinder's
#   backends at the node's API as it is now, restarting cinder-volume if
#   that moved), then run_cinder_backup_with_connectors
# - stack test-config: configure_tempest_storage_engine (after devstack's
#   configure_tempest; local.conf's test-config sections come after it)
# - unstack: stop_storage_engine
# - clean: cleanup_storage_engine (unstack.sh has stopped the node)
#
# The node's configuration and Cinder's backend sections are written by
# lib/storage-engine's functions, the ones the all-in-one bring-up and the
# functional tests use; settings sources it.

STORAGE_ENGINE_PLUGIN_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if ! declare -F configure_storage_engine_backend >/dev/null; then
    # shellcheck source=devstack/lib/storage-engine
    source "$STORAGE_ENGINE_PLUGIN_DIR/lib/storage-engine"
fi

# The node's systemd unit, as devstack's run_process names it, and the
# drop-in that gives it the capabilities AoE needs.
STORAGE_ENGINE_UNIT=devstack@storage-engine.service
STORAGE_ENGINE_UNIT_DROP_IN_DIR=$SYSTEMD_DIR/$STORAGE_ENGINE_UNIT.d
STORAGE_ENGINE_UNIT_DROP_IN=$STORAGE_ENGINE_UNIT_DROP_IN_DIR/storage-engine-aoe.conf

# A copy of the node's configuration as it was when the node started: see
# restart_storage_engine.
STORAGE_ENGINE_STARTED_CONF=$STORAGE_ENGINE_STATE_PATH/storage-engine.conf.started


# Functions
# ---------

# Cinder backend section NAME of CINDER_CONF for our LVM-style driver.
# Defined whatever the phase: devstack's configure_cinder calls it (for
# each storage_engine_lvm:NAME of CINDER_ENABLED_BACKENDS) between the
# pre-install and install phases.
# configure_cinder_backend_storage_engine_lvm NAME
function configure_cinder_backend_storage_engine_lvm {
    local be_name=$1
    configure_storage_engine_backend "$CINDER_CONF" "$be_name"
}

# Cinder backend section NAME for our AoE driver (storage_engine_aoe:NAME);
# the node serves AoE when STORAGE_ENGINE_AOE_INTERFACE is set.
# configure_cinder_backend_storage_engine_aoe NAME
function configure_cinder_backend_storage_engine_aoe {
    local be_name=$1
    configure_storage_engine_backend "$CINDER_CONF" "$be_name" aoe
}

# The NAMEs of our backends in CINDER_ENABLED_BACKENDS, one a line.
function _storage_engine_backend_names {
    local be
    for be in ${CINDER_ENABLED_BACKENDS//,/ }; do
        case ${be%%:*} in
            storage_engine_lvm|storage_engine_aoe) echo "${be##*:}" ;;
        esac
    done
}

# Install the packages the node's hosts need and this checkout (the engine,
# the Cinder drivers and the os-brick connectors: cinder-volume imports
# them from devstack's Python environment).
function install_storage_engine {
    if is_ubuntu; then
        # shellcheck disable=SC2086
        install_package $STORAGE_ENGINE_PACKAGES
    else
        warn $LINENO "storage-engine: install the equivalents of $STORAGE_ENGINE_PACKAGES on this distribution yourself"
    fi
    setup_develop "$STORAGE_ENGINE_DIR"
}

# The capabilities the node needs beyond the stack user's, space-separated
# (none: empty). Serving AoE opens an AF_PACKET socket (CAP_NET_RAW), in
# the interface's network namespace when there is one, which the node's
# thread joins with setns(2) (CAP_SYS_ADMIN). NBD and the API listen on
# unprivileged ports and need nothing.
function _storage_engine_capabilities {
    if [[ -z $STORAGE_ENGINE_AOE_INTERFACE ]]; then
        return 0
    fi
    if [[ -n $STORAGE_ENGINE_AOE_NETWORK_NAMESPACE ]]; then
        echo "CAP_NET_RAW CAP_SYS_ADMIN"
    else
        echo "CAP_NET_RAW"
    fi
}

# The systemd drop-in of the node's unit: devstack runs services as the
# stack user, and a capability the node needs is given to it as an ambient
# capability, with a bounding set of those only. Written before
# run_process, whose daemon-reload loads it with the unit; removed when
# the node needs none.
function _storage_engine_write_unit_drop_in {
    local capabilities
    capabilities=$(_storage_engine_capabilities)
    if [[ -z $capabilities ]]; then
        sudo rm -f "$STORAGE_ENGINE_UNIT_DROP_IN"
        if [[ -d $STORAGE_ENGINE_UNIT_DROP_IN_DIR ]]; then
            sudo rmdir --ignore-fail-on-non-empty "$STORAGE_ENGINE_UNIT_DROP_IN_DIR"
        fi
        return 0
    fi
    if [[ ${USER_UNITS:-False} == True ]]; then
        die $LINENO "storage-engine: serving AoE (STORAGE_ENGINE_AOE_INTERFACE) takes $capabilities, which a user unit (USER_UNITS=True) cannot be given: set USER_UNITS=False"
    fi
    sudo install -d -m 755 "$STORAGE_ENGINE_UNIT_DROP_IN_DIR"
    sudo tee "$STORAGE_ENGINE_UNIT_DROP_IN" >/dev/null <<EOF
# Written by the storage-engine devstack plugin: the node runs as
# $STACK_USER and serves AoE on $STORAGE_ENGINE_AOE_INTERFACE, which takes
# these capabilities, and no others.
[Service]
AmbientCapabilities=$capabilities
CapabilityBoundingSet=$capabilities
EOF
}

# Tell the operator what nova-compute cannot do with our volumes yet.
function _storage_engine_warn_about_nova {
    if ! is_service_enabled n-cpu; then
        return 0
    fi
    local default=${CINDER_ENABLED_BACKENDS%%,*}
    case ${default%%:*} in
        storage_engine_lvm|storage_engine_aoe)
            # override-defaults made ours the only backend, or the
            # operator put it first: it is Cinder's default volume type.
            warn $LINENO "storage-engine: ${default##*:} is Cinder's default volume type, and nova-compute cannot attach its volumes (Nova has no volume driver for driver_volume_type nbd or aoe yet): attaching volumes and booting from them fail. To keep devstack's LVM backend as the default type, set CINDER_ENABLED_BACKENDS=lvm:lvmdriver-1 in localrc (ours are added after it); see doc/source/devstack.rst"
            ;;
        *)
            warn $LINENO "storage-engine: nova-compute cannot attach our volumes (driver_volume_type nbd or aoe): Nova has no volume driver for them yet; see doc/source/connectors.rst"
            ;;
    esac
}

# Write the storage node's configuration, and its unit's drop-in.
function configure_storage_engine {
    sudo install -d -o "$STACK_USER" -m 755 "$STORAGE_ENGINE_CONF_DIR"
    write_storage_engine_node_conf "$STORAGE_ENGINE_CONF"
    _storage_engine_write_unit_drop_in
    _storage_engine_warn_about_nova
}

# cinder-backup's driver. devstack configures CINDER_BACKUP_DRIVER (swift
# unless localrc chose one, or ceph with a ceph backend); any driver backs
# up our volumes, since cinder-backup reads them through os-brick (see
# run_cinder_backup_with_connectors). Only devstack's default, swift,
# cannot work when swift is not enabled: then backups go to a directory
# (the POSIX driver). Before Cinder starts (post-config).
function configure_storage_engine_cinder_backup {
    if ! is_service_enabled c-bak; then
        return 0
    fi
    if [[ -n $STORAGE_ENGINE_LOCALRC_BACKUP_DRIVER ]] \
            || [[ $CINDER_BACKUP_DRIVER != swift ]] \
            || is_service_enabled swift; then
        return 0
    fi
    echo "storage-engine: swift is not enabled; cinder-backup backs up to $STORAGE_ENGINE_BACKUP_POSIX_PATH"
    sudo install -d -o "$STACK_USER" -m 750 "$STORAGE_ENGINE_BACKUP_POSIX_PATH"
    iniset "$CINDER_CONF" DEFAULT backup_driver \
        cinder.backup.drivers.posix.PosixBackupDriver
    iniset "$CINDER_CONF" DEFAULT backup_posix_path "$STORAGE_ENGINE_BACKUP_POSIX_PATH"
}

# Wait until the node's unit answers on its API (STORAGE_ENGINE_API_URL,
# with the token of STORAGE_ENGINE_CONF); die if it does not.
function _storage_engine_wait_for_unit {
    local pid token
    token=$(iniget "$STORAGE_ENGINE_CONF" api auth_token)
    pid=$($SYSTEMCTL show --property=MainPID --value "$STORAGE_ENGINE_UNIT")
    if ! wait_storage_engine_ready "${pid:-0}" "$token"; then
        die $LINENO "storage-engine: the storage node did not start; see journalctl -u $STORAGE_ENGINE_UNIT"
    fi
    echo "storage-engine: ready at $STORAGE_ENGINE_API_URL ($STORAGE_ENGINE_UNIT, PID $pid)"
}

# Start the storage node as the devstack service storage-engine, and wait
# until its API answers. A devstack service, not a process of stack.sh:
# stack.sh's exit trap kills its own background jobs (with LOGFILE and
# VERBOSE, as in CI), and the node must outlive it.
function start_storage_engine {
    run_process storage-engine "$STORAGE_ENGINE_BIN serve --config-file $STORAGE_ENGINE_CONF"
    _storage_engine_wait_for_unit
    cp "$STORAGE_ENGINE_CONF" "$STORAGE_ENGINE_STARTED_CONF"
}

# The API URL the node's configuration CONF gives: its [api] address (the
# one we gave when it listens on every address), port and scheme.
function _storage_engine_conf_api_url {
    local conf=$1
    local host port scheme=http
    host=$(iniget "$conf" api host)
    port=$(iniget "$conf" api port)
    case $host in
        ""|0.0.0.0|::|"[::]") host=$STORAGE_ENGINE_API_HOST ;;
    esac
    if [[ -n $(iniget "$conf" api tls_cert_file) ]]; then
        scheme=https
    fi
    echo "$scheme://$(storage_engine_url_host "$host"):${port:-8790}"
}

# Point our backends' sections of cinder.conf from the node's API as it
# was (OLD_URL, OLD_TOKEN) to the API as it is (NEW_URL, NEW_TOKEN), where
# they still say what the plugin wrote (an engine_api_url or token that
# local.conf set in cinder.conf is the operator's); restart cinder-volume
# if a section changed, since it reads them when it starts.
# _storage_engine_repoint_cinder OLD_URL NEW_URL OLD_TOKEN NEW_TOKEN
function _storage_engine_repoint_cinder {
    local old_url=$1 new_url=$2 old_token=$3 new_token=$4
    local be changed=""
    if [[ $old_url == "$new_url" && $old_token == "$new_token" ]]; then
        return 0
    fi
    for be in $(_storage_engine_backend_names); do
        if [[ $(iniget "$CINDER_CONF" "$be" engine_api_url) == "$old_url" \
                && $old_url != "$new_url" ]]; then
            iniset "$CINDER_CONF" "$be" engine_api_url "$new_url"
            changed=1
        fi
        if [[ $(iniget "$CINDER_CONF" "$be" engine_api_token) == "$old_token" \
                && $old_token != "$new_token" ]]; then
            iniset "$CINDER_CONF" "$be" engine_api_token "$new_token"
            changed=1
        fi
    done
    if [[ -n $changed ]] && is_service_enabled c-vol; then
        echo "storage-engine: the node's API moved to $new_url or changed its token; restarting cinder-volume"
        $SYSTEMCTL restart devstack@c-vol.service
    fi
}

# The extra phase: local.conf's [[post-config|$STORAGE_ENGINE_CONF]]
# sections were merged after the node started (post-config), and Cinder
# started after that merge. Restart the node if its configuration changed
# (else start it, which does nothing when it runs), wait until it answers,
# and carry a change of its [api] address, port or token over to Cinder's
# backend sections (restarting cinder-volume then). cinder-volume running
# meanwhile is harmless: its driver sees its node down and then up again
# at its next stats poll.
function restart_storage_engine {
    local old_url=$STORAGE_ENGINE_API_URL old_token new_token option
    local started=$STORAGE_ENGINE_STARTED_CONF
    [[ -e $started ]] || started=$STORAGE_ENGINE_CONF
    old_token=$(iniget "$started" api auth_token)
    new_token=$(iniget "$STORAGE_ENGINE_CONF" api auth_token)
    for option in host port tls_cert_file; do
        if [[ $(iniget "$started" api $option) != \
                "$(iniget "$STORAGE_ENGINE_CONF" api $option)" ]]; then
            STORAGE_ENGINE_API_URL=$(_storage_engine_conf_api_url "$STORAGE_ENGINE_CONF")
        fi
    done
    if ! cmp -s "$STORAGE_ENGINE_CONF" "$started"; then
        echo "storage-engine: $STORAGE_ENGINE_CONF changed; restarting the node"
        $SYSTEMCTL restart "$STORAGE_ENGINE_UNIT"
    else
        $SYSTEMCTL start "$STORAGE_ENGINE_UNIT"
    fi
    _storage_engine_wait_for_unit
    cp "$STORAGE_ENGINE_CONF" "$STORAGE_ENGINE_STARTED_CONF"
    _storage_engine_repoint_cinder "$old_url" "$STORAGE_ENGINE_API_URL" \
        "$old_token" "$new_token"
}

# cinder-backup attaches volumes through os-brick in its own process (to
# back them up, to restore to them), and os-brick knows our connectors only
# once os_brick_connectors.register() has run there: run it through
# storage-engine-with-connectors, which does that and then runs
# cinder-backup's own entry point. devstack's start_cinder started it
# without; it is started again the same way but for that prefix, with the
# environment devstack gave it. (nova-compute needs the same for the same
# reason; it comes with Nova's support for our volumes.)
function run_cinder_backup_with_connectors {
    if ! is_service_enabled c-bak; then
        return 0
    fi
    local wrapper=$CINDER_BIN_DIR/storage-engine-with-connectors
    if [[ ! -x $wrapper ]]; then
        die $LINENO "storage-engine: $wrapper is missing: cinder-backup must run in the Python environment this plugin is installed in (devstack's USE_VENV is not supported)"
    fi
    local env_vars
    env_vars=$($SYSTEMCTL show --property=Environment --value devstack@c-bak.service)
    stop_process c-bak
    run_process c-bak "$wrapper cinder-backup --config-file $CINDER_CONF" "" "" "$env_vars"
}

# Tell tempest what the backend of Cinder's default volume type (the one
# its volume tests use) is and can do, when that backend is ours; after
# devstack's configure_tempest, which turns manage_snapshot,
# manage_volume, volume_revert and extend_attached_volume on for any
# backend type containing "lvm", ours included. local.conf's
# [[test-config|$TEMPEST_CONFIG]] sections are merged after this.
function configure_tempest_storage_engine {
    if ! is_service_enabled tempest; then
        return 0
    fi
    # Backups (of any backend's volumes) when cinder-backup runs.
    local backup=False
    if is_service_enabled c-bak; then
        backup=True
    fi
    iniset "$TEMPEST_CONFIG" volume-feature-enabled backup $backup

    local default=${CINDER_ENABLED_BACKENDS%%,*}
    case ${default%%:*} in
        storage_engine_lvm|storage_engine_aoe) ;;
        *) return 0 ;;
    esac
    # What our default backend is and can do: lib/storage-engine's
    # function, the one the tempest tier uses too.
    configure_storage_engine_tempest "$TEMPEST_CONFIG" "$CINDER_CONF" "${default##*:}" \
        || die $LINENO "storage-engine: cannot configure tempest for ${default##*:}"
}

function stop_storage_engine {
    stop_process storage-engine
    rm -f "$STORAGE_ENGINE_STARTED_CONF"
}

# Remove the node's data (its volumes too), its configuration file (the
# configuration directory too when nothing else is left in it) and its
# unit's drop-in (clean.sh removes devstack's unit files).
function cleanup_storage_engine {
    stop_storage_engine
    if [[ -z $STORAGE_ENGINE_STATE_PATH || $STORAGE_ENGINE_STATE_PATH == / ]]; then
        die $LINENO "storage-engine: will not remove STORAGE_ENGINE_STATE_PATH '$STORAGE_ENGINE_STATE_PATH'"
    fi
    sudo rm -rf "$STORAGE_ENGINE_STATE_PATH"
    sudo rm -f "$STORAGE_ENGINE_CONF"
    if [[ -d $STORAGE_ENGINE_CONF_DIR ]]; then
        sudo rmdir --ignore-fail-on-non-empty "$STORAGE_ENGINE_CONF_DIR"
    fi
    sudo rm -rf "$STORAGE_ENGINE_UNIT_DROP_IN_DIR"
}


# Dispatch
# --------

if is_service_enabled storage-engine; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing storage-engine"
        install_storage_engine
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        echo_summary "Configuring and starting the storage-engine node"
        configure_storage_engine
        configure_storage_engine_cinder_backup
        start_storage_engine
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        echo_summary "Restarting the storage-engine node if local.conf changed its configuration"
        restart_storage_engine
        run_cinder_backup_with_connectors
    elif [[ "$1" == "stack" && "$2" == "test-config" ]]; then
        echo_summary "Configuring tempest for the storage-engine backends"
        configure_tempest_storage_engine
    fi

    if [[ "$1" == "unstack" ]]; then
        stop_storage_engine
    fi

    if [[ "$1" == "clean" ]]; then
        cleanup_storage_engine
    fi
fi

# Local variables:
# mode: shell-script
# End:
