"""oslo.config options of the Cinder drivers, for oslo-config-generator.

The drivers' options go in a backend section of cinder.conf (or
[backend_defaults]). The os-brick connectors' host options
(os_brick_connectors/opts.py: [aoe_connector]) are listed too:
cinder-volume attaches volumes for its own copies, so its cinder.conf
(like nova.conf on a compute host) may need them.
"""

from cinder_drivers import base
from os_brick_connectors import opts as connector_opts


def list_opts():
    return [('backend_defaults', base.engine_opts)] + \
        connector_opts.list_opts()
