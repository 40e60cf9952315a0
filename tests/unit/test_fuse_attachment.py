"""What the NBD and AoE connectors share, without a server or a device:
the state directory's names, the helper processes it records (real
processes, started detached through spawn.py), and taking down what a
state directory says is attached.

Root commands run as this user through a plain executor (a function, as
os-brick's executor is); nothing here needs root. Attaching for real is
tests/functional/test_nbd_connector.py and test_aoe_connector.py.
"""

import os
import signal
import subprocess
import sys

import pytest

from os_brick_connectors import errors
from os_brick_connectors import fuse_attachment
from os_brick_connectors import host as host_mod
from os_brick_connectors import state


def run(*cmd, **kwargs):
    """os-brick's executor, as this user: (stdout, stderr) or an error."""
    proc = subprocess.run(cmd, input=kwargs.get('process_input'),
                          capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise OSError('%s failed (%d): %s' % (cmd[0], proc.returncode,
                                              proc.stderr))
    return proc.stdout, proc.stderr


@pytest.fixture
def host():
    return host_mod.Host(run)


@pytest.fixture
def paths(tmp_path):
    paths = state.StatePaths(str(tmp_path / 'run' / 'e1.2'))
    os.makedirs(paths.dir)
    return paths


@pytest.fixture
def started():
    """PIDs a test started; whatever is left of them is killed after."""
    pids = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


SUBJECT = errors.Subject(errors.AOE, 'AoE target e1.2 (any MAC)',
                         {'target': 'e1.2 (any MAC)'})

# A helper that says it is ready (its PID in the file argv[1]) and serves
# until stopped; argv[2] is the marker a helper's command line carries.
SERVER = [sys.executable, '-c',
          'import os, sys, time\n'
          'open(sys.argv[1], "w").write("%d\\n" % os.getpid())\n'
          'time.sleep(120)\n']
# One that fails first, saying why.
FAILING = [sys.executable, '-c',
           'import sys\n'
           'print("no answer on san0 within 3s", file=sys.stderr)\n'
           'sys.exit(2)\n']


def _start(host, helper, command, timeout=30):
    return helper.start(
        host, command + [helper.ready, helper.marker], lambda: True,
        timeout, exited=SUBJECT.unavailable,
        late=lambda tail: SUBJECT.error('late: %s' % tail),
        subject=str(SUBJECT))


# -- names --------------------------------------------------------------------

def test_plain_export_names_name_the_state_directory_and_others_are_hashed():
    assert state.StatePaths.for_export('/run/x', 'volume-1.a_b').dir == \
        '/run/x/volume-1.a_b'
    for name in ('../etc', 'a/b', '.hidden', 'x' * 129, 'vol ume'):
        got = state.StatePaths.for_export('/run/x', name).dir
        assert os.path.dirname(got) == '/run/x'
        assert os.path.basename(got).startswith('sha256-')
    assert state.StatePaths.for_export('/run/x', 'a/b') != \
        state.StatePaths.for_export('/run/x', 'a/c')


def test_the_state_directory_lists_every_file_of_nbdfuse_and_the_bridge(
        paths):
    files = set(paths.all_files())
    for helper in (paths.nbdfuse, paths.bridge):
        assert {helper.pidfile, helper.ready, helper.log} <= files
    assert {paths.disk, paths.socket, paths.nbd_device} <= files
    assert {os.path.dirname(f) for f in files} == {paths.dir}
    assert paths.nbdfuse.marker == paths.disk
    assert paths.bridge.marker == paths.socket


# -- helper processes ---------------------------------------------------------

def test_a_started_helper_is_recorded_recognised_and_stopped(
        host, paths, started):
    helper = paths.bridge
    pid = _start(host, helper, SERVER)
    started.append(pid)
    assert helper.pid() == pid
    assert helper.is_ready(pid)
    helper.stop(host, 30, unmounted=False, failed=SUBJECT.error)
    assert helper.pid() is None
    assert not host_mod.process_running(pid, None, helper.marker)


def test_a_helper_that_exits_first_is_reported_with_its_last_words(
        host, paths):
    with pytest.raises(errors.AoEExportUnavailable) as err:
        _start(host, paths.bridge, FAILING)
    assert isinstance(err.value, errors.ExportUnavailable)
    assert str(err.value) == ('AoE target e1.2 (any MAC) is not available '
                              'to this host: no answer on san0 within 3s')


def test_a_recorded_pid_of_some_other_process_is_not_trusted(
        host, paths, started):
    # A reused PID: a live process whose command line is not ours.
    other = subprocess.Popen([sys.executable, '-c', 'import time; '
                              'time.sleep(120)'])
    started.append(other.pid)
    with open(paths.bridge.pidfile, 'w') as f:
        f.write('%d\n' % other.pid)
    assert paths.bridge.pid() is None
    paths.bridge.stop(host, 30, unmounted=False, failed=SUBJECT.error)
    assert other.poll() is None, 'a process not ours was stopped'


# -- taking down --------------------------------------------------------------

def _attachment(host, paths, upstream=None):
    return fuse_attachment.FuseAttachment(
        host, paths, SUBJECT, ['nbd+unix:///e1.2?socket=' + paths.socket],
        read_only=False, timeout=30, upstream=upstream)


def test_clearing_removes_the_leftovers_of_processes_that_are_gone(
        host, paths):
    for name in (paths.disk, paths.nbdfuse.pidfile, paths.nbdfuse.log,
                 paths.bridge.ready):
        with open(name, 'w') as f:
            f.write('999999999\n')
    attachment = _attachment(host, paths)
    assert not attachment.serving()
    assert attachment.device() is None
    attachment.clear()
    assert not os.path.exists(paths.dir)
    # Nothing there: nothing to do, no error.
    attachment.clear()


def test_clearing_stops_the_upstream_and_only_then_removes_its_files(
        host, paths, started):
    bridge = fuse_attachment.Upstream(paths.bridge, lambda: None)
    pid = _start(host, paths.bridge, SERVER)
    started.append(pid)
    attachment = _attachment(host, paths, bridge)
    # The upstream alone runs: not serving, so a connect would start over.
    assert not attachment.serving()
    attachment.clear()
    assert not host_mod.process_running(pid, None, paths.socket)
    assert not os.path.exists(paths.dir)
