#!/usr/bin/env bash
# The main job, on a fresh Debian/Ubuntu machine, as root: an all-in-one
# OpenStack block-storage stack on our engine, then a short demo through
# python-cinderclient. See usage below (--help).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
data=$top/data

usage() {
    cat <<EOF
Usage: tools/all-in-one.sh [run [--keep]]   start (or reuse) everything, run the demo
       tools/all-in-one.sh stop             stop everything it started
       tools/all-in-one.sh status           what runs, and where
       tools/all-in-one.sh -h | --help

run (the default) installs what is needed (tools/setup-env.sh aio: the
Debian packages of bindep.txt's aio profile, and the virtualenv .venv),
then starts, or reuses when they already run:

  - a private RabbitMQ and MariaDB on 127.0.0.1 (their own ports, Erlang
    node name and epmd), run as root with their files in data/;
  - one storage node, \`storage-engine serve\`, on its embedded defaults:
    a file-backed volume group (a 10G sparse file) and SQLite metadata in
    data/node/ (devstack/lib/storage-engine's functions write its
    configuration and start it);
  - cinder-api (noauth, on 127.0.0.1), cinder-scheduler and cinder-volume,
    with our LVM-style backend (its cinder.conf section written by
    configure_storage_engine_backend);

and runs the demo (tools/aio_demo.py): a volume type with extra specs, a
volume, an ext4 filesystem and a file written through an attach made by
our os-brick NBD connector, a snapshot, a clone of it, the clone attached
and the file read back and compared, with an account of each step. The
demo deletes what it made; --keep leaves it (the next run deletes it).
The services keep running after it: use them with python-cinderclient
(the command is printed at the end), and run it again (it reuses them).

stop stops exactly the processes it started, by their PID files (and
whatever an interrupted demo left attached); the data stays.
Everything is in data/: PID files in data/run/, logs in data/log/.
Reset: tools/all-in-one.sh stop && rm -rf data
EOF
}

cmd=run
keep=()
for arg in "$@"; do
    case $arg in
        -h|--help|help) usage; exit 0 ;;
        run|stop|status) cmd=$arg ;;
        --keep) keep=(--keep) ;;
        *) usage >&2; exit 2 ;;
    esac
done
if [[ $(id -u) != 0 ]]; then
    echo "all-in-one: run it as root (it installs packages, and attaches" \
        "volumes with loop devices and mounts)" >&2
    exit 1
fi

if [[ $cmd != run && ! -f $data/aio.env ]]; then
    echo "all-in-one: nothing was started here (no $data/aio.env)"
    exit 0
fi
# One all-in-one command at a time on this data directory. The lock's file
# descriptor is closed for the services started below, which outlive us.
mkdir -p "$data"
exec {lock_fd}>"$data/aio.lock"
if ! flock -n "$lock_fd"; then
    echo "all-in-one: another tools/all-in-one.sh runs on $data" >&2
    exit 1
fi

py() {
    local python=python3
    [[ -x .venv/bin/python ]] && python=.venv/bin/python
    "$python" tools/aio_services.py --data-dir "$data" "$@" {lock_fd}>&-
}

# The storage node, through devstack/lib/storage-engine: its settings all
# point into data/ (none taken from the caller's environment).
node_env() {
    local var
    for var in $(compgen -v STORAGE_ENGINE_ || true); do
        unset "$var"
    done
    if [[ -f $data/aio.env ]]; then
        # shellcheck source=/dev/null
        source "$data/aio.env"
    fi
    export STORAGE_ENGINE_STATE_PATH=$data/node
    export STORAGE_ENGINE_CONF=$data/node/storage-engine.conf
    export STORAGE_ENGINE_NODE_NAME=aio
    export STORAGE_ENGINE_API_PORT=${AIO_NODE_API_PORT:-8790}
    export STORAGE_ENGINE_NBD_PORT_RANGE=${AIO_NBD_PORTS:-10809:10840}
    export STORAGE_ENGINE_PID_FILE=$data/run/storage-node.pid
    export STORAGE_ENGINE_LOG_FILE=$data/log/storage-node.log
    # shellcheck source=devstack/lib/storage-engine
    source "$top/devstack/lib/storage-engine"
}

timings=()
step=""
# timed NAME COMMAND...: run it, record how long it took.
timed() {
    local name=$1 begin=$EPOCHREALTIME
    shift
    step=$name
    "$@"
    timings+=("$name|$(elapsed "$begin")")
    step=""
}
elapsed() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'
}

on_exit() {
    local status=$?
    if [[ $status != 0 && $cmd == run ]]; then
        echo >&2
        echo "all-in-one: FAILED${step:+ in step \"$step\"} (status $status)." >&2
        echo "  Logs: $data/log/ (storage-node.log, cinder-*.log, rabbitmq/," \
            "mariadb.log, demo.log)" >&2
        echo "  What runs: tools/all-in-one.sh status;" \
            "stop it all: tools/all-in-one.sh stop" >&2
    fi
}
trap on_exit EXIT

do_stop() {
    echo "== stopping the all-in-one ($data)"
    py stop-cinder
    node_env
    local pid
    if pid=$(_storage_engine_node_pid); then
        echo "  storage node (PID $pid): stopping"
    fi
    stop_storage_engine_node
    py stop-infra
    echo "== stopped; the data stays in $data (rm -rf data resets it)"
}

start_node() {
    node_env
    write_storage_engine_node_conf "$STORAGE_ENGINE_CONF"
    start_storage_engine_node "$STORAGE_ENGINE_CONF" {lock_fd}>&-
}

install_deps() {
    mkdir -p "$data/log"
    if ! tools/setup-env.sh aio > "$data/log/install.log" 2>&1 {lock_fd}>&-
    then
        tail -n 30 "$data/log/install.log" >&2
        return 1
    fi
}

write_cinder_conf() {
    py write-cinder-conf
    node_env
    configure_storage_engine_backend "$data/cinder/cinder.conf" engine-lvm
}

do_run() {
    local begin=$EPOCHREALTIME
    echo "== storage-engine all-in-one (data: $data)"
    echo "-- installing what is needed (tools/setup-env.sh aio; minutes the" \
        "first time; log: data/log/install.log)"
    timed install install_deps
    py prepare
    echo "-- RabbitMQ and MariaDB"
    timed "RabbitMQ+MariaDB" py start-infra
    echo "-- the storage node"
    timed "storage node" start_node
    echo "-- Cinder"
    timed "cinder.conf" write_cinder_conf
    timed "Cinder services" py start-cinder
    echo "-- the demo (tools/aio_demo.py)"
    timed demo .venv/bin/python tools/aio_demo.py --data-dir "$data" \
        "${keep[@]}" {lock_fd}>&-
    local summary="" t
    for t in "${timings[@]}"; do
        summary+="${summary:+, }${t%|*} ${t##*|}"
    done
    echo
    echo "== all-in-one done in $(elapsed "$begin"): $summary"
    py status
    local endpoint
    endpoint=$(py endpoint)
    cat <<EOF
Use it:  .venv/bin/cinder --os-auth-type noauth --os-user-id aio-demo \\
             --os-project-id aio-demo --os-endpoint $endpoint \\
             --os-volume-api-version 3.71 list
Logs:    $data/log/
Stop:    tools/all-in-one.sh stop    (reset: then rm -rf data)
EOF
}

case $cmd in
    run) do_run ;;
    stop) do_stop ;;
    status) py status ;;
esac
