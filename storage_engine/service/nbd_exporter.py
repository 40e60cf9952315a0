"""Volumes published on the node's NBD server, from any thread.

The node's domain layer runs in worker threads; the NBD server runs on the
service's event loop. :class:`NBDExporter` is the bridge: publishing adds
to the export table (new handshakes see it at once), and withdrawing
removes the export and disconnects the clients attached through it, on the
loop, before returning: after ``withdraw`` no client can reach the volume
through that export.
"""

import asyncio
import concurrent.futures

from storage_engine.nbd import exports as exports_mod
from storage_engine.nbd import server as server_mod


class NBDExporter:
    protocol = 'nbd'

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 server: server_mod.NBDServer, host: str, port: int):
        self._loop = loop
        self.server = server
        self.host = host
        self.port = port
        self.tls_mode = server.tls_mode

    def _on_loop(self, fn, *args):
        """Run ``fn`` on the event loop and wait for it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return fn(*args)
        done = concurrent.futures.Future()

        def call():
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        return done.result()

    def publish(self, name: str, backend, hosts, read_only: bool,
                description: str) -> None:
        export = exports_mod.Export(
            name=name, backend=backend,
            access=exports_mod.AccessList.build(hosts=hosts),
            description=description, read_only=read_only)
        self._on_loop(self.server.exports.add, export)

    def withdraw(self, name: str) -> None:
        def drop():
            if name in self.server.exports:
                self.server.exports.remove(name)
            return self.server.drop_clients(name)
        self._on_loop(drop)

    def connections(self) -> int:
        return self.server.connection_count()
