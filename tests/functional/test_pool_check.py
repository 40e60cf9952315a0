"""The consistency check of a pool its node is serving, end to end.

``storage-engine pool check`` (the installed command) and ``POST
/v1/pools/{pool}/check`` on a real node while NBD clients write to its
volumes: the check finds nothing wrong and the writes go on; a record
the node committed, then damaged on disk, is found. The offline ``vg
check`` refuses the running node's group with its own exit code and
says how to check it instead.
"""

import random
import threading
import time

from storage_engine.nbd import client as nbd_client
from storage_engine.volstore import journal as journal_mod
from storage_engine.volstore import layout
from tests.fixtures import node as node_mod
from tests.functional import apitools
from tests.functional.test_cli import se

MiB = 1 << 20
VOLUME_SIZE = 64 * MiB
CHUNK = 64 * 1024
# Only reached when something is wrong (a writer stuck); then it fails.
STUCK = 120.0


def _report_errors(body) -> list[str]:
    """Where ``body`` does not match the document's PoolCheck schema."""
    return apitools.schema_errors(
        {'$ref': '#/components/schemas/PoolCheck'}, body)


class Writer:
    """An NBD client writing, trimming and flushing one export in a
    thread until stopped, remembering what each chunk should hold.
    """

    def __init__(self, export: dict, seed: int):
        c = export['connection']
        self.nbd = nbd_client.NBDClient.connect(
            c['export_name'], host=c['host'], port=c['port'])
        self.rng = random.Random(seed)
        self.expected = {}          # chunk -> bytes
        self.done = 0
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        rng = self.rng
        try:
            while not self._stop.is_set():
                chunk = rng.randrange(VOLUME_SIZE // CHUNK)
                if rng.random() < 0.1:
                    self.nbd.trim(CHUNK, chunk * CHUNK)
                    self.expected[chunk] = bytes(CHUNK)
                else:
                    payload = rng.randbytes(CHUNK)
                    self.nbd.pwrite(payload, chunk * CHUNK)
                    self.expected[chunk] = payload
                if rng.random() < 0.1:
                    self.nbd.flush()
                self.done += 1
        except BaseException as e:      # reported by stop()
            self.error = e

    def stop(self):
        self._stop.set()
        self._thread.join(STUCK)
        assert not self._thread.is_alive(), 'an NBD writer is stuck'
        assert self.error is None, self.error

    def verify(self):
        for chunk, payload in self.expected.items():
            assert self.nbd.pread(CHUNK, chunk * CHUNK) == payload, chunk
        self.nbd.close()


def _wait_for(predicate, what):
    """Poll ``predicate`` until it holds (STUCK bounds a broken run)."""
    deadline = time.monotonic() + STUCK
    while not predicate():
        assert time.monotonic() < deadline, 'never: %s' % what
        time.sleep(0.01)


def _start_writers(node, count):
    writers = []
    for i in range(count):
        vol = apitools.create(node, '/volumes', {'name': 'busy-%d' % i,
                                                 'size': VOLUME_SIZE})
        export = apitools.create(node, '/exports', {
            'volume_id': vol['id'], 'hosts': ['127.0.0.1']})
        writers.append(Writer(export, seed=i))
    return writers


def test_pool_check_while_nbd_clients_write(node):
    writers = _start_writers(node, 2)
    try:
        _wait_for(lambda: all(w.done for w in writers), 'writes started')
        before = sum(w.done for w in writers)
        for _ in range(3):
            resp = node.post('/pools/default/check')
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert _report_errors(body) == []
            assert (body['pool'], body['group'], body['ok'],
                    body['errors']) == ('default', 'default', True, [])
            assert body['stats']['volumes'] == 2
            result = se(node, 'pool', 'check', 'default')
            assert (result.code, result.out, result.err) == (
                0, 'default: consistent\n', ''), result
            result = se(node, 'pool', 'check', 'default', '--format',
                        'json')
            assert result.code == 0, result
            assert result.json()['ok'] is True
        # The writers went on while the pool was being checked.
        assert sum(w.done for w in writers) > before
    finally:
        for w in writers:
            w.stop()
    for w in writers:
        w.verify()
    assert se(node, 'pool', 'check', 'nope').code == 3


def test_offline_vg_check_of_the_running_nodes_group_exits_9(node):
    pv0 = node_mod.pv_path(node)
    for argv in (['vg', 'check', pv0],
                 ['vg', 'check', pv0, '--format', 'json']):
        result = se(node, *argv)
        assert (result.code, result.out) == (9, ''), result
        assert result.err == (
            'storage-engine: error: volume group default (%s) is in use by '
            'a running process (storage-engine serve?); check it online '
            'with `storage-engine pool check default`\n' % pv0)
    # It changed nothing: the node serves and its pool checks clean.
    assert se(node, 'pool', 'check', 'default').code == 0


def _first_journal_record_payload(pv0: str) -> int:
    """Byte offset of the payload of the first journal record after the
    checkpoint, as PV0's newest superblock says.
    """
    with open(pv0, 'rb') as f:
        best = None
        for slot in layout.SUPERBLOCK_SLOTS:
            f.seek(slot)
            got = layout.decode_superblock(f.read(layout.SUPERBLOCK_SIZE))
            if got and (best is None or got[0] > best[0]):
                best = got
    body = best[1]
    return body['journal']['offset'] + body['replay']['pos'] + \
        journal_mod.HEADER_SIZE


def test_pool_check_finds_a_committed_record_damaged_on_disk(node):
    # The create is committed: a journal record after the checkpoint.
    apitools.create(node, '/volumes', {'name': 'v', 'size': MiB})
    pv0 = node_mod.pv_path(node)
    with open(pv0, 'r+b') as f:
        f.seek(_first_journal_record_payload(pv0) + 2)
        f.write(b'\xff\x00\xff')
    result = se(node, 'pool', 'check', 'default')
    assert result.code == 1, result
    lines = result.out.splitlines()
    assert len(lines) == 2, result
    assert lines[0].startswith('ERROR: journal records ')
    assert lines[0].endswith('a restart would lose them')
    assert lines[1] == 'default: 1 problem(s)'
    resp = node.post('/pools/default/check')
    assert resp.status_code == 200
    body = resp.json()
    assert _report_errors(body) == []
    assert body['ok'] is False and body['errors'] == [lines[0][7:]]
