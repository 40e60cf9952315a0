"""The all-in-one's pieces, cheaply: tools/all-in-one.sh's syntax and
--help, and the Python helpers it runs (tools/aio_services.py,
tools/aio_demo.py), without starting any service. The whole stack is
brought up by running the script itself (README).
"""

import configparser
import os
import socket
import subprocess
import sys
import time
import types

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOOLS = os.path.join(TOP, 'tools')
SCRIPT = os.path.join(TOOLS, 'all-in-one.sh')
sys.path.insert(0, TOOLS)

import aio_demo  # noqa: E402
import aio_services  # noqa: E402


# -- the script ---------------------------------------------------------------

def test_script_is_valid_bash():
    result = subprocess.run(['bash', '-n', SCRIPT], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_help_says_how_to_run_stop_and_reset(tmp_path):
    result = subprocess.run([SCRIPT, '--help'], capture_output=True,
                            text=True, cwd=tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for words in ('tools/all-in-one.sh stop', 'rm -rf data', 'data/log/',
                  'data/run/', 'noauth', '--keep'):
        assert words in text


def test_unknown_command_fails_with_the_usage():
    result = subprocess.run([SCRIPT, 'start-everything'],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith('Usage: tools/all-in-one.sh')


def test_the_main_job_imports_no_pytest():
    # The helpers are shared with the tests (tests/fixtures/host.py) but
    # the main job's virtualenv needs no test runner.
    code = ('import sys; sys.modules["pytest"] = None; '
            'sys.path.insert(0, %r); import aio_services, aio_demo'
            % TOOLS)
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- settings -----------------------------------------------------------------

def _listening():
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen()
    return sock


def test_first_settings_have_private_rabbitmq_and_persist(tmp_path):
    values = aio_services.choose_settings({}, running=set())
    assert values['AIO_RABBIT_NODENAME'] == \
        'se-aio-%s@localhost' % values['AIO_TAG']
    ports = [int(values[k]) for k in aio_services.PORTS]
    assert len(set(ports)) == len(ports)
    assert 5672 not in ports and 4369 not in ports
    first, last = map(int, values['AIO_NBD_PORTS'].split(':'))
    assert last - first + 1 == aio_services.NBD_PORT_COUNT
    assert not set(range(first, last + 1)).intersection(ports)
    path = str(tmp_path / 'aio.env')
    aio_services.write_settings(path, values)
    assert aio_services.read_settings(path) == values
    assert os.stat(path).st_mode & 0o777 == 0o600
    # Nothing changes on a second run.
    assert aio_services.choose_settings(values, running=set()) == values


def test_a_port_taken_while_its_service_is_stopped_is_replaced():
    sock = _listening()
    try:
        busy = sock.getsockname()[1]
        old = aio_services.choose_settings({}, running=set())
        old['AIO_CINDER_PORT'] = str(busy)
        new = aio_services.choose_settings(old, running=set())
        assert new['AIO_CINDER_PORT'] != str(busy)
        assert aio_services.port_free(int(new['AIO_CINDER_PORT']))
        # Its own service holding it: kept.
        kept = aio_services.choose_settings(old, running={'cinder-api'})
        assert kept['AIO_CINDER_PORT'] == str(busy)
        # Everything else as it was.
        for key in set(old) - {'AIO_CINDER_PORT'}:
            assert new[key] == old[key]
    finally:
        sock.close()


def test_settings_refuse_what_bash_would_misread(tmp_path):
    with pytest.raises(ValueError):
        aio_services.write_settings(str(tmp_path / 'aio.env'),
                                    {'AIO_X': 'a b; rm -rf /'})


def test_missing_setting_says_to_run_the_script(tmp_path):
    s = aio_services.Settings(str(tmp_path))
    with pytest.raises(aio_services.AioError, match='all-in-one.sh'):
        s.cinder_endpoint
    assert aio_services.status(s) == []


# -- processes ----------------------------------------------------------------

def test_running_pid_checks_liveness_and_command_line(tmp_path):
    pid_file = str(tmp_path / 'x.pid')
    proc = subprocess.Popen(['sleep', '60'])
    try:
        with open(pid_file, 'w') as f:
            f.write('%d\n' % proc.pid)
        assert aio_services.running_pid(pid_file, 'sleep', '60') == \
            proc.pid
        # Another program that got the PID is not the service.
        assert aio_services.running_pid(pid_file, 'mariadbd') is None
    finally:
        proc.kill()
        proc.wait()
    assert aio_services.running_pid(pid_file, 'sleep') is None
    with open(pid_file, 'w') as f:
        f.write('garbage')
    assert aio_services.running_pid(pid_file) is None
    assert aio_services.running_pid(str(tmp_path / 'none.pid')) is None


def test_stop_pid_ends_the_service_and_its_process_group(tmp_path):
    pid_file = str(tmp_path / 'svc.pid')
    # A "service" whose child ignores SIGTERM: the group kill ends it.
    pid = aio_services.spawn(
        ['bash', '-c', "trap '' TERM; sleep 60 & trap - TERM; wait"],
        str(tmp_path / 'svc.log'), pid_file)
    deadline = time.monotonic() + 10
    while len(aio_services.group_members(pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert aio_services.running_pid(pid_file, 'bash') == pid
    aio_services.stop_pid('svc', pid, timeout=10, group=True)
    assert aio_services.group_members(pid) == []
    assert aio_services.running_pid(pid_file, 'bash') is None


def test_nothing_to_clean_on_a_host_without_demo_leftovers(tmp_path):
    s = aio_services.Settings(str(tmp_path))
    assert aio_services.clean_demo_host(s) == []


# -- cinder.conf --------------------------------------------------------------

def test_cinder_conf_is_noauth_on_loopback_with_the_private_services(
        tmp_path):
    s = aio_services.Settings(str(tmp_path / 'data'))
    s.layout.make()
    s.values = aio_services.choose_settings({}, running=set())
    aio_services.write_cinder_conf(s)
    conf = configparser.RawConfigParser()
    conf.read(s.layout.cinder_conf)
    default = conf['DEFAULT']
    assert default['auth_strategy'] == 'noauth'
    assert default['osapi_volume_listen'] == '127.0.0.1'
    assert default['osapi_volume_listen_port'] == s['AIO_CINDER_PORT']
    assert default['enabled_backends'] == aio_services.BACKEND
    assert default['default_volume_type'] == aio_services.BACKEND
    assert default['transport_url'] == 'rabbit://cinder:%s@127.0.0.1:%s/' \
        'cinder' % (s['AIO_RABBIT_PASSWORD'], s['AIO_RABBIT_PORT'])
    assert ':%s/cinder' % s['AIO_DB_PORT'] in conf['database']['connection']
    for section in ('privsep_osbrick', 'cinder_sys_admin'):
        assert os.access(conf[section]['helper_command'], os.X_OK)
    for key in ('state_path', 'image_conversion_dir'):
        assert default[key].startswith(s.layout.data + '/')
    assert conf['oslo_concurrency']['lock_path'].startswith(
        s.layout.data + '/')
    assert os.path.exists(os.path.join(s.layout.path('cinder'),
                                       'api-paste.ini'))
    # Passwords inside: its owner's only.
    assert os.stat(s.layout.cinder_conf).st_mode & 0o777 == 0o600


# -- the demo's clean-up ------------------------------------------------------

class _Manager:
    """A python-cinderclient manager that forgets what it deletes."""

    def __init__(self, name, log, objects):
        self.name = name
        self.log = log
        self.objects = {o.id: o for o in objects}

    def list(self, **kwargs):
        return list(self.objects.values())

    def get(self, ident):
        from cinderclient import exceptions

        if ident not in self.objects:
            raise exceptions.NotFound(404)
        return self.objects[ident]

    def delete(self, ident):
        self.log.append((self.name, self.objects.pop(ident).name))


def _obj(ident, name, **kwargs):
    return types.SimpleNamespace(id=ident, name=name, status='available',
                                 **kwargs)


def test_leftovers_are_deleted_clones_first_then_snapshots_volumes_types():
    log = []
    client = types.SimpleNamespace(
        volume_types=_Manager('type', log, [_obj('t', 'aio-demo-1-thin'),
                                            _obj('o', 'engine-lvm')]),
        volumes=_Manager('volume', log, [
            _obj('c', 'aio-demo-1-clone', snapshot_id='s'),
            _obj('v', 'aio-demo-1-volume', snapshot_id=None),
            _obj('u', 'users-own', snapshot_id=None)]),
        volume_snapshots=_Manager('snapshot', log,
                                  [_obj('s', 'aio-demo-1-snapshot')]),
        attachments=types.SimpleNamespace(list=lambda **kw: [],
                                          delete=lambda ident: None))
    settings = aio_services.Settings('/nonexistent')
    demo = aio_demo.Demo(settings, client, None, {}, keep=False)
    assert demo.delete(demo.leftovers()) == []
    assert log == [('volume', 'aio-demo-1-clone'),
                   ('snapshot', 'aio-demo-1-snapshot'),
                   ('volume', 'aio-demo-1-volume'),
                   ('type', 'aio-demo-1-thin')]


def test_size_text():
    assert aio_demo.size_text(0) == '0 B'
    assert aio_demo.size_text(16 * 1024 * 1024) == '16 MiB'
    assert aio_demo.size_text(3 * 1024 ** 3) == '3 GiB'
