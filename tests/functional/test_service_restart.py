"""The node keeps its volumes and exports across restarts and crashes.

Attached clients lose their connection when the service stops; they
reconnect with the connection properties they were given and find the
export and the data they wrote.
"""

import os
import signal
import socket

import pytest

from storage_engine.nbd import client as nbd_client
from storage_engine.nbd import constants as const
from storage_engine.nbd import wire
from storage_engine import units

GiB = units.Gi


def _create(node, name, size=GiB, **extra):
    r = node.post('/volumes', dict(name=name, size=size, **extra))
    assert r.status_code == 201, r.text
    return r.json()


def _export(node, volume_id, hosts=('127.0.0.1',)):
    r = node.post('/exports', {'volume_id': volume_id, 'hosts': list(hosts)})
    assert r.status_code == 201, r.text
    return r.json()


def _connect(conn):
    return nbd_client.NBDClient.connect(conn['export_name'],
                                        host=conn['host'], port=conn['port'])


def _state(node):
    return {what: node.get('/' + what).json()[what]
            for what in ('volumes', 'snapshots', 'exports')}


@pytest.mark.parametrize('how', [signal.SIGTERM, signal.SIGKILL],
                         ids=['sigterm', 'sigkill'])
def test_attached_client_reconnects_after_restart_and_reads_its_data(
        node, how):
    vol = _create(node, 'data')
    exp = _export(node, vol['id'])
    conn = exp['connection']
    pattern = os.urandom(1 << 20)
    with _connect(conn) as client:
        client.pwrite(pattern, 7 * units.Mi)
        client.pwrite(b'\xa5' * 4096, 0, fua=True)
        client.flush()      # acknowledged as durable: must survive a kill
        before = _state(node)
        node.stop(how)
        node.start()
        # The old connection is gone with the process that served it.
        with pytest.raises((OSError, nbd_client.NBDError, EOFError)):
            client.pread(4096, 0)
    assert _state(node) == before
    # The same connection properties still lead to the same data.
    assert node.get('/exports/%s' % exp['id']).json()['connection'] == conn
    with _connect(conn) as client:
        assert client.pread(1 << 20, 7 * units.Mi) == pattern
        assert client.pread(4096, 0) == b'\xa5' * 4096
        assert client.pread(4096, 4096) == bytes(4096)


def test_removed_export_is_not_restored_and_its_client_is_cut_off(node):
    vol = _create(node, 'data')
    exp = _export(node, vol['id'])
    conn = exp['connection']
    with _connect(conn) as client:
        client.pwrite(b'x' * 512, 0)
        assert node.request('DELETE', '/exports/%s' % exp['id']
                            ).status_code == 204
        # Withdrawing an export disconnects the clients attached through it.
        with pytest.raises((OSError, nbd_client.NBDError, EOFError)):
            client.pread(512, 0)
    node.restart()
    assert node.get('/exports').json()['exports'] == []
    with pytest.raises((OSError, nbd_client.NBDError)):
        _connect(conn).close()


def test_export_admits_only_its_host(node):
    vol = _create(node, 'data')
    exp = _export(node, vol['id'], hosts=['192.0.2.7'])
    conn = exp['connection']
    # 127.0.0.1 is not 192.0.2.7: the export does not exist for it.
    with pytest.raises(nbd_client.NBDError):
        _connect(conn).close()
    names = nbd_client.NBDClient.list_exports(host=conn['host'],
                                              port=conn['port'])
    assert conn['export_name'] not in names


def test_snapshot_export_is_read_only_and_keeps_its_point_in_time(node):
    vol = _create(node, 'data')
    exp = _export(node, vol['id'])
    with _connect(exp['connection']) as client:
        client.pwrite(b'old!' * 128, 0)
        client.flush()
        r = node.post('/snapshots', {'volume_id': vol['id'], 'name': 'snap'})
        assert r.status_code == 201, r.text
        snap = r.json()
        client.pwrite(b'new!' * 128, 0)
    sexp = _export(node, snap['id'])
    assert sexp['read_only'] is True
    node.restart()
    with _connect(sexp['connection']) as client:
        assert client.pread(512, 0) == b'old!' * 128
        # The server says read-only in the handshake; the client obeys.
        assert client.flags & const.NBD_FLAG_READ_ONLY
        with pytest.raises(wire.LocalProtocolError):
            client.pwrite(b'nope' * 128, 0)
        assert client.pread(512, 0) == b'old!' * 128


def test_node_keeps_its_nbd_port_across_restarts(node):
    port = node.get('/node').json()['nbd']['port']
    assert port in node.nbd_ports
    node.restart()
    assert node.get('/node').json()['nbd']['port'] == port


def test_sigterm_stops_cleanly_and_the_group_needs_no_replay(node):
    _create(node, 'data')
    assert node.stop(signal.SIGTERM) == 0
    # A clean stop wrote a checkpoint: nothing left to replay on open.
    from storage_engine.volstore import group as group_mod
    vg = group_mod.VolumeGroup.open(str(node.state / 'default.pv0'))
    try:
        assert vg.replayed == 0
        assert [v.name for v in vg.volumes()] == ['data']
        assert vg.check().ok
    finally:
        vg.close()
    # And the ports are free again.
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', node.api_port))
