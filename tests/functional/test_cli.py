"""The ``storage-engine`` command end to end: the installed console script,
run as a subprocess, against a real storage-node service (the ``node``
fixture), with data written and read over NBD to show the commands did
what they said.
"""

import json
import os
import pty
import subprocess
import sys
import uuid

import pytest

from storage_engine.nbd import client as nbd_client
from tests.fixtures.etcd import free_port

COMMAND = os.path.join(os.path.dirname(sys.executable), 'storage-engine')
MiB = 1 << 20
GiB = 1 << 30


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)

    def __repr__(self):
        return '<exit %d, out %r, err %r>' % (self.code, self.out, self.err)


def se(node, *argv, token=None, url=None, tty=False) -> Result:
    """Run ``storage-engine argv`` against ``node`` (URL and token from
    the environment, as an operator would set them).
    """
    env = dict(os.environ, STORAGE_ENGINE_URL=url or node.url,
               STORAGE_ENGINE_TOKEN=node.token if token is None else token)
    if not tty:
        p = subprocess.run([COMMAND, *argv], env=env, capture_output=True,
                           text=True, timeout=120)
        return Result(p.returncode, p.stdout, p.stderr)
    # stderr on a terminal, to see the progress bar.
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([COMMAND, *argv], env=env,
                             stdout=subprocess.PIPE, stderr=slave,
                             stdin=subprocess.DEVNULL, text=True)
        os.close(slave)
        out = p.stdout.read()
        err = b''
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:         # EIO: the other side is closed
                break
            if not chunk:
                break
            err += chunk
        p.wait(timeout=120)
        p.stdout.close()
    finally:
        os.close(master)
    return Result(p.returncode, out, err.decode())


def ok(node, *argv, **kwargs):
    result = se(node, '--format', 'json', *argv, **kwargs)
    assert result.code == 0, result
    return result.json() if result.out else None


def nbd(export):
    c = export['connection']
    return nbd_client.NBDClient.connect(c['export_name'], host=c['host'],
                                        port=c['port'])


def write(node, ref, data, offset=0):
    export = ok(node, 'export', 'create', ref, '--host', '127.0.0.1')
    with nbd(export) as conn:
        conn.pwrite(data, offset)
        conn.flush()
    ok(node, 'export', 'delete', export['id'])


def read(node, ref, length, offset=0):
    export = ok(node, 'export', 'create', ref, '--host', '127.0.0.1',
                '--read-only')
    with nbd(export) as conn:
        data = conn.pread(length, offset)
    ok(node, 'export', 'delete', export['id'])
    return data


def test_volume_lifecycle(node):
    v = ok(node, 'volume', 'create', 'v1', '1G')
    assert (v['name'], v['size'], v['provisioning']) == ('v1', GiB, 'thin')
    assert [x['id'] for x in ok(node, 'volume', 'list')] == [v['id']]

    shown = se(node, 'volume', 'show', 'v1')
    assert shown.code == 0 and v['id'] in shown.out
    assert '1GiB (1073741824 bytes)' in shown.out
    assert ok(node, 'volume', 'show', v['id']) == ok(node, 'volume', 'show',
                                                     'v1')

    assert ok(node, 'volume', 'extend', 'v1', '2G')['size'] == 2 * GiB
    assert ok(node, 'volume', 'rename', 'v1', 'v2')['name'] == 'v2'
    assert se(node, 'volume', 'show', 'v1').code == 3
    assert ok(node, 'volume', 'show', 'v2')['size'] == 2 * GiB

    table = se(node, 'volume', 'list')
    header, row = table.out.splitlines()
    assert header.split()[:3] == ['NAME', 'POOL', 'SIZE']
    assert row.split()[:4] == ['v2', 'default', '2GiB', 'thin']

    assert ok(node, 'volume', 'delete', 'v2') is None
    assert ok(node, 'volume', 'list') == []
    deleted = se(node, 'volume', 'delete', v['id'])
    assert deleted.code == 3 and deleted.out == ''


def test_snapshot_clone_flatten_revert(node):
    ok(node, 'volume', 'create', 'base', '64M')
    write(node, 'base', b'A' * MiB)
    snap = ok(node, 'snapshot', 'create', 'base', 's1')
    write(node, 'base', b'B' * MiB)
    assert [s['id'] for s in ok(node, 'snapshot', 'list', '--volume',
                                'base')] == [snap['id']]
    assert ok(node, 'snapshot', 'show', 's1')['volume_id'] == \
        ok(node, 'volume', 'show', 'base')['id']

    clone = ok(node, 'volume', 'create', 'clone', '64M', '--from-snapshot',
               's1')
    assert clone['has_parent'] is True
    assert clone['source'] == {'snapshot_id': snap['id']}
    flatten = se(node, 'volume', 'flatten', 'clone', tty=True)
    assert flatten.code == 0, flatten
    assert '\rflatten clone [' in flatten.err
    assert '100.0% succeeded' in flatten.err
    job_shown = flatten.out.splitlines()
    assert any(line.split() == ['state', 'succeeded'] for line in job_shown)
    assert ok(node, 'volume', 'show', 'clone')['has_parent'] is False
    assert read(node, 'clone', MiB) == b'A' * MiB

    jobs = ok(node, 'job', 'list')
    assert [j['volume_id'] for j in jobs] == [clone['id']]
    assert ok(node, 'job', 'show', jobs[0]['id'])['state'] == 'succeeded'

    assert ok(node, 'volume', 'revert', 'base', 's1')['name'] == 'base'
    assert read(node, 'base', MiB) == b'A' * MiB

    ok(node, 'volume', 'delete', 'clone')
    assert ok(node, 'snapshot', 'delete', 's1') is None
    assert ok(node, 'snapshot', 'list') == []


def test_flatten_off_a_terminal_and_without_waiting(node):
    ok(node, 'volume', 'create', 'base', '16M')
    ok(node, 'snapshot', 'create', 'base', 's1')
    ok(node, 'volume', 'create', 'c1', '16M', '--from-snapshot', 's1')
    ok(node, 'volume', 'create', 'c2', '16M', '--from-volume', 'base')

    quiet = se(node, '--format', 'json', 'volume', 'flatten', 'c1')
    assert (quiet.code, quiet.err) == (0, '')
    assert quiet.json()['state'] == 'succeeded'

    started = ok(node, 'volume', 'flatten', 'c2', '--no-wait')
    assert started['state'] in ('running', 'succeeded')
    c2 = ok(node, 'volume', 'show', 'c2')
    assert started['volume_id'] == c2['id']
    node.client().wait_job(started['id'], timeout=60)


def test_exports(node):
    v = ok(node, 'volume', 'create', 'v1', '16M')
    export = ok(node, 'export', 'create', 'v1', '--host', '127.0.0.1',
                '--host', '10.0.0.0/8')
    assert export['volume_id'] == v['id']
    assert export['hosts'] == ['127.0.0.1', '10.0.0.0/8']
    assert export['read_only'] is False
    with nbd(export) as conn:
        assert conn.size == 16 * MiB

    assert ok(node, 'export', 'list', '--volume', 'v1') == [export]
    assert ok(node, 'export', 'show', export['id']) == export
    table = se(node, 'export', 'list')
    assert 'nbd://%s:%d/%s' % (export['connection']['host'],
                               export['connection']['port'],
                               export['id']) in table.out
    # A volume with an export is not deleted.
    assert se(node, 'volume', 'delete', 'v1').code == 4

    assert ok(node, 'export', 'delete', export['id']) is None
    assert ok(node, 'export', 'list') == []
    assert se(node, 'export', 'show', export['id']).code == 3


def test_a_repeated_create_with_an_id_makes_one_volume(node):
    vid = str(uuid.uuid4())
    first = ok(node, 'volume', 'create', 'v1', '1G', '--id', vid)
    again = ok(node, 'volume', 'create', 'v1', '1G', '--id', vid)
    # The same volume, now the incarnation of the repeat (each command
    # is its own client, with its own token).
    assert first['incarnation'] != again['incarnation']
    first.pop('incarnation'), again.pop('incarnation')
    assert first == again and first['id'] == vid
    assert len(ok(node, 'volume', 'list')) == 1
    # Same id, another body: a conflict.
    assert se(node, 'volume', 'create', 'v1', '2G', '--id', vid).code == 4


def test_status_and_pools(node):
    status = ok(node, 'status')
    assert status['ready'] is True
    assert status['node']['name'] == 'node1'
    assert [p['name'] for p in status['pools']] == ['default']
    table = se(node, 'status')
    assert table.code == 0
    assert 'node1 (version' in table.out and 'ready' in table.out
    pools = ok(node, 'pool', 'list')
    assert pools == status['pools']
    assert ok(node, 'pool', 'show', 'default') == pools[0]
    assert se(node, 'pool', 'show', 'nope').code == 3
    assert 'cluster size' in se(node, 'pool', 'show', 'default').out


@pytest.mark.parametrize('argv', [
    ['status'], ['pool', 'list'], ['volume', 'list'], ['snapshot', 'list'],
    ['export', 'list'], ['job', 'list'],
], ids=' '.join)
def test_json_output_parses(node, argv):
    result = se(node, *argv, '--format', 'json')
    assert result.code == 0 and result.err == ''
    json.loads(result.out)


def test_exit_codes(node):
    ok(node, 'volume', 'create', 'v1', '16M')

    def exit_of(*argv, **kwargs):
        result = se(node, *argv, **kwargs)
        assert result.out == ''
        assert result.err.startswith('storage-engine: error: ')
        assert result.err.count('\n') == 1, result
        return result.code

    assert exit_of('volume', 'show', 'nope') == 3
    assert exit_of('volume', 'show', str(uuid.uuid4())) == 3
    assert exit_of('snapshot', 'create', 'nope', 's1') == 3
    assert exit_of('volume', 'create', 'v1', '16M') == 4
    assert exit_of('volume', 'create', 'bad/name', '16M') == 2
    assert exit_of('volume', 'create', 'v2', '100T', '--thick') == 5
    assert exit_of('volume', 'list', token='wrong') == 6
    assert exit_of('volume', 'list', token='') == 6
    assert exit_of('volume', 'list',
                   url='http://127.0.0.1:%d' % free_port()) == 7
