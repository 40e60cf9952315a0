"""Volumes published on the node's AoE target, from any thread.

ATA over Ethernet addresses a device by shelf and slot: the node has one
shelf (claimed in the metadata store at start, ``serve.claim_aoe_shelf``)
and each export one slot of it, which the node claims under
``aoe/slots/<shelf>`` before writing the export's record (see
:class:`node.Addresses`). Initiators are admitted by MAC address: an
export's hosts are its MAC Mask List, and no other initiator gets any
answer about it.

:class:`AoEExporter` bridges the node's worker threads to the
:class:`storage_engine.aoe.server.AoETarget` on the service's event loop,
like :mod:`.nbd_exporter` does for NBD: when ``publish`` returns the slot
answers (and has been announced to the hosts it admits), when
``withdraw`` returns it is silent.
"""

import asyncio

from storage_engine import names
from storage_engine.service import loopcall
from storage_engine.service import node as node_mod

#: slots of a shelf; 255 (0xff) is the broadcast slot
SLOTS = range(255)


class AoEExporter:
    protocol = 'aoe'

    def __init__(self, loop: asyncio.AbstractEventLoop, target,
                 interface: str, shelf: int):
        """``target`` is the started AoETarget serving ``shelf`` on
        ``interface``.
        """
        self._loop = loop
        self.target = target
        self.interface = interface
        self.shelf = shelf
        self.addresses = node_mod.Addresses(
            prefix='aoe/slots/%d' % shelf, numbers=SLOTS, field='slot',
            name='AoE slots of shelf %d' % shelf)

    @staticmethod
    def check_hosts(hosts: list) -> list[str]:
        out = []
        for host in hosts:
            mac = names.check_mac(host)
            # aa-bb-... and AA:BB:... are one initiator.
            if mac not in out:
                out.append(mac)
        return out

    def address(self, ident: str, number: int | None) -> dict:
        return {'shelf': self.shelf, 'slot': number}

    def publish(self, ident: str, rec: dict, backend,
                description: str) -> None:
        loopcall.call(self._loop, self.target.add, rec['slot'], backend,
                      list(rec['hosts']), rec['read_only'], description)

    def withdraw(self, ident: str, rec: dict) -> None:
        slot = rec['slot']

        def drop():
            if slot in self.target:
                self.target.remove(slot)
        loopcall.call(self._loop, drop)

    def connection(self, rec: dict) -> dict:
        return {'protocol': self.protocol, 'shelf': rec['shelf'],
                'slot': rec['slot'], 'mac': self.target.mac,
                'interface': self.interface,
                'sectors_per_frame': self.target.sectors_per_frame}

    def connections(self) -> int:
        # AoE has no connections: initiators send frames, the target
        # answers them.
        return 0

    def describe(self) -> dict:
        return {'interface': self.interface, 'shelf': self.shelf,
                'mac': self.target.mac}
