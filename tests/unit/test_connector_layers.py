"""The connector side stays light: what a compute host loads to attach a
volume (the connectors, the AoE bridge, the Cinder drivers' MAC checks)
imports no volume store and no service, only the engine's protocol
clients and its leaf modules.
"""

import json
import os
import subprocess
import sys

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _engine_modules(*modules) -> list:
    """The storage_engine modules a fresh Python has after importing
    ``modules``.
    """
    code = ('import importlib, json, sys\n'
            'for name in sys.argv[1:]:\n'
            '    importlib.import_module(name)\n'
            'print(json.dumps(sorted(m for m in sys.modules\n'
            '                        if m.startswith("storage_engine"))))\n')
    env = dict(os.environ, PYTHONPATH=TOP)
    out = subprocess.run([sys.executable, '-c', code, *modules], env=env,
                         cwd=TOP, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize('module', [
    'os_brick_connectors.nbd', 'os_brick_connectors.aoe',
    'os_brick_connectors.aoe_bridge', 'os_brick_connectors.opts'])
def test_the_connector_side_imports_no_volume_store_and_no_service(module):
    loaded = _engine_modules(module)
    assert not [m for m in loaded if m.startswith(
        ('storage_engine.volstore', 'storage_engine.service',
         'storage_engine.metastore'))], loaded


def test_names_is_a_leaf_module():
    assert _engine_modules('storage_engine.names') == [
        'storage_engine', 'storage_engine.errors', 'storage_engine.names']
