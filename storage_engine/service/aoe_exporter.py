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
import re

from storage_engine import errors
from storage_engine.service import loopcall
from storage_engine.service import node as node_mod

#: slots of a shelf; 255 (0xff) is the broadcast slot
SLOTS = range(255)

_MAC = re.compile(r'^[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}$',
                  re.IGNORECASE)


def check_mac(host) -> str:
    """``host`` as a unicast MAC address in lower-case colon form.

    Any case and ``:`` or ``-`` separators are accepted; group (multicast,
    broadcast) and all-zero addresses are refused, since they name no one
    initiator.
    """
    if not isinstance(host, str) or not _MAC.match(host):
        raise errors.InvalidArgument(
            'host %r is not a MAC address: AoE exports admit initiators '
            'by MAC address, like 52:54:00:12:34:56' % (host,), host=host)
    mac = host.lower().replace('-', ':')
    octets = bytes.fromhex(mac.replace(':', ''))
    if octets == bytes(6):
        raise errors.InvalidArgument(
            'host %r is the all-zero MAC address, which names no '
            'initiator' % (host,), host=host)
    if octets == b'\xff' * 6:
        raise errors.InvalidArgument(
            'host %r is the broadcast MAC address; give each initiator\'s '
            'own MAC address' % (host,), host=host)
    if octets[0] & 1:
        raise errors.InvalidArgument(
            'host %r is a multicast MAC address; give each initiator\'s '
            'own (unicast) MAC address' % (host,), host=host)
    return mac


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
            mac = check_mac(host)
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
