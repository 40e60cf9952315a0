#!/usr/bin/env bash
# The full default test suite, from a fresh Debian/Ubuntu machine:
#   tools/run-tests.sh [pytest args...]
# It installs what the tests need (idempotently) and runs pytest on the
# default tiers. pytest's exit status is ours: 5 (no tests ran) fails too.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
tools/setup-env.sh test
exec .venv/bin/python -m pytest "$@"
