"""Volumes published on the node's NBD server, from any thread.

The node's domain layer runs in worker threads; the NBD server runs on the
service's event loop. :class:`NBDExporter` is the bridge: publishing adds
to the export table (new handshakes see it at once), and withdrawing
removes the export and disconnects the clients attached through it, on the
loop, before returning: after ``withdraw`` no client can reach the volume
through that export.

An NBD export is named by its id (the record's ``export_name``, kept for
records written before there were other protocols), so it claims no
address in the metadata store; the node's one port is claimed at start
(``serve.claim_nbd_port``).
"""

import asyncio
import ipaddress

from storage_engine import errors
from storage_engine.nbd import exports as exports_mod
from storage_engine.nbd import server as server_mod
from storage_engine.service import loopcall


class NBDExporter:
    protocol = 'nbd'
    #: NBD exports claim no numbers in the store (see node.Addresses)
    addresses = None

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 server: server_mod.NBDServer, host: str, port: int):
        self._loop = loop
        self.server = server
        self.host = host
        self.port = port
        self.tls_mode = server.tls_mode

    @staticmethod
    def check_hosts(hosts: list) -> list[str]:
        """IP addresses and networks, normalised (``10.0.0.1/32`` is
        ``10.0.0.1``, ``10.1.2.3/8`` is ``10.0.0.0/8``).
        """
        out = []
        for host in hosts:
            try:
                net = ipaddress.ip_network(host, strict=False)
                out.append(str(net.network_address)
                           if net.num_addresses == 1 else str(net))
            except (TypeError, ValueError):
                raise errors.InvalidArgument(
                    'host %r is not an IP address or network' % (host,),
                    host=host) from None
        return out

    @staticmethod
    def address(ident: str, number: int | None) -> dict:
        return {'export_name': ident}

    def publish(self, ident: str, rec: dict, backend,
                description: str) -> None:
        export = exports_mod.Export(
            name=rec['export_name'], backend=backend,
            access=exports_mod.AccessList.build(hosts=rec['hosts']),
            description=description, read_only=rec['read_only'])
        loopcall.call(self._loop, self.server.exports.add, export)

    def withdraw(self, ident: str, rec: dict) -> None:
        name = rec['export_name']

        def drop():
            if name in self.server.exports:
                self.server.exports.remove(name)
            return self.server.drop_clients(name)
        loopcall.call(self._loop, drop)

    def connection(self, rec: dict) -> dict:
        return {'protocol': self.protocol, 'host': self.host,
                'port': self.port, 'export_name': rec['export_name'],
                'tls_mode': self.tls_mode}

    def connections(self) -> int:
        return self.server.connection_count()

    def describe(self) -> dict:
        return {'host': self.host, 'port': self.port,
                'tls_mode': self.tls_mode}
