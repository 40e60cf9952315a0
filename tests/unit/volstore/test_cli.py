"""The ``storage-engine vg`` command: create, show, check, add-pv.

Exit codes: 0 success, 1 the check found problems, 2 bad usage or an
invalid argument, 3 not found, 4 conflict (already exists, in use), 9 a
check of a group a running process holds, with the message on stderr
(storage_engine/cli/exits.py has the whole table).
"""

import json
import os

import pytest

from storage_engine import cli
from storage_engine.volstore import layout
from storage_engine.volstore import VolumeGroup
from tests.unit.volstore.conftest import create_group
from tests.unit.volstore.conftest import CS
from tests.unit.volstore.conftest import data
from tests.unit.volstore.conftest import MiB
from tests.unit.volstore.conftest import overwrite
from tests.unit.volstore.conftest import PV_CLUSTERS
from tests.unit.volstore.conftest import write

SMALL = ['--cluster-size', '64K', '--journal-size', '256K']


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``storage-engine argv``."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def populated(pv0):
    with create_group(pv0, name='vgx') as vg:
        vg.create_volume('data', 2 * MiB)
        vg.create_volume('fat', MiB, thin=False)
        write(vg, 'data', 0, data(1, 3 * CS))
        vg.create_snapshot('data', 'snap')
    return pv0


# -- vg create ----------------------------------------------------------------

def test_create(capsys, pv0):
    code, out, err = run(capsys, 'vg', 'create', pv0 + ':64M', '--name',
                         'vgx', *SMALL)
    assert (code, err) == (0, '')
    assert out == 'created volume group vgx: 63MiB in 1 physical ' \
        'volume(s), cluster size 64KiB\n'
    assert os.path.getsize(pv0) == 64 * MiB
    with VolumeGroup.open(pv0) as vg:
        assert vg.name == 'vgx'
        assert vg.capacity().total == PV_CLUSTERS * CS
        assert vg.cluster_size == CS
        assert vg.journal.size == 256 * 1024


def test_create_with_two_pvs_and_defaults(capsys, tmp_path):
    pv0, pv1 = str(tmp_path / 'pv0'), str(tmp_path / 'pv1')
    code, out, _err = run(capsys, 'vg', 'create', pv0 + ':128M',
                          pv1 + ':64M')
    assert code == 0
    assert '2 physical volume(s)' in out and 'cluster size 1MiB' in out
    with VolumeGroup.open(pv0) as vg:
        assert vg.name == 'vg0'
        # PV0 keeps 1 MiB for its label and superblocks and 64 MiB for the
        # journal; PV1 only 1 MiB for its label.
        assert vg.capacity().total == (128 - 65 + 64 - 1) * MiB


@pytest.mark.parametrize('args, words', [
    (['--name', 'bad name'], ["'bad name'"]),
    (['--cluster-size', '3K'], ['power of two']),
    (['--cluster-size', 'lots'], ["'lots'"]),
    (['--journal-size', '60K'], ['journal size']),
], ids=['bad-name', 'cluster-3K', 'cluster-lots', 'journal-60K'])
def test_create_refuses_bad_parameters(capsys, pv0, args, words):
    code, out, err = run(capsys, 'vg', 'create', pv0 + ':64M', *SMALL,
                         *args)
    assert (code, out) == (2, '')
    assert err.startswith('storage-engine: error: ')
    for word in words:
        assert word in err
    assert not os.path.exists(pv0)


def test_create_refuses_a_bad_pv_size(capsys, pv0):
    code, _out, err = run(capsys, 'vg', 'create', pv0 + ':64Q', *SMALL)
    assert code == 2
    assert "'64Q'" in err
    assert not os.path.exists(pv0)


def test_create_refuses_a_pv_of_another_group(capsys, populated):
    code, out, err = run(capsys, 'vg', 'create', populated + ':64M',
                         *SMALL)
    assert (code, out) == (4, '')
    assert populated in err and 'already belongs' in err
    with VolumeGroup.open(populated) as vg:
        assert vg.name == 'vgx'
        assert [v.name for v in vg.volumes()] == ['data', 'fat']


def test_usage_errors_exit_2(capsys):
    for argv in ([], ['vg'], ['vg', 'frobnicate'], ['vg', 'show'],
                 ['vg', 'show', 'x', '--format', 'yaml']):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert 'usage' in capsys.readouterr().err


# -- vg show ------------------------------------------------------------------

def test_show_json(capsys, populated):
    code, out, err = run(capsys, 'vg', 'show', populated, '--format',
                         'json')
    assert (code, err) == (0, '')
    doc = json.loads(out)
    with VolumeGroup.open(populated, read_only=True) as vg:
        assert doc['name'] == 'vgx' and doc['uuid'] == vg.uuid
        cap = doc['capacity']
        assert cap['total'] == vg.capacity().total
        assert cap['free'] == vg.capacity().free
        assert cap['provisioned'] == 3 * MiB
        assert (cap['volumes'], cap['snapshots']) == (2, 1)
        ids = {v.name: v.id for v in vg.volumes() + vg.snapshots()}
    assert [(v['name'], v['kind'], v['size'], v['thin'], v['allocated'])
            for v in doc['volumes']] == [
        ('data', 'volume', 2 * MiB, True, 0),
        ('fat', 'volume', MiB, False, MiB)]
    assert [(s['name'], s['allocated'], s['origin_id'])
            for s in doc['snapshots']] == [('snap', 3 * CS, ids['data'])]
    assert [(p['index'], p['path']) for p in doc['physical_volumes']] == \
        [(0, populated)]


def test_show_table(capsys, populated):
    code, out, _err = run(capsys, 'vg', 'show', populated)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith('volume group vgx (')
    assert 'provisioned 3MiB' in lines[1]
    assert lines[3].split() == ['NAME', 'KIND', 'SIZE', 'TYPE', 'ALLOCATED',
                                'ID']
    rows = [line.split()[:5] for line in lines[4:]]
    assert rows == [['data', 'volume', '2MiB', 'thin', '0B'],
                    ['fat', 'volume', '1MiB', 'thick', '1MiB'],
                    ['snap', 'snapshot', '2MiB', 'thin', '192KiB']]


def test_show_of_an_empty_group_has_no_table(capsys, pv0):
    create_group(pv0).close()
    code, out, _err = run(capsys, 'vg', 'show', pv0)
    assert code == 0
    assert len(out.splitlines()) == 2


def test_show_changes_nothing_on_disk(capsys, populated):
    with open(populated, 'rb') as f:
        before = f.read()
    assert run(capsys, 'vg', 'show', populated)[0] == 0
    with open(populated, 'rb') as f:
        assert f.read() == before


def test_show_of_a_missing_pv(capsys, tmp_path):
    path = str(tmp_path / 'missing')
    code, out, err = run(capsys, 'vg', 'show', path)
    assert (code, out) == (3, '')
    assert err == 'storage-engine: error: physical volume %s does not ' \
        'exist\n' % path


def test_show_of_an_open_group(capsys, populated):
    with VolumeGroup.open(populated):
        code, _out, err = run(capsys, 'vg', 'show', populated)
    assert code == 4
    assert populated in err and 'in use' in err


# -- vg check -----------------------------------------------------------------

def test_check_of_a_consistent_group(capsys, populated):
    code, out, err = run(capsys, 'vg', 'check', populated)
    assert (code, out, err) == (0, 'vgx: consistent\n', '')


def test_check_json(capsys, populated):
    code, out, _err = run(capsys, 'vg', 'check', populated, '--format',
                          'json')
    assert code == 0
    doc = json.loads(out)
    assert (doc['ok'], doc['group'], doc['errors']) == (True, 'vgx', [])
    assert (doc['stats']['volumes'], doc['stats']['snapshots']) == (2, 1)


def test_check_of_a_damaged_group_exits_1(capsys, populated):
    for slot in layout.SUPERBLOCK_SLOTS:
        overwrite(populated, slot, data(slot, 512))
    code, out, _err = run(capsys, 'vg', 'check', populated)
    assert code == 1
    assert 'ERROR: %s has no valid superblock' % populated in out
    assert out.splitlines()[-1].endswith('1 problem(s)')
    code, out, _err = run(capsys, 'vg', 'check', populated, '--format',
                          'json')
    assert code == 1
    assert json.loads(out)['ok'] is False


def test_check_of_a_group_in_use_exits_9(capsys, populated):
    # Not "problems found": the check did not run.
    with VolumeGroup.open(populated):
        for fmt in ('table', 'json'):
            code, out, err = run(capsys, 'vg', 'check', populated,
                                 '--format', fmt)
            assert (code, out) == (9, '')
            assert err == (
                'storage-engine: error: volume group vgx (%s) is in use by '
                'a running process (storage-engine serve?); check it online '
                'with `storage-engine pool check vgx`\n' % populated)


def test_check_of_a_missing_pv_exits_3(capsys, tmp_path):
    path = str(tmp_path / 'missing')
    code, _out, err = run(capsys, 'vg', 'check', path)
    assert code == 3
    assert path in err


# -- vg add-pv ----------------------------------------------------------------

def test_add_pv(capsys, populated, tmp_path):
    pv1 = str(tmp_path / 'pv1')
    code, out, err = run(capsys, 'vg', 'add-pv', populated, pv1 + ':32M')
    assert (code, err) == (0, '')
    assert out == 'volume group vgx now has 94MiB\n'
    with VolumeGroup.open(populated) as vg:
        assert [p.path for p in vg.physical_volumes()] == [populated, pv1]
        assert vg.capacity().total == 94 * MiB


def test_add_pv_of_an_existing_file(capsys, populated, tmp_path):
    pv1 = str(tmp_path / 'pv1')
    with open(pv1, 'wb') as f:
        f.truncate(16 * MiB)
    code, out, _err = run(capsys, 'vg', 'add-pv', populated, pv1)
    assert code == 0
    assert out == 'volume group vgx now has 78MiB\n'


def test_add_pv_refuses_a_pv_of_another_group(capsys, populated, tmp_path):
    other = str(tmp_path / 'other')
    create_group(other, size=32 * MiB).close()
    code, out, err = run(capsys, 'vg', 'add-pv', populated, other)
    assert (code, out) == (4, '')
    assert other in err and 'already belongs' in err
    with VolumeGroup.open(populated) as vg:
        assert len(vg.physical_volumes()) == 1


def test_add_pv_of_a_missing_file_without_size(capsys, populated, tmp_path):
    missing = str(tmp_path / 'missing')
    code, _out, err = run(capsys, 'vg', 'add-pv', populated, missing)
    assert code == 3
    assert missing in err
    assert not os.path.exists(missing)
