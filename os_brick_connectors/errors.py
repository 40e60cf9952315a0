"""The errors our connectors raise on purpose: one family.

Every one is a :class:`ConnectorError` (an os-brick ``BrickException``, so
os-brick's callers handle it as they handle os-brick's own). Two kinds say
something a caller may act on, whatever the protocol:
:class:`ExportUnavailable` (the server does not serve the export to this
host, or cannot be reached) and :class:`DeviceBusy` (a device is in use, so
it was not detached or refreshed). Each connector has its own three
classes under those (``NBDConnectorError``, ``NBDExportUnavailable``,
``NBDDeviceBusy``; the same for AoE), whose messages name the export as
that protocol does; nbd.py and aoe.py re-export them.
"""

from os_brick import exception


class ConnectorError(exception.BrickException):
    """Base class of every error our connectors raise on purpose."""

    message = '%(reason)s'


class ExportUnavailable(ConnectorError):
    """The export is not served to this host, or cannot be reached."""

    message = '%(target)s is not available to this host: %(reason)s'


class DeviceBusy(ConnectorError):
    """A device of the export is in use: it was left as it was."""

    message = '%(device)s (%(target)s) is in use: %(reason)s'


# -- NBD ----------------------------------------------------------------------

class NBDConnectorError(ConnectorError):
    pass


class NBDExportUnavailable(NBDConnectorError, ExportUnavailable):
    message = ('NBD export %(export)s at %(address)s is not available to '
               'this host: %(reason)s')


class NBDDeviceBusy(NBDConnectorError, DeviceBusy):
    message = '%(device)s (NBD export %(export)s) is in use: %(reason)s'


# -- AoE ----------------------------------------------------------------------

class AoEConnectorError(ConnectorError):
    pass


class AoEExportUnavailable(AoEConnectorError, ExportUnavailable):
    message = ('AoE target %(target)s is not available to this host: '
               '%(reason)s')


class AoEDeviceBusy(AoEConnectorError, DeviceBusy):
    message = '%(device)s (AoE target %(target)s) is in use: %(reason)s'
