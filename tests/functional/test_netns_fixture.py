"""The namespace fixtures (tests/fixtures/netns.py) the AoE tests stand on:
a private Ethernet between two namespaces, or several hosts on one switch,
gone without a trace after.
"""

import os
import socket
import subprocess
import sys

import pytest

from storage_engine.aoe import wire
from tests.fixtures import aoe
from tests.fixtures import netns
from tests.fixtures import waiting

# The fixtures, as a conftest.py takes them.
veth_pair = netns.veth_pair
make_veth_pair = netns.make_veth_pair
make_segment = netns.make_segment


def namespaces() -> set:
    out = subprocess.run(['ip', 'netns', 'list'], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_namespaces_and_ends_exist_while_open(veth_pair):
    pid = os.getpid()
    assert {veth_pair.ns_a, veth_pair.ns_b} <= namespaces()
    assert veth_pair.ns_a.startswith('se-aoe-%d-' % pid)
    for ns, ifname in veth_pair.ends():
        assert len(ifname) <= 15
        link = veth_pair.link(ns, ifname)
        assert link['operstate'] == 'UP'
        assert link['mtu'] == 1500
    # The veth lives only in the namespaces, never in the root one.
    root = subprocess.run(['ip', '-br', 'link'], capture_output=True,
                          text=True, check=True).stdout
    assert veth_pair.if_a not in root and veth_pair.if_b not in root


def test_ends_have_different_macs_seen_from_the_peer(veth_pair):
    assert veth_pair.mac_a != veth_pair.mac_b
    shown = veth_pair.run(veth_pair.ns_b, 'cat',
                          '/sys/class/net/%s/address' % veth_pair.if_b)
    assert shown.stdout.strip() == veth_pair.mac_b


# A UDP echo across the veth (the image has no ping): the server in A
# answers one datagram; the client in B sends with DF set, so a datagram
# larger than the path MTU fails instead of being fragmented.
ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7007))
data, peer = s.recvfrom(65536)
s.sendto(data, peer)
"""
ECHO_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER, IP_PMTUDISC_DO
s.settimeout(0.1)
payload = bytes(i % 251 for i in range(int(sys.argv[2])))
deadline = time.monotonic() + 10
while True:   # until the server is listening
    s.sendto(payload, (sys.argv[1], 7007))
    try:
        data = s.recv(65536)
        break
    except socket.timeout:
        assert time.monotonic() < deadline, 'no echo'
assert data == payload
print('echoed', len(data))
"""


def echo(pair, size: int) -> str:
    server = pair.popen(pair.ns_a, sys.executable, '-c', ECHO_SERVER,
                        pair.ip_a)
    out = pair.run(pair.ns_b, sys.executable, '-c', ECHO_CLIENT,
                   pair.ip_a, str(size)).stdout
    assert server.wait(timeout=10) == 0
    return out


def test_ip_between_the_ends(make_veth_pair):
    pair = make_veth_pair(ipv4=True)
    assert echo(pair, 1000) == 'echoed 1000\n'
    # A reached B's end of the veth, by its MAC.
    neigh = pair.run(pair.ns_a, 'ip', '-j', 'neigh', 'show', pair.ip_b)
    assert pair.mac_b in neigh.stdout


def test_jumbo_mtu_applied_and_usable(make_veth_pair):
    pair = make_veth_pair(mtu=9000, ipv4=True)
    for ns, ifname in pair.ends():
        assert pair.link(ns, ifname)['mtu'] == 9000
    # 8972 bytes of UDP payload + 28 of headers = 9000, not fragmented.
    assert echo(pair, 8972) == 'echoed 8972\n'


def test_standard_mtu_refuses_jumbo_datagrams(make_veth_pair):
    pair = make_veth_pair(ipv4=True)
    proc = pair.run(pair.ns_b, sys.executable, '-c', ECHO_CLIENT,
                    pair.ip_a, '8972', check=False)
    assert 'Message too long' in proc.stderr


def in_namespace(pair, ns, pid) -> None:
    # `ip netns exec` enters the namespace after Popen returns.
    waiting.wait_for('pid %d in %s' % (pid, ns),
                     lambda: pid in pair.pids(ns), timeout=10, poll=0.01)


def test_close_removes_everything_and_stops_its_processes():
    pair = netns.open_pair()
    try:
        sleeper = pair.popen(pair.ns_a, 'sleep', '600')
        in_namespace(pair, pair.ns_a, sleeper.pid)
    finally:
        pair.close()
    assert sleeper.poll() is not None
    assert not {pair.ns_a, pair.ns_b} & namespaces()
    pair.close()                 # idempotent
    with pytest.raises(netns.NetnsError):
        pair.run(pair.ns_a, 'true')


def test_close_names_processes_it_did_not_start():
    pair = netns.open_pair()
    # Started around the fixture: close() must leave it alone and say so.
    stray = subprocess.Popen(['ip', 'netns', 'exec', pair.ns_b,
                              'sleep', '600'])
    try:
        in_namespace(pair, pair.ns_b, stray.pid)
        with pytest.raises(AssertionError, match=str(stray.pid)):
            pair.close()
        assert stray.poll() is None
        assert pair.ns_b not in namespaces()
    finally:
        pair.close()
        stray.kill()
        stray.wait()


def test_run_refuses_other_namespaces(veth_pair):
    with pytest.raises(ValueError):
        veth_pair.run('some-other-ns', 'true')


def test_failed_command_reports_its_output(veth_pair):
    with pytest.raises(AssertionError, match='No such file'):
        veth_pair.run(veth_pair.ns_a, 'ls', '/nonexistent')
    proc = veth_pair.run(veth_pair.ns_a, 'ls', '/nonexistent', check=False)
    assert proc.returncode != 0


def test_without_root_it_fails_saying_so(monkeypatch):
    before = namespaces()
    monkeypatch.setattr(netns.os, 'geteuid', lambda: 1000)
    with pytest.raises(netns.NetnsError, match='need root'):
        netns.VethPair()
    with pytest.raises(pytest.fail.Exception, match='need root'):
        netns.open_pair()
    assert namespaces() == before


# -- a segment: several hosts on one switch -----------------------------------

def test_a_segment_exists_while_open_and_leaves_nothing_after():
    seg = netns.open_segment('a', 'b', 'c')
    try:
        assert {seg.ns_switch} | {s.ns for s in seg.stations()} <= \
            namespaces()
        assert len({s.mac for s in seg.stations()}) == 3
        for ns, ifname in seg.ends():
            assert len(ifname) <= 15
            assert seg.link(ns, ifname)['operstate'] == 'UP'
        root = subprocess.run(['ip', '-br', 'link'], capture_output=True,
                              text=True, check=True).stdout
        assert not any(s.ifname in root or s.port in root
                       for s in seg.stations())
        with pytest.raises(ValueError):
            seg.run('some-other-ns', 'true')
    finally:
        seg.close()
    assert not ({seg.ns_switch} | {s.ns for s in seg.stations()}) & \
        namespaces()


def _frame(src: bytes, dst: bytes, tag: int) -> bytes:
    return wire.build(wire.Frame(dst=dst, src=src, shelf=1, slot=1,
                                 command=wire.CMD_CONFIG, tag=tag,
                                 args=wire.Config()))


def test_a_segment_delivers_unicast_to_its_addressee_only(make_segment):
    seg = make_segment('a', 'b', 'c')
    caps = {name: aoe.Capture(seg[name].ifname, seg[name].ns)
            for name in 'abc'}
    try:
        a = caps['a']
        b_mac = wire.mac_bytes(seg['b'].mac)
        unknown = bytes.fromhex('020000c0ffee')
        a.send(_frame(a.mac, b_mac, 1))
        a.send(_frame(a.mac, unknown, 2))
        a.send(_frame(a.mac, wire.BROADCAST_MAC, 3))
        # The broadcast, sent last on the same path, arrives last.
        for name in 'bc':
            caps[name].wait_for('the broadcast', lambda f: f.tag == 3)
        seen = {name: [(c.frame.tag, c.pkttype)
                       for c in caps[name].frames()] for name in 'bc'}
        assert seen['b'] == [(1, socket.PACKET_HOST),
                             (2, socket.PACKET_OTHERHOST),
                             (3, socket.PACKET_BROADCAST)]
        # c never sees b's frame; a frame to a MAC the switch does not know
        # is flooded, and a capture sees it though it is not c's.
        assert seen['c'] == [(2, socket.PACKET_OTHERHOST),
                             (3, socket.PACKET_BROADCAST)]
        assert caps['a'].frames() == []
    finally:
        for cap in caps.values():
            cap.close()
