"""oslo.config options of the os-brick connectors, for oslo-config-generator.

They go in the configuration of the service that attaches volumes
(nova.conf on a compute host; cinder.conf of cinder-volume and
cinder-backup, which attach for their copies): ``[aoe_connector]``, the
host's AoE interfaces and how AoE volumes attach. Each option is declared
next to the code that reads it (aoe.py); this lists them.
"""

from os_brick_connectors import aoe


def list_opts():
    return [(aoe.GROUP, aoe.aoe_connector_opts)]
