"""os-brick connectors that attach storage-engine exports on compute hosts.

os-brick finds a connector through hard-coded tables: the protocol name
(``driver_volume_type`` upper-cased) maps to a class path in the table of
the host's architecture, and ``os_brick.initiator`` names each protocol as
a constant. :func:`register` adds ours to both, and adds the connectors
that contribute host properties (AoE: ``aoe_macs``) to the list
``get_connector_properties`` asks. Every process that attaches our volumes
must call it once at start, before it asks os-brick for a connector or for
the host's properties: cinder-volume does so from our drivers'
``do_setup``; services that load no code of ours (cinder-backup,
nova-compute) run through ``storage-engine-with-connectors``
(os_brick_connectors/run.py), which calls it before the service's own
entry point. Calling it again, from anywhere, changes nothing.
"""

import threading

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# Protocol name (as os-brick's factory sees it: upper case) -> connector
# class path, imported by os-brick only when a connector is asked for.
CONNECTORS = {
    'NBD': 'os_brick_connectors.nbd.NBDConnector',
    'AOE': 'os_brick_connectors.aoe.AoEConnector',
}

# Connectors whose get_connector_properties adds something the drivers
# need (the NBD connector adds nothing: the host's IP is generic).
PROPERTY_CONNECTORS = (
    'os_brick_connectors.aoe.AoEConnector',
)

# Every architecture os-brick has a table for: our connectors are plain
# userspace code, usable on all of them.
_ARCHES = ('x86_64', 's390x', 'ppc64le')

_lock = threading.Lock()


def register() -> None:
    """Make os-brick's connector factory know our protocols.

    Idempotent and thread-safe. A protocol os-brick already maps to another
    class is taken over, with a warning: our drivers' ``driver_volume_type``
    values mean our connection properties.
    """
    # Imported here so that importing this package costs nothing.
    from os_brick import initiator
    from os_brick.initiator import connector

    with _lock:
        tables = {id(t): t for t in (connector.get_connector_mapping(arch)
                                     for arch in _ARCHES)}
        for protocol, path in CONNECTORS.items():
            if getattr(initiator, protocol, protocol) != protocol:
                raise RuntimeError('os_brick.initiator.%s is %r, not %r: '
                                   'this os-brick is not one we know'
                                   % (protocol, getattr(initiator, protocol),
                                      protocol))
            setattr(initiator, protocol, protocol)
            for table in tables.values():
                current = table.get(protocol)
                if current == path:
                    continue
                if current is not None:
                    LOG.warning('os-brick protocol %s was mapped to %s; '
                                'using %s instead', protocol, current, path)
                table[protocol] = path
        for path in PROPERTY_CONNECTORS:
            if path not in connector.unix_connector_list:
                connector.unix_connector_list.append(path)
