"""Exports and who may see them.

Every export has an :class:`AccessList`; a client the list does not admit
learns nothing of the export: it is missing from NBD_OPT_LIST, and INFO, GO
and EXPORT_NAME answer exactly as for a name that does not exist.
"""

import dataclasses
import ipaddress
import typing

IPNetwork = typing.Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclasses.dataclass(frozen=True)
class Peer:
    """Who is connecting: an address (None on a Unix socket) and, once
    TLS is up, the names its client certificate proves.
    """

    address: typing.Optional[ipaddress._BaseAddress]
    tls_identities: frozenset = frozenset()
    tls: bool = False


@dataclasses.dataclass(frozen=True)
class AccessList:
    """Who may use an export.

    ``hosts``: client addresses or networks; ``tls_identities``: names a
    client certificate must prove (its subject CN or a subjectAltName), which
    implies TLS; ``local``: clients on the server's Unix socket. Every given
    condition must hold, and an access list that names nobody admits nobody.
    """

    hosts: typing.Tuple[IPNetwork, ...] = ()
    tls_identities: frozenset = frozenset()
    local: bool = False

    @classmethod
    def build(cls, hosts=(), tls_identities=(), local=False) -> 'AccessList':
        nets = tuple(ipaddress.ip_network(h, strict=False) for h in hosts)
        return cls(nets, frozenset(tls_identities), bool(local))

    def admits(self, peer: Peer) -> bool:
        if self.tls_identities and not (peer.tls and
                                        peer.tls_identities &
                                        self.tls_identities):
            return False
        if peer.address is None:
            return self.local
        if self.hosts:
            addr = peer.address
            if getattr(addr, 'ipv4_mapped', None) is not None:
                addr = addr.ipv4_mapped
            return any(addr in net for net in self.hosts)
        # No address condition: only a proven TLS identity can admit.
        return bool(self.tls_identities)

    def describe(self) -> dict:
        return {'hosts': [str(h) for h in self.hosts],
                'tls_identities': sorted(self.tls_identities),
                'local': self.local}


@dataclasses.dataclass
class Export:
    """A volume (or snapshot) served under ``name``.

    ``backend`` has the volume handle's interface: ``size``, ``read_only``,
    ``read_extents``, ``write``, ``flush``, ``write_zeroes``,
    ``allocation``, ``can_fast_zero``.
    """

    name: str
    backend: typing.Any
    access: AccessList
    description: str = ''
    read_only: bool = False

    @property
    def writable(self) -> bool:
        return not (self.read_only or self.backend.read_only)


class ExportTable:
    """The exports of one server, by name."""

    def __init__(self):
        self._exports: typing.Dict[str, Export] = {}

    def add(self, export: Export) -> None:
        if export.name in self._exports:
            raise ValueError('export %r already exists' % export.name)
        self._exports[export.name] = export

    def remove(self, name: str) -> Export:
        return self._exports.pop(name)

    def get(self, name: str) -> typing.Optional[Export]:
        return self._exports.get(name)

    def find(self, name: str, peer: Peer) -> typing.Optional[Export]:
        """The export ``peer`` may use under ``name``, else None."""
        export = self._exports.get(name)
        if export is None or not export.access.admits(peer):
            return None
        return export

    def visible(self, peer: Peer) -> typing.List[Export]:
        return [e for e in self._exports.values() if e.access.admits(peer)]

    def __len__(self):
        return len(self._exports)

    def __contains__(self, name):
        return name in self._exports
