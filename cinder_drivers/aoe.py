"""The AoE family: LVM-style volumes exported with ATA over Ethernet.

``volume_driver = cinder_drivers.aoe.EngineAoEDriver``. Everything but the
export is the shared base (thin or thick volumes, copy-on-write snapshots
and clones, revert, online extend, retype, manage, multiattach). The
storage node serves its exports as AoE targets ``e<shelf>.<slot>``: one
shelf per node, one slot per export, on the node's ``[aoe] interface``.

An export admits the MAC addresses in the connector's ``aoe_macs`` (what
our os-brick AoE connector reports for the host's AoE interfaces): the
target answers no other initiator at all, and the export is known by that
set of addresses, so one host gets one export per volume whatever the
number of its attachments.
"""

from cinder import exception
from cinder import interface

from cinder_drivers import base
from storage_engine import names


@interface.volumedriver
class EngineAoEDriver(base.EngineDriverBase):
    """LVM-style volumes on a storage-engine node, exported over AoE.

    Version history:

    .. code-block:: none

        1.0.0 - First version: the LVM-style family's volumes, snapshots
                and clones exported as AoE targets admitting only the
                MAC addresses of the connector's AoE interfaces.
        1.1.0 - As the LVM-style family's 1.1.0: snapshot manage,
                manageable lists through Cinder, options checked per
                backend, a node that starts later is not fatal.
    """

    VERSION = '1.1.0'
    protocol = 'aoe'
    storage_protocol = 'AoE'

    def _export_hosts(self, connector) -> list:
        macs = (connector or {}).get('aoe_macs')
        if not macs or isinstance(macs, str) or \
                not isinstance(macs, (list, tuple)):
            raise exception.InvalidConnectorException(missing='aoe_macs')
        normal = [names.normalise_mac(m) for m in macs]
        if None in normal:
            bad = macs[normal.index(None)]
            raise exception.InvalidConnectorException(
                missing='aoe_macs (%r is not a MAC address)' % (bad,))
        return sorted(set(normal))

    def _connection_data(self, exp: dict) -> dict:
        conn = exp['connection']
        return {'target_shelf': conn['shelf'],
                'target_lun': conn['slot'],
                'target_mac': conn['mac'],
                'target_interface': conn['interface']}
