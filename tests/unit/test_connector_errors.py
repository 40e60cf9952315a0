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


def test_shared_code_raises_each_protocols_errors_in_its_words():
    props = nbd.NBDConnProps.from_dict(
        {'host': '10.0.0.1', 'port': 10809, 'export_name': 'vol-1'})
    busy = props.subject.busy('/dev/loop3', 'mounted on /mnt')
    assert isinstance(busy, nbd.NBDDeviceBusy)
    assert str(busy) == \
        '/dev/loop3 (NBD export vol-1) is in use: mounted on /mnt'
    gone = props.subject.unavailable('nbdfuse exited: refused')
    assert isinstance(gone, nbd.NBDExportUnavailable)
    assert str(gone) == ('NBD export vol-1 at 10.0.0.1:10809 is not '
                         'available to this host: nbdfuse exited: refused')

    props = aoe.AoEConnProps.from_dict(
        {'target_shelf': 1, 'target_lun': 2,
         'target_mac': '02:00:00:00:00:07'})
    busy = props.subject.busy('/dev/loop4', 'used as swap')
    assert isinstance(busy, aoe.AoEDeviceBusy)
    assert str(busy) == ('/dev/loop4 (AoE target e1.2 (02:00:00:00:00:07)) '
                         'is in use: used as swap')
    failed = props.subject.error('nbdfuse 7 (/run/x) does not exit')
    assert type(failed) is aoe.AoEConnectorError
    assert str(failed) == 'nbdfuse 7 (/run/x) does not exit'
