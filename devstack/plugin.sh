#!/bin/bash
#
# plugin.sh - the storage-engine devstack plugin: a storage node on this host
# and its Cinder backends
#
# devstack sources this file at each of its phases:
#
# - stack pre-install: nothing (but see the functions below)
# - stack install: install_storage_engine (the node's packages and this
#   checkout, into devstack's Python environment)
# - Cinder's configuration (devstack's configure_cinder, before the install
#   phase): configure_cinder_backend_storage_engine_lvm (or _aoe) for each
#   storage_engine_lvm:NAME (storage_engine_aoe:NAME) of
#   CINDER_ENABLED_BACKENDS (override-defaults puts ours there); devstack
#   then creates a volume type NAME for each
# - stack post-config: configure_storage_engine and start_storage_engine,
#   so that the node is up before cinder-volume starts: cinder-volume's
#   driver checks the node when it starts, and Cinder retries that for
#   seconds only
# - stack extra: start_storage_engine again (it restarts the node if
#   local.conf's post-config sections changed its configuration)
# - unstack: stop_storage_engine
# - clean: cleanup_storage_engine (unstack.sh has stopped the node)
#
# The configuration and the start and stop of the node are
# lib/storage-engine's functions, the ones the all-in-one bring-up and the
# functional tests run; settings sources it.

STORAGE_ENGINE_PLUGIN_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if ! declare -F configure_storage_engine_backend >/dev/null; then
    # shellcheck source=devstack/lib/storage-engine
    source "$STORAGE_ENGINE_PLUGIN_DIR/lib/storage-engine"
fi

# A copy of the node's configuration as it was when the node started: see
# start_storage_engine.
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

# Write the storage node's configuration.
function configure_storage_engine {
    sudo install -d -o "$STACK_USER" -m 755 "$STORAGE_ENGINE_CONF_DIR"
    write_storage_engine_node_conf "$STORAGE_ENGINE_CONF"
    if is_service_enabled n-cpu; then
        # os_brick_connectors.register() would have to run in nova-compute,
        # and even then Nova has no volume driver for driver_volume_type
        # nbd that would ask os-brick for our connector.
        warn $LINENO "storage-engine: nova-compute cannot attach our volumes (driver_volume_type nbd): Nova has no volume driver for it; see doc/source/connectors.rst"
    fi
}

# Start the storage node, or restart it if it runs with another
# configuration than the one it has now: local.conf's
# [[post-config|$STORAGE_ENGINE_CONF]] sections are merged after the
# post-config phase, where the node starts, and take effect when the extra
# phase calls this again. A restart is harmless to Cinder: the engine's
# clients retry while the node is away, and exports survive it.
function start_storage_engine {
    if [[ -e $STORAGE_ENGINE_STARTED_CONF ]] \
            && ! cmp -s "$STORAGE_ENGINE_CONF" "$STORAGE_ENGINE_STARTED_CONF"; then
        echo "storage-engine: $STORAGE_ENGINE_CONF changed; restarting the node"
        stop_storage_engine_node
    fi
    start_storage_engine_node "$STORAGE_ENGINE_CONF" \
        || die $LINENO "storage-engine: the storage node did not start; see $STORAGE_ENGINE_LOG_FILE"
    cp "$STORAGE_ENGINE_CONF" "$STORAGE_ENGINE_STARTED_CONF"
}

function stop_storage_engine {
    stop_storage_engine_node
    rm -f "$STORAGE_ENGINE_STARTED_CONF"
}

# Remove the node's data (its volumes too) and configuration file; the
# configuration directory goes too when nothing else is left in it.
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
        start_storage_engine
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        echo_summary "Restarting the storage-engine node if local.conf changed its configuration"
        start_storage_engine
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
