"""Fixtures for the interop tier: our NBD server, real clients.

The server runs in this process (its own event loop in a thread) over a
real volume group in a temporary directory; the clients (nbdinfo, nbdcopy,
qemu-img, qemu-io, fio) are the Debian packages tools/setup-env.sh installs.
A missing client is an error, never a skip.
"""

import asyncio
import os
import shutil
import subprocess
import threading

import pytest

from storage_engine.nbd import exports as ex
from storage_engine.nbd import server as srv
from storage_engine.volstore import VolumeGroup

MiB = 1 << 20


def require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, '%s is not installed: run tools/setup-env.sh' % tool
    return path


def run(argv, check=True, timeout=300, **kw):
    """Run a client; its output (text) and exit status come back."""
    require(argv[0])
    proc = subprocess.run(argv, capture_output=True, text=True,
                          timeout=timeout, **kw)
    if check and proc.returncode:
        raise AssertionError('%s failed (%d): %s%s' % (
            ' '.join(argv), proc.returncode, proc.stdout, proc.stderr))
    return proc


class Harness:
    """An NBD server on 127.0.0.1 (and a Unix socket) serving ``vg``."""

    def __init__(self, vg, workdir, tls=None, tls_mode=srv.TLS_OFF):
        self.vg = vg
        self.table = ex.ExportTable()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever,
                                        daemon=True)
        self._thread.start()
        self.server = srv.NBDServer(self.table, tls=tls, tls_mode=tls_mode)
        self.host, self.port = self.call(
            self.server.listen_tcp('127.0.0.1', 0))
        self.unix_path = os.path.join(workdir, 'nbd.sock')
        self.call(self.server.listen_unix(self.unix_path))

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def export(self, volume, name=None, hosts=('127.0.0.1',), tls_ids=(),
               local=True, description=''):
        name = name or volume
        access = ex.AccessList.build(hosts=hosts, tls_identities=tls_ids,
                                     local=local)
        export = ex.Export(name, self.vg.open_volume(volume), access,
                           description=description)
        self.loop.call_soon_threadsafe(self.table.add, export)
        # Make sure the loop has run the add before clients connect.
        self.call(asyncio.sleep(0))
        return name

    def uri(self, name, scheme='nbd'):
        return '%s://127.0.0.1:%d/%s' % (scheme, self.port, name)

    def unix_uri(self, name):
        return 'nbd+unix:///%s?socket=%s' % (name, self.unix_path)

    def stop(self):
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def vg(tmp_path):
    group = VolumeGroup.create([(str(tmp_path / 'pv0'), 2 << 30)],
                               cluster_size=MiB)
    yield group
    group.close()


@pytest.fixture
def nbd(vg, tmp_path):
    harness = Harness(vg, str(tmp_path))
    yield harness
    harness.stop()


@pytest.fixture
def tls_nbd(vg, tmp_path, pki):
    harness = Harness(vg, str(tmp_path), tls=pki.server_config(),
                      tls_mode=srv.TLS_REQUIRE)
    yield harness
    harness.stop()
