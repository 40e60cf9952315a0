#!/usr/bin/env bash
# The main job, from a fresh Debian/Ubuntu machine: install what is needed
# (idempotently) and run the demo on embedded defaults (a file-backed volume
# group under ./data). Stop: nothing keeps running; `rm -rf data` resets.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
tools/setup-env.sh test
echo "storage-engine demo (data in $top/data):"
exec .venv/bin/python tools/engine_demo.py --data-dir "$top/data"
