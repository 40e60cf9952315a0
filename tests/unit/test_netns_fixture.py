"""The veth-pair fixture (tests/fixtures/netns.py) the AoE tests stand on:
a private Ethernet between two namespaces, gone without a trace after.
"""

import os
import subprocess
import sys

import pytest

from tests.fixtures import netns
from tests.fixtures import waiting

# The fixtures, as a conftest.py takes them.
veth_pair = netns.veth_pair
make_veth_pair = netns.make_veth_pair


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
