"""AoE addressing of the storage node, in process: shelf and slot claims
in the metadata store, through every step that can be interrupted.

The node (storage_engine.service.node) runs here on a real volume group
and a real SQLite metadata store, with its real NBD and AoE exporters;
only the AoE target is a stand-in that records what it was asked to serve
(the real one needs a raw socket: tests/functional/test_service_aoe.py).
A "crash" leaves the store as a killed process would, and a restart is a
new Node on the same store and group.
"""

import asyncio
import threading
import uuid

import pytest

from storage_engine import errors
from storage_engine import metastore
from storage_engine.nbd import exports as nbd_exports
from storage_engine.nbd import server as nbd_server
from storage_engine.service import aoe_exporter
from storage_engine.service import nbd_exporter
from storage_engine.service import node as node_mod
from storage_engine.service import serve
from storage_engine import units
from storage_engine.volstore import group as group_mod

MAC1 = '52:54:00:00:00:01'
MAC2 = '52:54:00:00:00:02'
SHELF = 7
TARGET_MAC = '02:00:00:00:07:00'


class FakeTarget:
    """What the node asked the AoE target to serve, slot by slot."""

    def __init__(self, shelf):
        self.shelf = shelf
        self.mac = TARGET_MAC
        self.sectors_per_frame = 2
        self.slots = {}

    def add(self, slot, backend, macs, read_only, description=''):
        assert slot not in self.slots, 'slot %d served twice' % slot
        self.slots[slot] = {'macs': list(macs), 'read_only': read_only,
                            'size': backend.size}

    def remove(self, slot):
        del self.slots[slot]

    def __contains__(self, slot):
        return slot in self.slots


@pytest.fixture
def loop():
    """An event loop in a thread of its own, as the service's is."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


class Harness:
    """Nodes started and restarted on one store and one volume group."""

    def __init__(self, tmp_path, loop):
        self.tmp_path = tmp_path
        self.loop = loop
        self.store = metastore.open_store(
            'sqlite://%s' % (tmp_path / 'metadata.db'))
        self.pv = str(tmp_path / 'default.pv0')
        group_mod.VolumeGroup.create([(self.pv, units.Gi)],
                                     name='default').close()
        self.node = None
        self.target = None
        self.nbd = None

    def start(self, name='n1', aoe=True, shelf=None):
        """Start node ``name`` (the previous one must be closed)."""
        vg = group_mod.VolumeGroup.open(self.pv)
        self.nbd = nbd_server.NBDServer(nbd_exports.ExportTable())
        exporters = [nbd_exporter.NBDExporter(self.loop, self.nbd,
                                              '127.0.0.1', 10809)]
        self.target = None
        if aoe:
            shelf = serve.claim_aoe_shelf(self.store, name, shelf)
            self.target = FakeTarget(shelf)
            exporters.append(aoe_exporter.AoEExporter(
                self.loop, self.target, 'veth0', shelf))
        self.node = node_mod.Node(name, self.store, {'default': vg},
                                  'default', True, exporters)
        try:
            self.node.start()
        except BaseException:
            self.node.close()
            raise
        return self.node

    def restart(self, **kwargs):
        self.node.close()
        return self.start(**kwargs)

    def close(self):
        if self.node is not None:
            self.node.close()
        self.store.close()

    def keys(self, prefix=''):
        return {k: v for k, (v, _rev) in self.store.list(prefix).items()}

    def volume(self, name='vol'):
        return self.node.create_volume(name, 16 * units.Mi)[0]['id']


@pytest.fixture
def h(tmp_path, loop):
    harness = Harness(tmp_path, loop)
    yield harness
    harness.close()


def _aoe_export(node, volume_id, hosts=(MAC1,), ident=None):
    view, created = node.create_export(volume_id, list(hosts),
                                       protocol='aoe', ident=ident)
    assert created
    return view


def test_an_aoe_export_claims_a_slot_and_its_record_holds_the_address(h):
    node = h.start(shelf=SHELF)
    vol = h.volume()
    view = _aoe_export(node, vol, hosts=['52-54-00-00-00-0A', MAC1])
    assert view['protocol'] == 'aoe'
    # Any case, either separator: stored and served lower case with ':'.
    assert view['hosts'] == ['52:54:00:00:00:0a', MAC1]
    assert view['connection'] == {
        'protocol': 'aoe', 'shelf': SHELF, 'slot': 0, 'mac': TARGET_MAC,
        'interface': 'veth0', 'sectors_per_frame': 2}
    assert h.keys('aoe') == {
        'aoe/shelves/%d' % SHELF: {'node': 'n1'},
        'aoe/slots/%d/0' % SHELF: {'node': 'n1', 'export': view['id']}}
    rec = h.keys('exports')['exports/' + view['id']]
    assert (rec['shelf'], rec['slot']) == (SHELF, 0)
    assert h.target.slots == {0: {'macs': view['hosts'],
                                  'read_only': False, 'size': 16 * units.Mi}}
    assert node.info()['aoe'] == {'interface': 'veth0', 'shelf': SHELF,
                                  'mac': TARGET_MAC}


def test_slots_are_handed_out_once_and_a_freed_one_is_reused(h):
    node = h.start()
    vol = h.volume()
    views = [_aoe_export(node, vol) for _ in range(3)]
    assert [v['connection']['slot'] for v in views] == [0, 1, 2]
    node.delete_export(views[1]['id'])
    assert sorted(h.target.slots) == [0, 2]
    assert sorted(h.keys('aoe/slots/0')) == ['aoe/slots/0/0',
                                             'aoe/slots/0/2']
    assert _aoe_export(node, vol)['connection']['slot'] == 1


def test_a_repeated_create_returns_the_same_address_and_claims_nothing(h):
    node = h.start()
    vol = h.volume()
    ident = str(uuid.uuid4())
    first = _aoe_export(node, vol, ident=ident)
    before = h.keys()
    again, created = node.create_export(vol, [MAC1.upper()],
                                        protocol='aoe', ident=ident)
    assert not created
    assert again == first
    assert h.keys() == before


def test_an_id_reused_for_another_export_is_refused_and_claims_nothing(h):
    node = h.start()
    vol = h.volume()
    first = _aoe_export(node, vol)
    before = h.keys()
    with pytest.raises(errors.AlreadyExists, match=first['id']):
        node.create_export(vol, [MAC2], protocol='aoe', ident=first['id'])
    assert h.keys() == before


def test_a_publish_that_fails_gives_its_slot_back(h, monkeypatch):
    node = h.start()
    vol = h.volume()
    before = h.keys()

    def refuse(*args):
        raise errors.Unavailable('the target refused')
    monkeypatch.setattr(h.target, 'add', refuse)
    with pytest.raises(errors.Unavailable):
        node.create_export(vol, [MAC1], protocol='aoe')
    assert h.keys() == before


@pytest.mark.parametrize('host, words', [
    ('52:54:00:00:00', ['52:54:00:00:00', 'not a MAC address']),
    ('52:54:00:00:00:0g', ['52:54:00:00:00:0g', 'not a MAC address']),
    ('52:54-00:00:00:01', ['52:54-00:00:00:01', 'not a MAC address']),
    ('10.0.0.1', ['10.0.0.1', 'not a MAC address']),
    ('00:00:00:00:00:00', ['00:00:00:00:00:00', 'all-zero']),
    ('FF:FF:FF:FF:FF:FF', ['FF:FF:FF:FF:FF:FF', 'broadcast']),
    ('01:00:5e:00:00:01', ['01:00:5e:00:00:01', 'multicast']),
    ('33-33-00-00-00-01', ['33-33-00-00-00-01', 'multicast']),
])
def test_a_bad_mac_is_refused_by_name_and_changes_nothing(h, host, words):
    node = h.start()
    vol = h.volume()
    before = h.keys()
    with pytest.raises(errors.InvalidArgument) as info:
        node.create_export(vol, [MAC1, host], protocol='aoe')
    for word in words:
        assert word in info.value.message
    assert info.value.details['host'] == host
    assert h.keys() == before
    assert h.target.slots == {}


def test_every_slot_taken_is_no_space_and_changes_nothing(h):
    node = h.start(shelf=SHELF)
    vol = h.volume()
    prefix = 'aoe/slots/%d' % SHELF
    for slot in range(254):
        h.store.allocate(prefix, range(255),
                         {'node': 'n1', 'export': str(uuid.uuid4())})
    last = _aoe_export(node, vol)
    assert last['connection']['slot'] == 254
    before = h.keys()
    with pytest.raises(errors.NoSpace) as info:
        node.create_export(vol, [MAC1], protocol='aoe')
    assert info.value.code == 'no_space'
    assert 'all 255 AoE slots of shelf %d' % SHELF in info.value.message
    assert 'remove an export' in info.value.message
    assert h.keys() == before


def test_a_slot_claimed_by_a_create_that_crashed_is_given_back_at_start(h):
    node = h.start()
    vol = h.volume()
    kept = _aoe_export(node, vol)
    # A create killed between its claim and its record (and a delete
    # killed between the record and the release) leave this behind:
    lost = str(uuid.uuid4())
    h.store.allocate('aoe/slots/0', range(255),
                     {'node': 'n1', 'export': lost})
    assert sorted(h.keys('aoe/slots')) == ['aoe/slots/0/0', 'aoe/slots/0/1']
    node = h.restart()
    assert h.keys('aoe/slots') == {
        'aoe/slots/0/0': {'node': 'n1', 'export': kept['id']}}
    # The slot is free again for the next export.
    assert _aoe_export(node, vol)['connection']['slot'] == 1


def test_a_create_interrupted_after_its_claim_leaves_nothing_after_start(
        h, monkeypatch):
    node = h.start()
    vol = h.volume()
    before = h.keys()
    real_create = h.store.create

    class Killed(BaseException):
        """The process died here: no undo runs."""

    def die_on_export_record(key, value):
        if key.startswith('exports/'):
            raise Killed()
        return real_create(key, value)

    # A killed process runs no undo: the exception stands for the kill
    # and the undo is switched off.
    monkeypatch.setattr(h.store, 'create', die_on_export_record)
    monkeypatch.setattr(node, '_release_number', lambda *a: None)
    with pytest.raises(Killed):
        node.create_export(vol, [MAC1], protocol='aoe')
    monkeypatch.undo()
    assert len(h.keys('aoe/slots')) == 1        # the orphan
    h.restart()
    assert h.keys() == before


def test_a_restart_keeps_every_address_and_serves_it_again(h):
    node = h.start()
    vol = h.volume()
    snap = node.create_snapshot(vol, 'snap')[0]['id']
    views = [_aoe_export(node, vol, hosts=[MAC1]),
             _aoe_export(node, snap, hosts=[MAC2]),
             node.create_export(vol, ['127.0.0.1'])[0]]
    node.delete_export(views[0]['id'])
    listed = node.list_exports()
    served = dict(h.target.slots)
    node = h.restart()
    assert node.list_exports() == listed
    assert h.target.slots == served
    assert served[1]['read_only'] is True
    assert node.export(views[1]['id'])['connection']['slot'] == 1
    assert views[2]['id'] in h.nbd.exports


def test_a_restarted_node_keeps_its_shelf_when_none_is_configured(h):
    h.store.create('aoe/shelves/0', {'node': 'other'})
    h.start()
    assert h.target.shelf == 1
    h.restart()
    assert h.target.shelf == 1
    assert h.keys('aoe/shelves') == {'aoe/shelves/0': {'node': 'other'},
                                     'aoe/shelves/1': {'node': 'n1'}}


def test_a_shelf_held_by_another_node_is_refused_with_its_holder(h):
    h.store.create('aoe/shelves/%d' % SHELF, {'node': 'other'})
    with pytest.raises(errors.AlreadyExists) as info:
        serve.claim_aoe_shelf(h.store, 'n1', SHELF)
    message = info.value.message
    for words in ('shelf %d' % SHELF, 'held by node other', 'n1'):
        assert words in message
    assert h.keys('aoe') == {'aoe/shelves/%d' % SHELF: {'node': 'other'}}


def test_a_new_shelf_is_refused_while_exports_are_on_the_old_one(h):
    node = h.start(shelf=3)
    export = _aoe_export(node, h.volume())
    node.close()
    h.node = None
    before = h.keys()
    with pytest.raises(errors.InvalidArgument) as info:
        h.start(shelf=4)
    for words in ('shelf 3', export['id'], 'shelf = 3'):
        assert words in info.value.message
    assert h.keys() == before


def test_a_node_moving_to_another_shelf_gives_the_old_one_back(h):
    node = h.start(shelf=3)
    export = _aoe_export(node, h.volume())
    node.delete_export(export['id'])
    h.restart(shelf=4)
    assert h.keys('aoe') == {'aoe/shelves/4': {'node': 'n1'}}


def test_aoe_exports_are_refused_by_a_node_without_aoe(h):
    node = h.start(aoe=False)
    vol = h.volume()
    before = h.keys()
    with pytest.raises(errors.InvalidArgument,
                       match="protocol 'aoe' is not served by node n1"):
        node.create_export(vol, [MAC1], protocol='aoe')
    assert h.keys() == before
    assert node.info()['aoe'] is None


def test_a_node_with_aoe_exports_does_not_start_without_aoe(h):
    node = h.start()
    export = _aoe_export(node, h.volume())
    node.close()
    h.node = None
    with pytest.raises(errors.InvalidArgument) as info:
        h.start(aoe=False)
    for words in ('aoe exports', export['id'], '[aoe] interface'):
        assert words in info.value.message


def test_an_nbd_export_record_of_the_previous_version_is_restored(h):
    node = h.start()
    vol = h.volume()
    ident = str(uuid.uuid4())
    # What the node wrote before there was AoE, key for key.
    request = {'volume_id': vol, 'hosts': ['127.0.0.1'], 'protocol': 'nbd',
               'read_only': False}
    h.store.create('exports/' + ident, dict(
        request, node='n1', export_name=ident, request=request,
        created_at=1700000000.0))
    node = h.restart()
    assert ident in h.nbd.exports
    assert node.export(ident) == {
        'id': ident, 'volume_id': vol, 'protocol': 'nbd',
        'hosts': ['127.0.0.1'], 'read_only': False,
        'connection': {'protocol': 'nbd', 'host': '127.0.0.1',
                       'port': 10809, 'export_name': ident,
                       'tls_mode': 'off'},
        'incarnation': None,
        'created_at': '2023-11-14T22:13:20Z'}
    assert h.keys('aoe/slots') == {}
    node.delete_export(ident)
    assert ident not in h.nbd.exports
