"""The AoE Cinder driver's part of attaching: whom an export admits, what it
is called, and what the connector is told.

The storage node is replaced by a recorder of the management API calls the
driver makes (the driver against a real node is tests/functional/
test_aoe_driver.py). Cinder is imported inside the fixtures, not at
collection: importing it early disturbs the in-process HTTP servers of
other unit tests (see tests/functional/test_lvm_driver.py).
"""

import types
import uuid

import pytest

from storage_engine import errors

MAC_A = '52:54:00:aa:00:01'
MAC_B = '52:54:00:aa:00:02'


class FakeEngine:
    """The calls of storage_engine.client.Client the attach path makes."""

    def __init__(self):
        self.exports_made = {}
        self.calls = []

    def create_export(self, volume_id, hosts, read_only=False,
                      protocol='nbd', id=None):
        self.calls.append(('create_export', volume_id, list(hosts),
                           read_only, protocol, id))
        exp = self.exports_made.setdefault(id, {
            'id': id, 'volume_id': volume_id, 'hosts': list(hosts),
            'read_only': read_only, 'protocol': protocol,
            'connection': {'protocol': 'aoe', 'shelf': 7,
                           'slot': len(self.exports_made),
                           'mac': '02:00:00:00:00:07', 'interface': 'aoe0a',
                           'sectors_per_frame': 2}})
        return exp

    def delete_export(self, ident):
        self.calls.append(('delete_export', ident))
        if self.exports_made.pop(ident, None) is None:
            raise errors.NotFound('no export %s' % ident)

    def exports(self, volume_id=None):
        return [e for e in self.exports_made.values()
                if volume_id in (None, e['volume_id'])]


@pytest.fixture
def driver_class():
    from cinder_drivers import aoe
    return aoe.EngineAoEDriver


@pytest.fixture
def make_driver(driver_class):
    from cinder.volume import configuration
    from cinder.volume import driver as cinder_driver
    from oslo_config import cfg

    groups = []

    def make(**overrides):
        group = 'aoe-unit-%s' % uuid.uuid4().hex[:8]
        groups.append((group, overrides))
        config = configuration.Configuration(cinder_driver.volume_opts,
                                             config_group=group)
        drv = driver_class(configuration=config, host='unit@%s' % group)
        for key, value in overrides.items():
            cfg.CONF.set_override(key, value, group=group)
        drv._client = FakeEngine()
        return drv

    yield make
    for group, overrides in groups:
        for key in overrides:
            cfg.CONF.clear_override(key, group=group)


def _volume(attachments=(), readonly=False):
    admin = {'readonly': 'True'} if readonly else {}
    return types.SimpleNamespace(
        id=str(uuid.uuid4()), provider_id=None, name='volume-x',
        admin_metadata=admin, obj_attr_is_set=lambda name: True,
        volume_attachment=list(attachments))


def _attachment(connector, status='attached'):
    return types.SimpleNamespace(connector=connector, attach_status=status)


def test_the_export_admits_the_connectors_macs_and_says_how_to_reach_it(
        make_driver):
    drv = make_driver()
    vol = _volume()
    connector = {'ip': '192.0.2.1', 'host': 'compute-1',
                 'aoe_macs': ['52-54-00-AA-00-02', MAC_A]}
    info = drv.initialize_connection(vol, connector)
    [call] = drv.client.calls
    assert call[:5] == ('create_export', vol.id, [MAC_A, MAC_B], False,
                        'aoe')
    exp = drv.client.exports_made[call[5]]
    assert info == {
        'driver_volume_type': 'aoe',
        'data': {'target_shelf': 7, 'target_lun': 0,
                 'target_mac': '02:00:00:00:00:07',
                 'target_interface': 'aoe0a', 'volume_id': vol.id,
                 'export_id': exp['id'], 'access_mode': 'rw'}}


def test_one_host_one_export_whatever_the_order_or_spelling_of_its_macs(
        make_driver):
    drv = make_driver()
    vol = _volume()
    first = drv.initialize_connection(vol, {'aoe_macs': [MAC_A, MAC_B]})
    again = drv.initialize_connection(
        vol, {'aoe_macs': [MAC_B.upper(), MAC_A.replace(':', '-')],
              'host': 'renamed'})
    assert again == first
    assert len(drv.client.exports_made) == 1
    other = drv.initialize_connection(vol, {'aoe_macs': [MAC_A]})
    assert other['data']['export_id'] != first['data']['export_id']
    # Another volume to the same host: another export.
    assert drv.initialize_connection(_volume(), {'aoe_macs': [MAC_A]})[
        'data']['export_id'] != other['data']['export_id']


def test_a_read_only_attachment_gets_a_read_only_export(make_driver):
    drv = make_driver()
    info = drv.initialize_connection(_volume(readonly=True),
                                     {'aoe_macs': [MAC_A]})
    assert drv.client.calls[0][3] is True
    assert info['data']['access_mode'] == 'ro'


@pytest.mark.parametrize('connector, words', [
    ({'ip': '192.0.2.1', 'host': 'h'}, 'aoe_macs'),
    ({'aoe_macs': []}, 'aoe_macs'),
    ({'aoe_macs': MAC_A}, 'aoe_macs'),
    ({'aoe_macs': ['not-a-mac']}, "'not-a-mac' is not a MAC address"),
    (None, 'aoe_macs'),
], ids=['no aoe_macs', 'empty', 'a string', 'not a MAC', 'no connector'])
def test_a_connector_without_usable_macs_is_refused_and_nothing_is_made(
        make_driver, connector, words):
    from cinder import exception

    drv = make_driver()
    with pytest.raises(exception.InvalidConnectorException) as err:
        drv.initialize_connection(_volume(), connector)
    assert words in str(err.value)
    assert drv.client.calls == []


def test_the_export_stays_while_another_attachment_of_the_host_uses_it(
        make_driver):
    drv = make_driver()
    host = {'aoe_macs': [MAC_A, MAC_B], 'host': 'compute-1'}
    same_host = {'aoe_macs': [MAC_B, MAC_A], 'host': 'compute-1'}
    vol = _volume()
    info = drv.initialize_connection(vol, host)
    vol.volume_attachment = [_attachment(host), _attachment(same_host),
                             # Another host, and an NBD-era connector:
                             # neither shares this host's export.
                             _attachment({'aoe_macs': [MAC_A]}),
                             _attachment({'ip': '192.0.2.9'})]
    assert drv.terminate_connection(vol, host) is True
    assert info['data']['export_id'] in drv.client.exports_made
    vol.volume_attachment = vol.volume_attachment[1:]
    assert drv.terminate_connection(vol, host) is False
    assert drv.client.exports_made == {}
    # Again (a retried detach): nothing left, no error.
    assert drv.terminate_connection(vol, host) is False


def test_a_force_detach_removes_every_hosts_export(make_driver):
    drv = make_driver()
    vol = _volume()
    drv.initialize_connection(vol, {'aoe_macs': [MAC_A]})
    drv.initialize_connection(vol, {'aoe_macs': [MAC_B]})
    assert len(drv.client.exports_made) == 2
    assert drv.terminate_connection(vol, None) is False
    assert drv.client.exports_made == {}


def test_stats_say_aoe(make_driver, monkeypatch):
    drv = make_driver()
    monkeypatch.setattr(drv.client, 'pool', lambda name: {
        'total': 1 << 30, 'free': 1 << 29, 'provisioned': 0, 'allocated': 0,
        'volumes': 0}, raising=False)
    stats = drv.get_volume_stats(refresh=True)
    assert stats['storage_protocol'] == 'AoE'
    assert stats['pools'][0]['multiattach'] is True


@pytest.mark.parametrize('value, ok', [(None, True), ('aoe', True),
                                       ('nbd', False)])
def test_the_export_protocol_option_must_be_the_familys(make_driver,
                                                        monkeypatch, value,
                                                        ok):
    from cinder import exception

    overrides = {'engine_api_token': 't'}
    if value:
        overrides['engine_export_protocol'] = value
    drv = make_driver(**overrides)
    monkeypatch.setattr(drv.client, 'pool', lambda name: {}, raising=False)
    if ok:
        drv.check_for_setup_error()
    else:
        with pytest.raises(exception.InvalidConfigurationValue) as err:
            drv.check_for_setup_error()
        assert 'engine_export_protocol is nbd, but EngineAoEDriver ' \
            'exports over aoe' in str(err.value)


def test_the_nbd_family_still_exports_to_the_connectors_ip(make_driver,
                                                           monkeypatch):
    """The base's hooks, as the LVM-style driver uses them."""
    from cinder import exception
    from cinder_drivers import lvm

    drv = make_driver()
    monkeypatch.setattr(drv, '_export_hosts',
                        lvm.EngineLVMDriver._export_hosts.__get__(drv))
    monkeypatch.setattr(drv, '_connection_data',
                        lvm.EngineLVMDriver._connection_data.__get__(drv))
    vol = _volume()
    drv.initialize_connection(vol, {'ip': '192.0.2.1',
                                    'aoe_macs': [MAC_A]})
    call = drv.client.calls[0]
    assert call[2] == ['192.0.2.1']
    # The id is the one the NBD driver always gave (volume:ip).
    from cinder_drivers import base
    assert call[5] == str(uuid.uuid5(base.EXPORT_NAMESPACE,
                                     '%s:192.0.2.1' % vol.id))
    with pytest.raises(exception.InvalidConnectorException):
        drv.initialize_connection(vol, {'host': 'x'})
