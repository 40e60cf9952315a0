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

Code shared by the connectors (the nbdfuse and loop-device attachment)
raises through a :class:`Subject`: the export it works on, with its
connector's :class:`Family`.
"""

import dataclasses
import typing

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


# -- raising them from shared code --------------------------------------------

@dataclasses.dataclass(frozen=True)
class Family:
    """One connector's three error classes."""

    error: typing.Type[ConnectorError]
    unavailable: typing.Type[ExportUnavailable]
    busy: typing.Type[DeviceBusy]


NBD = Family(NBDConnectorError, NBDExportUnavailable, NBDDeviceBusy)
AOE = Family(AoEConnectorError, AoEExportUnavailable, AoEDeviceBusy)


@dataclasses.dataclass(frozen=True)
class Subject:
    """An export as its connector's errors name it.

    ``label`` names it in reasons ("NBD export x at 10.0.0.1:10809");
    ``fields`` are what its family's messages take besides ``reason`` and
    ``device`` (NBD: ``export``, ``address``; AoE: ``target``).
    """

    family: Family
    label: str
    fields: typing.Mapping[str, str]

    def error(self, reason: str) -> ConnectorError:
        return self.family.error(reason=reason)

    def unavailable(self, reason: str) -> ExportUnavailable:
        return self.family.unavailable(reason=reason, **self.fields)

    def busy(self, device: str, reason: str) -> DeviceBusy:
        return self.family.busy(device=device, reason=reason, **self.fields)

    def __str__(self):
        return self.label
