"""The ``storage-engine`` API commands without a service: argument parsing,
name resolution, the error -> exit code table, output, and the command's
behaviour on answers from a scripted HTTP server (tests/unit/cannedhttp.py).

The commands against a real service are tested in tests/functional.
"""

import io
import json

import pytest

from storage_engine import cli
from storage_engine.cli import exits
from storage_engine.cli import output
from storage_engine.cli import refs
from storage_engine.cli import remote
from storage_engine.cli import vg
from storage_engine import client as client_mod
from storage_engine import errors
from storage_engine.metastore import errors as ms_errors
from tests.unit import cannedhttp
from tests.unit.cannedhttp import error

VID = '0b9f9c7e-6a57-4c6e-9d3c-0d1b4c8f2a11'
SID = '7d4e1a2b-8c9f-4e3d-a1b2-c3d4e5f6a7b8'
JID = '5e0c2f9a-3b1d-4f5e-8a7b-9c6d5e4f3a21'
MiB = 1 << 20

VOLUME = {'id': VID, 'name': 'v1', 'pool': 'default', 'size': 10 << 30,
          'provisioning': 'thin', 'allocated': 3650722201, 'source': None,
          'has_parent': False, 'created_at': '2026-01-01T00:00:00Z',
          'status': 'available'}


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``storage-engine argv``."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- parsing ------------------------------------------------------------------

@pytest.mark.parametrize('argv, func, attrs', [
    (['status'], remote.cmd_status, {}),
    (['pool', 'list'], remote.cmd_pool_list, {}),
    (['pool', 'show', 'p1'], remote.cmd_pool_show, {'name': 'p1'}),
    (['pool', 'check', 'p1'], remote.cmd_pool_check, {'name': 'p1'}),
    (['volume', 'list', '--pool', 'p1'], remote.cmd_volume_list,
     {'pool': 'p1'}),
    (['volume', 'show', 'v1'], remote.cmd_volume_show, {'ref': 'v1'}),
    (['volume', 'create', 'v1', '10G'], remote.cmd_volume_create,
     {'name': 'v1', 'size': '10G', 'pool': None, 'provisioning': None,
      'from_snapshot': None, 'from_volume': None, 'id': None}),
    (['volume', 'create', 'c1', '1G', '--thick', '--from-snapshot', 's1',
      '--pool', 'p', '--id', VID], remote.cmd_volume_create,
     {'provisioning': 'thick', 'from_snapshot': 's1', 'pool': 'p',
      'id': VID}),
    (['volume', 'create', 'c1', '1G', '--thin', '--from-volume', 'v1'],
     remote.cmd_volume_create,
     {'provisioning': 'thin', 'from_volume': 'v1'}),
    (['volume', 'delete', 'v1'], remote.cmd_volume_delete, {'ref': 'v1'}),
    (['volume', 'extend', 'v1', '20G'], remote.cmd_volume_extend,
     {'ref': 'v1', 'size': '20G'}),
    (['volume', 'rename', 'v1', 'v2'], remote.cmd_volume_rename,
     {'ref': 'v1', 'new_name': 'v2'}),
    (['volume', 'revert', 'v1', 's1'], remote.cmd_volume_revert,
     {'ref': 'v1', 'snapshot': 's1'}),
    (['volume', 'flatten', 'v1'], remote.cmd_volume_flatten,
     {'no_wait': False}),
    (['volume', 'flatten', 'v1', '--no-wait'], remote.cmd_volume_flatten,
     {'no_wait': True}),
    (['snapshot', 'list', '--volume', 'v1'], remote.cmd_snapshot_list,
     {'volume': 'v1'}),
    (['snapshot', 'show', 's1'], remote.cmd_snapshot_show, {'ref': 's1'}),
    (['snapshot', 'create', 'v1', 's1', '--id', SID],
     remote.cmd_snapshot_create, {'volume': 'v1', 'name': 's1', 'id': SID}),
    (['snapshot', 'delete', 's1'], remote.cmd_snapshot_delete, {}),
    (['export', 'list'], remote.cmd_export_list, {'volume': None}),
    (['export', 'show', VID], remote.cmd_export_show, {'id': VID}),
    (['export', 'create', 'v1', '--host', '10.0.0.1', '--host',
      '10.0.0.0/24', '--read-only'], remote.cmd_export_create,
     {'ref': 'v1', 'hosts': ['10.0.0.1', '10.0.0.0/24'],
      'read_only': True, 'id': None}),
    (['export', 'delete', VID], remote.cmd_export_delete, {'id': VID}),
    (['job', 'list'], remote.cmd_job_list, {}),
    (['job', 'show', JID], remote.cmd_job_show, {'id': JID}),
    (['vg', 'show', 'pv0'], vg.cmd_vg_show, {'format': 'table'}),
    (['vg', 'check', 'pv0', '--format', 'json'], vg.cmd_vg_check,
     {'format': 'json'}),
], ids=lambda x: ' '.join(x) if isinstance(x, list) else '')
def test_commands_parse(argv, func, attrs):
    args = parse(*argv)
    assert args.func is func
    for key, value in attrs.items():
        assert getattr(args, key) == value, key


def test_defaults_and_environment(monkeypatch):
    monkeypatch.delenv(cli.URL_ENV, raising=False)
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    args = parse('pool', 'list')
    assert (args.url, args.token, args.ca_file, args.format) == \
        ('http://127.0.0.1:8790', None, None, 'table')
    monkeypatch.setenv(cli.URL_ENV, 'https://node:8790')
    monkeypatch.setenv(cli.TOKEN_ENV, 'from-env')
    args = parse('pool', 'list')
    assert (args.url, args.token) == ('https://node:8790', 'from-env')


@pytest.mark.parametrize('argv', [
    ['--url', 'http://a:1', '--token', 't', '--format', 'json',
     '--ca-file', 'ca.pem', 'volume', 'list'],
    ['volume', 'list', '--url', 'http://a:1', '--token', 't', '--format',
     'json', '--ca-file', 'ca.pem'],
    ['--url', 'http://a:1', '--format', 'json', 'volume', 'list',
     '--token', 't', '--ca-file', 'ca.pem'],
], ids=['before', 'after', 'mixed'])
def test_global_options_go_before_or_after_the_command(argv):
    args = parse(*argv)
    assert (args.url, args.token, args.format, args.ca_file) == \
        ('http://a:1', 't', 'json', 'ca.pem')


@pytest.mark.parametrize('argv', [
    ['volume', 'create', 'v', '1G', '--thin', '--thick'],
    ['volume', 'create', 'v', '1G', '--from-snapshot', 's',
     '--from-volume', 'v'],
    ['volume', 'create', 'v'],
    ['export', 'create', 'v1'],
    ['volume'],
    ['volume', 'frobnicate'],
    ['--format', 'yaml', 'status'],
    ['job', 'show'],
], ids=lambda x: ' '.join(x))
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == exits.USAGE
    assert 'usage' in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(['--help'])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert 'exit codes:' in out
    for line in exits.EPILOG.splitlines()[1:]:
        assert line in out
    with pytest.raises(SystemExit):
        cli.main(['volume', 'create', '--help'])
    assert '7  unavailable' in capsys.readouterr().out


def test_serve_runs_the_service_command(capsys):
    # The service's own option parser answers: serve got its arguments.
    with pytest.raises(SystemExit) as exc:
        cli.main(['serve', '--help'])
    assert exc.value.code == 0
    assert 'storage-engine serve' in capsys.readouterr().out


# -- the exit code table ------------------------------------------------------

@pytest.mark.parametrize('exc, code', [
    (errors.InvalidArgument, 2), (errors.InvalidName, 2),
    (errors.InvalidSize, 2), (errors.WrongKind, 2),
    (ms_errors.InvalidStoreURL, 2),
    (errors.NotFound, 3), (errors.VolumeNotFound, 3),
    (errors.SnapshotNotFound, 3), (ms_errors.NotFound, 3),
    (errors.AlreadyExists, 4), (ms_errors.KeyExists, 4), (errors.Busy, 4),
    (errors.GroupInUse, 9), (errors.GroupLocked, 4),
    (ms_errors.RevisionMismatch, 4), (errors.ReadOnly, 4),
    (errors.NoSpace, 5), (ms_errors.Exhausted, 5),
    (errors.Unauthorized, 6),
    (errors.Unavailable, 7), (ms_errors.StoreUnavailable, 7),
    (errors.EngineError, 8), (errors.MetadataError, 8),
    (errors.DeviceError, 8), (errors.GroupClosed, 8),
    (client_mod.JobTimeout, 8), (ms_errors.StoreError, 8),
    (errors.GroupInUse, 9),
], ids=lambda x: getattr(x, '__name__', str(x)))
def test_exit_codes(exc, code):
    assert exits.for_error(exc('x')) == code


# -- name resolution ----------------------------------------------------------

class Listing:
    """The two list calls name resolution makes, over fixed objects."""

    def __init__(self, volumes=(), snapshots=()):
        self._volumes, self._snapshots = list(volumes), list(snapshots)
        self.calls = []

    def volumes(self, pool=None, name=None):
        self.calls.append(('volumes', name))
        return [v for v in self._volumes if name in (None, v['name'])]

    def snapshots(self, volume_id=None, name=None):
        self.calls.append(('snapshots', name))
        return [s for s in self._snapshots if name in (None, s['name'])]


def test_an_id_is_taken_as_it_is():
    listing = Listing()
    assert refs.volume_id(listing, VID) == VID
    assert refs.snapshot_id(listing, VID.upper()) == VID
    assert refs.volume_or_snapshot_id(listing, VID.replace('-', '')) == VID
    assert listing.calls == []


def test_names_are_looked_up():
    listing = Listing([{'id': VID, 'name': 'v1'}],
                      [{'id': SID, 'name': 's1'}])
    assert refs.volume_id(listing, 'v1') == VID
    assert refs.snapshot_id(listing, 's1') == SID
    assert refs.volume_or_snapshot_id(listing, 's1') == SID
    assert refs.volume_or_snapshot_id(listing, 'v1') == VID
    assert listing.calls[:2] == [('volumes', 'v1'), ('snapshots', 's1')]


@pytest.mark.parametrize('call, cls', [
    (refs.volume_id, errors.VolumeNotFound),
    (refs.snapshot_id, errors.SnapshotNotFound),
    (refs.volume_or_snapshot_id, errors.NotFound),
])
def test_a_missing_name_is_not_found(call, cls):
    with pytest.raises(cls, match='nope not found') as exc:
        call(Listing([{'id': VID, 'name': 'v1'}]), 'nope')
    assert exits.for_error(exc.value) == exits.NOT_FOUND


def test_an_ambiguous_name_is_refused():
    listing = Listing([{'id': VID, 'name': 'x'}], [{'id': SID, 'name': 'x'}])
    with pytest.raises(errors.InvalidArgument, match='ambiguous') as exc:
        refs.volume_or_snapshot_id(listing, 'x')
    assert VID in str(exc.value) and SID in str(exc.value)


# -- output -------------------------------------------------------------------

@pytest.mark.parametrize('n, text', [
    (0, '0B'), (512, '512B'), (1500, '1.5KiB'), (1024, '1KiB'),
    (10 << 30, '10GiB'), (3650722201, '3.4GiB'), (4031 * MiB, '3.9GiB'),
    (1 << 60, '1024PiB'), (1536 << 50, '1536PiB'),
    (None, '-'),
])
def test_sizes_for_people(n, text):
    assert output.size(n) == text


@pytest.mark.parametrize('seconds, text', [
    (5.7, '5s'), (65, '1m5s'), (3 * 3600 + 120, '3h2m'),
    (2 * 86400 + 3 * 3600 + 59, '2d3h'),
])
def test_durations(seconds, text):
    assert output.duration(seconds) == text


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_draws_only_on_a_terminal():
    job = {'state': 'running', 'progress': {'percent': 50.0}}
    pipe = io.StringIO()
    bar = output.ProgressBar('flatten v1', pipe, width=10)
    bar(job)
    bar.close()
    assert pipe.getvalue() == ''
    tty = Terminal()
    bar = output.ProgressBar('flatten v1', tty, width=10)
    bar(job)
    bar(dict(job, state='succeeded'))
    bar.close()
    text = tty.getvalue()
    assert text.startswith('\rflatten v1 [#####-----]  50.0% running')
    assert '\rflatten v1 [##########] 100.0% succeeded' in text
    assert text.endswith('\n')


def test_a_table_of_nothing_prints_nothing(capsys):
    output.table([], ['A', 'B'])
    assert capsys.readouterr().out == ''


# -- commands against scripted answers ----------------------------------------

@pytest.fixture
def server(monkeypatch):
    s = cannedhttp.CannedServer().start()
    monkeypatch.setenv(cli.URL_ENV, s.url)
    monkeypatch.setenv(cli.TOKEN_ENV, 'secret')
    monkeypatch.setattr(client_mod, 'MIN_WAIT', 0.0)
    monkeypatch.setattr(client_mod, 'MAX_WAIT', 0.0)
    yield s
    s.stop()


def test_show_by_name_table_and_json(capsys, server):
    server.answer('GET', '/volumes', (200, {'volumes': [VOLUME]}))
    server.answer('GET', '/volumes/' + VID, (200, VOLUME))
    code, out, err = run(capsys, 'volume', 'show', 'v1')
    assert (code, err) == (0, '')
    lines = dict(line.split(None, 1) for line in out.splitlines()
                 if not line.startswith(('has parent', 'created')))
    assert lines['id'] == VID
    assert lines['size'] == '10GiB (10737418240 bytes)'
    assert lines['allocated'] == '3.4GiB'
    assert server.sent('GET', '/volumes')[0].query == 'name=v1'
    code, out, err = run(capsys, 'volume', 'show', VID, '--format', 'json')
    assert (code, err) == (0, '')
    assert json.loads(out) == VOLUME


def test_list_json_is_the_list(capsys, server):
    server.answer('GET', '/volumes', (200, {'volumes': [VOLUME]}))
    code, out, _err = run(capsys, '--format', 'json', 'volume', 'list')
    assert code == 0
    assert json.loads(out) == [VOLUME]
    code, out, _err = run(capsys, 'volume', 'list')
    header, row = out.splitlines()
    assert header.split() == ['NAME', 'POOL', 'SIZE', 'TYPE', 'ALLOCATED',
                              'PARENT', 'STATUS', 'ID']
    assert row.split() == ['v1', 'default', '10GiB', 'thin', '3.4GiB', 'no',
                           'available', VID]


@pytest.mark.parametrize('status, body, code', [
    (400, error('invalid_name', 'name bad!name is invalid'), 2),
    (404, error('volume_not_found', 'volume v1 not found'), 3),
    (409, error('already_exists', 'v1 exists'), 4),
    (409, error('group_locked', 'in use'), 4),
    (507, error('no_space', 'pool default is full'), 5),
    (401, error('unauthorized', 'wrong token'), 6),
    (503, error('unavailable', 'node is starting'), 7),
    (500, error('device_error', 'I/O error on pv0'), 8),
    (502, '<html>\n<h1>Bad Gateway</h1>\n</html>', 8),
], ids=lambda x: str(x) if isinstance(x, int) else None)
def test_errors_become_exit_codes_and_one_line(capsys, server, status, body,
                                               code):
    server.answer('POST', '/volumes', (status, body))
    rc, out, err = run(capsys, 'volume', 'create', 'v1', '1G')
    assert (rc, out) == (code, '')
    assert err.startswith('storage-engine: error: ')
    assert err.count('\n') == 1
    if isinstance(body, dict):
        assert err == 'storage-engine: error: %s\n' \
            % body['error']['message']


def test_an_unreachable_node_exits_7(capsys, monkeypatch):
    url = 'http://127.0.0.1:%d' % cannedhttp.closed_port()
    monkeypatch.setattr(client_mod, 'MAX_WAIT', 0.0)
    monkeypatch.setattr(client_mod, 'MIN_WAIT', 0.0)
    code, out, err = run(capsys, '--url', url, 'status')
    assert (code, out) == (7, '')
    assert err == 'storage-engine: error: storage node at %s is ' \
        'unreachable: connection refused\n' % url


def test_a_bad_size_is_refused_before_asking_the_node(capsys, server):
    code, out, err = run(capsys, 'volume', 'create', 'v1', '10Q')
    assert (code, out) == (2, '')
    assert "'10Q'" in err
    assert server.sent() == []


def test_a_bad_id_is_refused_before_asking_the_node(capsys, server):
    code, _out, err = run(capsys, 'export', 'show', 'not-a-uuid')
    assert code == 2 and 'not a valid UUID' in err
    assert server.sent() == []


def test_create_sends_what_was_asked(capsys, server):
    server.answer('GET', '/snapshots',
                  (200, {'snapshots': [{'id': SID, 'name': 's1'}]}))
    server.answer('POST', '/volumes', (201, VOLUME))
    code, _out, _err = run(capsys, 'volume', 'create', 'c1', '10G', '--thick',
                           '--from-snapshot', 's1', '--id', VID)
    assert code == 0
    sent = server.sent('POST', '/volumes')[0].json()
    assert len(sent.pop('incarnation')) == 32
    assert sent == {
        'id': VID, 'name': 'c1', 'size': 10 << 30, 'provisioning': 'thick',
        'source': {'snapshot_id': SID}}


def _job(state, err=None):
    return {'id': JID, 'kind': 'flatten', 'volume_id': VID, 'state': state,
            'progress': {'done': 1, 'total': 2, 'percent': 50.0},
            'error': err, 'created_at': '2026-01-01T00:00:00Z',
            'finished_at': None}


def test_a_failed_job_exits_1(capsys, server):
    server.answer('POST', '/volumes/%s/flatten' % VID,
                  (202, _job('running')))
    server.answer('GET', '/jobs/' + JID, (200, _job('running')), (200, _job(
        'failed', {'code': 'device_error', 'message': 'I/O error'})))
    code, out, err = run(capsys, '--format', 'json', 'volume', 'flatten',
                         VID)
    assert code == exits.PROBLEMS
    assert json.loads(out)['state'] == 'failed'
    # Not a terminal: no progress bar, only the error.
    assert err == 'storage-engine: error: job %s failed: I/O error\n' % JID


def _check_report(errors=(), notes=()):
    return {'pool': 'p1', 'group': 'p1', 'ok': not errors,
            'errors': list(errors), 'notes': list(notes),
            'stats': {'volumes': 2, 'snapshots': 1}}


def test_pool_check_prints_what_vg_check_prints(capsys, server):
    server.answer('POST', '/pools/p1/check', (200, _check_report()))
    code, out, err = run(capsys, 'pool', 'check', 'p1')
    assert (code, out, err) == (0, 'p1: consistent\n', '')
    assert len(server.sent('POST', '/pools/p1/check')) == 1
    damaged = _check_report(errors=['journal records 4 to 5 were lost'],
                            notes=['a note'])
    server.answer('POST', '/pools/p1/check', (200, damaged))
    code, out, err = run(capsys, 'pool', 'check', 'p1')
    assert (code, err) == (exits.PROBLEMS, '')
    assert out == 'ERROR: journal records 4 to 5 were lost\n' \
        'note: a note\np1: 1 problem(s)\n'
    server.answer('POST', '/pools/p1/check', (200, damaged))
    code, out, _err = run(capsys, 'pool', 'check', 'p1', '--format', 'json')
    assert code == exits.PROBLEMS
    assert json.loads(out) == damaged


def test_pool_check_of_an_unknown_pool_exits_3(capsys, server):
    server.answer('POST', '/pools/nope/check',
                  (404, error('not_found', 'pool nope not found')))
    code, out, err = run(capsys, 'pool', 'check', 'nope')
    assert (code, out) == (exits.NOT_FOUND, '')
    assert err == 'storage-engine: error: pool nope not found\n'


def test_status_of_a_node_that_is_not_ready(capsys, server):
    node = {'name': 'n1', 'version': '1.0', 'uptime': 75.0,
            'nbd': {'host': '127.0.0.1', 'port': 10809, 'tls_mode': 'off'},
            'stats': {'pools': 0, 'volumes': 0, 'snapshots': 0,
                      'exports': 0, 'nbd_connections': 0, 'jobs_running': 0,
                      'capacity': {'total': 0, 'free': 0, 'allocated': 0,
                                   'provisioned': 0}}}
    server.answer('GET', '/ready', (503, error('unavailable', 'starting')))
    server.answer('GET', '/node', (200, node))
    server.answer('GET', '/pools', (200, {'pools': []}))
    code, out, _err = run(capsys, 'status')
    assert code == exits.UNAVAILABLE
    assert 'n1 (version 1.0), up 1m15s' in out
    assert 'no: starting' in out
    code, out, _err = run(capsys, 'status', '--format', 'json')
    assert json.loads(out) == {'ready': False, 'node': node, 'pools': []}
