"""What a host learns of AoE exports that do not admit it: nothing.

A real ``storage-engine serve`` serves AoE on one host of a switched
segment made by the test (tests/fixtures/netns.py ``Segment``: a bridge and
a namespace per host, all gone after). Two initiator hosts sit on the same
segment, each capturing every AoE frame its interface receives: ``listed``,
on the mask list of the export under test, and ``stranger``, on no list of
it. While exports are added, and while the node is killed and started, and
stopped and started, the stranger must receive no frame naming that
export's shelf.slot (no announcement, no reply to its discovery), while
the listed host is announced the export, by a frame to its own MAC.

The stranger's own export is the control: its announcement and its
discovery reply prove the stranger's capture works, and, sent by the same
target over the same path after the export under test was announced, they
mark the moment by which any frame about that export would have arrived.
The switch knows each host's port (see ``Segment``), so a frame to the
listed host is not flooded to the stranger's port.
"""

import socket
import time

import pytest

from storage_engine.aoe import initiator
from storage_engine.aoe import wire
from storage_engine import units
from tests.fixtures import aoe
from tests.fixtures import netns

make_segment = netns.make_segment

SIZE = 16 * units.Mi


@pytest.fixture
def seg(make_segment):
    return make_segment('node', 'listed', 'stranger')


@pytest.fixture
def aoe_node(node_factory, seg):
    return node_factory('aoe', aoe={'interface': seg['node'].ifname,
                                    'network_namespace': seg['node'].ns})


@pytest.fixture
def captures(seg):
    """A capture on the listed host and one on the stranger, opened before
    the node starts.
    """
    caps = [aoe.Capture(seg[name].ifname, seg[name].ns)
            for name in ('listed', 'stranger')]
    try:
        yield caps
    finally:
        for cap in caps:
            cap.close()


def _export(node, name, hosts):
    vol = node.post('/volumes', {'name': name, 'size': SIZE})
    assert vol.status_code == 201, vol.text
    exp = node.post('/exports', {'volume_id': vol.json()['id'],
                                 'protocol': 'aoe', 'hosts': hosts})
    assert exp.status_code == 201, exp.text
    conn = exp.json()['connection']
    return conn['shelf'], conn['slot']


def _about(address):
    return lambda f: (f.shelf, f.slot) == address


def _announced(address):
    """A Query Config reply about ``address``: an announcement (the hosts
    send no query before they have seen one), whoever it is sent to.
    """
    return lambda f: (f.response and f.command == wire.CMD_CONFIG and
                      (f.shelf, f.slot) == address)


def _discover(cap, address):
    """Broadcast a discovery (Query Config to every shelf and slot) from
    ``cap``'s host and wait for the reply about ``address``.
    """
    query = initiator.InitiatorCore(cap.mac, wire.BROADCAST_SHELF,
                                    wire.BROADCAST_SLOT).config(
                                        time.monotonic())
    cap.send(query.frame)
    return cap.wait_for('discovery reply about e%d.%d' % address,
                        lambda f: (f.response and f.tag == query.tag and
                                   (f.shelf, f.slot) == address))


def _frames_about(cap, address):
    return [(wire.mac_text(c.frame.dst), c.frame.command, c.pkttype)
            for c in cap.frames() if _about(address)(c.frame)]


def _check(seg, listed, stranger, secret, own, shared, when):
    """The hosts saw what they may see of ``secret`` (listed only),
    ``own`` (the stranger only) and ``shared`` (both), and nothing else.
    """
    announced = [cap.wait_for('%s: announcement of e%d.%d'
                              % ((when,) + address),
                              _announced(address))
                 for cap, address in ((listed, secret), (listed, shared),
                                      (stranger, own), (stranger, shared))]
    # The stranger asks the target about the secret export directly, then
    # discovers: it is answered about its own exports only. The reply
    # about its own, sent after everything the target sent before, is the
    # mark.
    direct = initiator.InitiatorCore(stranger.mac, *secret,
                                     wire.mac_bytes(seg['node'].mac))
    stranger.send(direct.config(time.monotonic()).frame)
    _discover(stranger, own)
    _discover(listed, secret)
    assert _frames_about(stranger, secret) == [], when
    assert _frames_about(listed, own) == [], when
    # Each announcement came to its host's own MAC, not to everyone.
    assert [(c.frame.dst, c.pkttype) for c in announced] == [
        (cap.mac, socket.PACKET_HOST)
        for cap in (listed, listed, stranger, stranger)], (when, announced)


def test_an_export_is_announced_only_to_the_hosts_it_admits(
        seg, captures, aoe_node):
    listed, stranger = captures
    secret = _export(aoe_node, 'secret', [seg['listed'].mac])
    own = _export(aoe_node, 'strangers', [seg['stranger'].mac])
    shared = _export(aoe_node, 'shared', [seg['listed'].mac,
                                          seg['stranger'].mac])
    _check(seg, listed, stranger, secret, own, shared, 'exports added')

    for when, restart in (('killed and started', aoe_node.kill),
                          ('stopped and started', aoe_node.stop)):
        restart()
        listed.clear()
        stranger.clear()
        aoe_node.start()
        _check(seg, listed, stranger, secret, own, shared, when)
