#!/usr/bin/env bash
# Prepare this checkout on a Debian/Ubuntu machine, idempotently, as root:
# the Debian packages listed in bindep.txt for the given profiles, and a
# virtualenv in .venv with the project and its test and doc requirements.
#
#   tools/setup-env.sh [PROFILE ...]     (default profile: test)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
profiles=("${@:-test}")

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Packages with services (rabbitmq-server, mariadb-server, etcd-server) are
# installed for the tests, which start their own private instances: their
# maintainer scripts must not start system-wide ones (nor hang trying to,
# on machines without systemd). A policy-rc.d that denies every start does
# that; one that is already there is left alone, ours is removed after.
policy_rc=/usr/sbin/policy-rc.d
policy_rc_ours=0
restore_policy_rc() {
    if [ "$policy_rc_ours" = 1 ]; then
        as_root rm -f "$policy_rc"
        policy_rc_ours=0
    fi
}
trap restore_policy_rc EXIT

apt_updated=0
apt_install() {
    [ "$#" -gt 0 ] || return 0
    if [ "$apt_updated" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    if [ ! -e "$policy_rc" ]; then
        printf '#!/bin/sh\n# tools/setup-env.sh: start no service\nexit 101\n' |
            as_root tee "$policy_rc" >/dev/null
        as_root chmod 755 "$policy_rc"
        policy_rc_ours=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    restore_policy_rc
}

# Bootstrap: a Python that can make a venv, before bindep itself can run.
# (Debian's python3 answers `-m venv --help` without python3-venv, so try
# the real thing.)
if ! command -v python3 >/dev/null; then
    apt_install python3 python3-venv python3-dev gcc
fi
if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv >/dev/null 2>&1; then
        rm -rf .venv
        apt_install python3 python3-venv python3-dev gcc
        python3 -m venv .venv
    fi
fi
stamp=.venv/.installed
# The doc requirements too: the test run builds the documentation
# (tests/functional/test_docs.py).
want=$(cat requirements.txt test-requirements.txt doc/requirements.txt \
    setup.cfg | sha1sum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q bindep -r requirements.txt \
        -r test-requirements.txt -r doc/requirements.txt
    .venv/bin/pip install -q -e .
    echo "$want" > "$stamp"
fi

# Everything else from bindep.txt, for the profiles asked for.
for profile in "${profiles[@]}"; do
    # bindep -b exits 1 when something is missing, and lists it.
    missing=$(.venv/bin/bindep -b "$profile" || true)
    # shellcheck disable=SC2086
    apt_install $missing
done
