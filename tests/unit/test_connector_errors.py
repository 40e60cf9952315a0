"""The connectors' errors are one family: a caller catches every deliberate
connector error, or one kind of them, whatever the protocol, and each
still names its export as its protocol does.
"""

import pytest

from os_brick import exception

from os_brick_connectors import aoe
from os_brick_connectors import errors
from os_brick_connectors import nbd


@pytest.mark.parametrize('cls, kind', [
    (nbd.NBDConnectorError, errors.ConnectorError),
    (nbd.NBDExportUnavailable, errors.ExportUnavailable),
    (nbd.NBDDeviceBusy, errors.DeviceBusy),
    (aoe.AoEConnectorError, errors.ConnectorError),
    (aoe.AoEExportUnavailable, errors.ExportUnavailable),
    (aoe.AoEDeviceBusy, errors.DeviceBusy),
])
def test_every_connector_error_is_of_the_family_and_of_its_kind(cls, kind):
    assert issubclass(cls, kind)
    assert issubclass(cls, errors.ConnectorError)
    assert issubclass(cls, exception.BrickException)


def test_each_protocols_errors_stay_under_its_own_base():
    assert issubclass(nbd.NBDDeviceBusy, nbd.NBDConnectorError)
    assert issubclass(nbd.NBDExportUnavailable, nbd.NBDConnectorError)
    assert issubclass(aoe.AoEDeviceBusy, aoe.AoEConnectorError)
    assert issubclass(aoe.AoEExportUnavailable, aoe.AoEConnectorError)
    assert not issubclass(aoe.AoEDeviceBusy, nbd.NBDConnectorError)
    assert not issubclass(nbd.NBDDeviceBusy, aoe.AoEConnectorError)
