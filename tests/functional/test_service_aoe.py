"""Storage nodes serving ATA over Ethernet: real ``storage-engine serve``
processes, each with its AoE socket on one end of a veth pair in a network
namespace of the test's own (tests/fixtures/netns.py), its API on
127.0.0.1 in the root namespace, and initiators (storage_engine.aoe.client)
on the other end of the pair.

Shelves and slots are claimed in the metadata store, so nodes sharing one
etcd never hand out the same address, even when they start and export at
the same instant; a shelf held by one node is refused to another. Needs
root (raw sockets, namespaces).
"""

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import uuid

import pytest

from storage_engine.aoe import client as aoe_client
from storage_engine import errors
from storage_engine import metastore
from storage_engine.service import aoe_exporter
from storage_engine import units
from tests.fixtures import netns
from tests.functional import apitools

veth_pair = netns.veth_pair
make_veth_pair = netns.make_veth_pair

COMMAND = os.path.join(os.path.dirname(sys.executable), 'storage-engine')
SIZE = 64 * units.Mi
OTHER_MAC = '52:54:00:aa:bb:cc'
#: how long an initiator waits for an answer that must come
ANSWER_TIMEOUT = 30.0
#: how long it waits for one that must not (a refusal is silence)
SILENCE_TIMEOUT = 2.0


def _ok(resp, status=201):
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def _volume(node, name, size=SIZE):
    return _ok(node.post('/volumes', {'name': name, 'size': size}))['id']


def _aoe_export(node, volume_id, hosts, **extra):
    return _ok(node.post('/exports', dict(volume_id=volume_id, hosts=hosts,
                                          protocol='aoe', **extra)))


def _initiator(pair, conn, timeout=ANSWER_TIMEOUT):
    """An AoE initiator on the B end of ``pair`` for ``conn``."""
    return aoe_client.AoEClient(pair.if_b, conn['shelf'], conn['slot'],
                                netns=pair.ns_b, timeout=timeout)


def _in_parallel(calls, threads):
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda call: call(), calls))


def _store(url, prefix):
    with metastore.open_store(url) as store:
        return {k: v for k, (v, _rev) in store.list(prefix).items()}


@pytest.fixture
def aoe_node(node_factory, veth_pair):
    """A node serving AoE on the A end of ``veth_pair`` (its namespace)."""
    return node_factory('aoe', aoe={'interface': veth_pair.if_a,
                                    'network_namespace': veth_pair.ns_a})


# -- one node -----------------------------------------------------------------

def test_an_aoe_export_serves_its_host_and_keeps_address_and_data(
        aoe_node, veth_pair):
    pair = veth_pair
    info = aoe_node.get('/node').json()['aoe']
    assert info == {'interface': pair.if_a, 'shelf': 0, 'mac': pair.mac_a}
    vol = _volume(aoe_node, 'data')
    # The initiator's MAC as an operator may type it.
    typed = pair.mac_b.upper().replace(':', '-')
    exp = _aoe_export(aoe_node, vol, [typed])
    assert exp['hosts'] == [pair.mac_b]
    conn = exp['connection']
    assert conn == {'protocol': 'aoe', 'shelf': 0, 'slot': 0,
                    'mac': pair.mac_a, 'interface': pair.if_a,
                    'sectors_per_frame': 2}
    pattern = os.urandom(256 * 1024)
    with _initiator(pair, conn) as dev:
        assert dev.size == SIZE
        assert dev.target_mac == pair.mac_a
        dev.write(3 * units.Mi, pattern)
        dev.flush()
        assert dev.read(3 * units.Mi, len(pattern)) == pattern
    # A kill and a start: same address, same data.
    aoe_node.kill()
    aoe_node.start()
    assert aoe_node.get('/exports/' + exp['id']).json() == exp
    with _initiator(pair, conn) as dev:
        assert dev.read(3 * units.Mi, len(pattern)) == pattern
        # Removed, the export no longer answers.
        _ok(aoe_node.request('DELETE', '/exports/' + exp['id']), 204)
        dev.timeout = SILENCE_TIMEOUT
        with pytest.raises(errors.Unavailable):
            dev.read(0, 512)
    assert _store(aoe_node.metadata_url, 'aoe') == {
        'aoe/shelves/0': {'node': 'aoe'}}


def test_an_aoe_export_is_silent_to_initiators_it_does_not_name(
        aoe_node, veth_pair):
    vol = _volume(aoe_node, 'data')
    conn = _aoe_export(aoe_node, vol, [OTHER_MAC])['connection']
    with pytest.raises(errors.Unavailable):
        _initiator(veth_pair, conn, timeout=SILENCE_TIMEOUT).close()


@pytest.mark.parametrize('host, words', [
    ('52:54:00:12:34', ['52:54:00:12:34', 'not a MAC address']),
    ('10.0.0.1', ['10.0.0.1', 'not a MAC address']),
    ('ff:ff:ff:ff:ff:ff', ['ff:ff:ff:ff:ff:ff', 'broadcast']),
    ('01:00:5E:00:00:FB', ['01:00:5E:00:00:FB', 'multicast']),
    ('00-00-00-00-00-00', ['00-00-00-00-00-00', 'all-zero']),
])
def test_a_bad_mac_is_a_400_naming_it_and_changes_nothing(aoe_node, host,
                                                          words):
    vol = _volume(aoe_node, 'data')
    before = apitools.state(aoe_node)
    resp = aoe_node.post('/exports', {'volume_id': vol, 'protocol': 'aoe',
                                      'hosts': ['52:54:00:00:00:01', host]})
    apitools.assert_error(resp, 400, 'invalid_argument', *words)
    assert apitools.state(aoe_node) == before


def test_a_node_without_aoe_refuses_aoe_exports(node):
    vol = _volume(node, 'data')
    before = apitools.state(node)
    resp = node.post('/exports', {'volume_id': vol, 'protocol': 'aoe',
                                  'hosts': ['52:54:00:00:00:01']})
    apitools.assert_error(resp, 400, 'invalid_argument', "protocol 'aoe'",
                          'not served')
    assert apitools.state(node) == before
    assert node.get('/node').json()['aoe'] is None


def _cli(node, *argv):
    env = dict(os.environ, STORAGE_ENGINE_URL=node.url,
               STORAGE_ENGINE_TOKEN=node.token)
    proc = subprocess.run([COMMAND, *argv], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc
    return proc.stdout


def test_the_command_exports_over_aoe_and_shows_shelf_and_slot(
        aoe_node, veth_pair):
    _volume(aoe_node, 'v1')
    shown = _cli(aoe_node, 'export', 'create', 'v1', '--protocol', 'aoe',
                 '--host', veth_pair.mac_b.upper())
    export = json.loads(_cli(aoe_node, '--format', 'json', 'export',
                             'list'))[0]
    assert export['protocol'] == 'aoe'
    assert export['hosts'] == [veth_pair.mac_b]
    assert (export['connection']['shelf'],
            export['connection']['slot']) == (0, 0)
    fields = dict(re.split(r'\s{2,}', line, maxsplit=1)
                  for line in shown.splitlines())
    assert fields['shelf.slot'] == '0.0'
    assert fields['target mac'] == veth_pair.mac_a
    assert fields['endpoint'] == 'aoe://%s/e0.0' % veth_pair.if_a
    table = _cli(aoe_node, 'export', 'list')
    assert 'aoe://%s/e0.0' % veth_pair.if_a in table
    status = _cli(aoe_node, 'status')
    assert 'shelf 0 on %s (%s)' % (veth_pair.if_a, veth_pair.mac_a) in status


# -- two nodes sharing one etcd -----------------------------------------------

@pytest.fixture
def cluster_url(etcd):
    return etcd.store_url('aoe-' + uuid.uuid4().hex)


def _two_aoe_nodes(node_factory, pair, url, shelves=(None, None)):
    """Nodes a and b on the two ends of ``pair``, sharing ``url``,
    started at the same instant (so their shelf claims race).
    """
    nodes = [node_factory(name, start=False, metadata_url=url,
                          aoe={'interface': ifname, 'network_namespace': ns,
                               'shelf': shelf})
             for name, (ns, ifname), shelf in zip('ab', pair.ends(),
                                                  shelves)]
    for n in nodes:
        n.start(wait=False)
    for n in nodes:
        n.wait_ready()
    return nodes


EXPORTS_PER_NODE = 50


def test_two_nodes_creating_exports_at_once_never_share_an_address(
        node_factory, veth_pair, cluster_url):
    a, b = _two_aoe_nodes(node_factory, veth_pair, cluster_url)
    shelves = {n: n.get('/node').json()['aoe']['shelf'] for n in (a, b)}
    assert sorted(shelves.values()) == [0, 1]
    assert _store(cluster_url, 'aoe/shelves') == {
        'aoe/shelves/%d' % shelves[n]: {'node': n.name} for n in (a, b)}

    vols = {n: _in_parallel([lambda n=n, i=i: _volume(n, '%s-%02d'
                                                      % (n.name, i))
                             for i in range(EXPORTS_PER_NODE)], 16)
            for n in (a, b)}
    # Every export of both nodes asked for at the same time.
    calls = [lambda n=n, v=v: n.post('/exports', {
        'volume_id': v, 'protocol': 'aoe', 'hosts': [OTHER_MAC]})
        for n in (a, b) for v in vols[n]]
    results = _in_parallel(calls, len(calls))
    assert [r.status_code for r in results] == [201] * len(calls), \
        [r.text for r in results if r.status_code != 201][:3]
    exports = [r.json() for r in results]
    addresses = [(e['connection']['shelf'], e['connection']['slot'])
                 for e in exports]
    assert len(set(addresses)) == 2 * EXPORTS_PER_NODE
    slots = _store(cluster_url, 'aoe/slots')
    for n in (a, b):
        mine = n.get('/exports').json()['exports']
        assert {e['connection']['shelf'] for e in mine} == {shelves[n]}
        # First free first: the slots are exactly 0..49, once each.
        assert sorted(e['connection']['slot'] for e in mine) == \
            list(range(EXPORTS_PER_NODE))
        assert {'aoe/slots/%d/%d' % (shelves[n], e['connection']['slot']):
                {'node': n.name, 'export': e['id']} for e in mine} == \
            {k: v for k, v in slots.items()
             if k.startswith('aoe/slots/%d/' % shelves[n])}
    assert len(slots) == 2 * EXPORTS_PER_NODE

    # Each node serves its own shelf, and only it, on the wire.
    pair = veth_pair
    vol = _volume(a, 'reachable')
    conn = _aoe_export(a, vol, [pair.mac_b])['connection']
    assert conn['shelf'] == shelves[a] and conn['mac'] == pair.mac_a
    with _initiator(pair, conn) as dev:
        dev.write(0, b'\x5a' * 4096)
        assert dev.read(0, 4096) == b'\x5a' * 4096

    # Removed at once too: every slot given back, the shelves kept.
    gone = _in_parallel(
        [lambda n=n, e=e: n.request('DELETE', '/exports/' + e['id'])
         for n in (a, b) for e in n.get('/exports').json()['exports']], 32)
    assert {r.status_code for r in gone} == {204}
    assert _store(cluster_url, 'aoe/slots') == {}
    for n in (a, b):
        n.restart()
        assert n.get('/node').json()['aoe']['shelf'] == shelves[n]


def test_a_shelf_held_by_one_node_is_refused_to_another(
        node_factory, veth_pair, cluster_url):
    a = node_factory('a', metadata_url=cluster_url,
                     aoe={'interface': veth_pair.if_a,
                          'network_namespace': veth_pair.ns_a, 'shelf': 5})
    assert a.get('/node').json()['aoe']['shelf'] == 5
    b = node_factory('b', start=False, metadata_url=cluster_url,
                     aoe={'interface': veth_pair.if_b,
                          'network_namespace': veth_pair.ns_b, 'shelf': 5})
    b.start(wait=False)
    assert b.wait_exit() == 2
    log = b.log_tail()
    assert '[aoe] shelf 5 is held by node a' in log, log
    assert 'leave [aoe] shelf unset' in log, log
    assert _store(cluster_url, 'aoe/shelves') == {
        'aoe/shelves/5': {'node': 'a'}}
    # The first node is unaffected.
    assert a.get('/ready').status_code == 200


# -- the store itself, from two processes -----------------------------------

ALLOCATOR = r'''
import json, sys, threading
from storage_engine import metastore
url, owner, count, threads, last = sys.argv[1:6]
count, threads, last = int(count), int(threads), int(last)
claimed, failed = [], []
with metastore.open_store(url) as store:
    go = threading.Barrier(threads + 1)

    def work(index):
        go.wait()
        for _ in range(count // threads):
            try:
                claimed.append(store.allocate(
                    'aoe/slots/7', range(last),
                    {'node': owner, 'export': '%s-%d' % (owner, index)}))
            except metastore.Exhausted:
                failed.append('exhausted')

    workers = [threading.Thread(target=work, args=(i,))
               for i in range(threads)]
    for w in workers:
        w.start()
    print('ready', flush=True)
    sys.stdin.readline()        # both processes go at once
    go.wait()
    for w in workers:
        w.join()
print(json.dumps({'claimed': claimed, 'failed': failed}))
'''


@pytest.mark.parametrize('slots', [len(aoe_exporter.SLOTS), 60],
                         ids=['enough-slots', 'exhausted'])
def test_two_processes_allocating_one_shelfs_slots_never_share_one(
        cluster_url, slots):
    procs = [subprocess.Popen(
        [sys.executable, '-c', ALLOCATOR, cluster_url, owner, '50', '5',
         str(slots)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for owner in ('p1', 'p2')]
    # Both ready (store open, threads waiting), then both go.
    for p in procs:
        assert p.stdout.readline() == 'ready\n', p.communicate()[1]
    for p in procs:
        p.stdin.write('go\n')
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    claimed = [n for o in outs for n in o['claimed']]
    failed = [f for o in outs for f in o['failed']]
    assert len(claimed) == len(set(claimed)) == min(100, slots)
    assert set(claimed) == set(range(min(100, slots)))
    assert len(failed) == 100 - len(claimed)
    keys = _store(cluster_url, 'aoe/slots/7')
    assert sorted(keys) == sorted('aoe/slots/7/%d' % n for n in claimed)
    # Each key holds what its winner wrote.
    for owner, out in zip(('p1', 'p2'), outs):
        for n in out['claimed']:
            assert keys['aoe/slots/7/%d' % n]['node'] == owner
