"""oslo.config options of the Cinder drivers, for oslo-config-generator.

They go in a backend section of cinder.conf (or [backend_defaults]).
"""

from cinder_drivers import base


def list_opts():
    return [('backend_defaults', base.engine_opts)]
