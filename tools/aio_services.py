#!/usr/bin/env python3
"""The services of the all-in-one (tools/all-in-one.sh), under one data
directory: a private RabbitMQ and MariaDB, and cinder-api,
cinder-scheduler and cinder-volume configured for our backend. (The
storage node is started and stopped by devstack/lib/storage-engine's
functions, called by the script; this module only finds it.)

Everything lives below DATA (the checkout's ``data``)::

    aio.env       ports, names and passwords chosen on the first run
    run/          PID files (and the digest of the cinder.conf the
                  running Cinder services were started with)
    log/          every service's log; log/rabbitmq/ RabbitMQ's own
    node/         the storage node: configuration, SQLite metadata,
                  its file-backed volume group (default.pv0), API token
    rabbitmq/     RabbitMQ's configuration, Erlang cookie and mnesia
    mariadb/      MariaDB's data directory
    cinder/       cinder.conf, api-paste.ini, state, locks
    demo/         what the demo attaches (os-brick's state, mount point)

Each service is found again by its PID file and is alive only if that
process is alive and its command line is the service's (a PID reused by
another program is not taken for it): a second run reuses what runs, and
:func:`stop_cinder` and :func:`stop_infra` stop exactly the processes the
files name. RabbitMQ and MariaDB run as root here (as the storage node
and Cinder do), not as their Debian users: DATA may be below a directory
only root can enter (a checkout in /root), and every file there then
belongs to one user, so ``rm -rf data`` resets all.

Ports are chosen once: the usual ones for Cinder's API (8776), the node's
API (8790) and NBD exports (10809...) when they are free, free ones
otherwise, and private ones for RabbitMQ (AMQP, distribution, epmd, as
tests/fixtures/rabbitmq.py does) and MariaDB. A port taken by another
program while its service is stopped is replaced by a free one; the
configurations written on each run follow, and Cinder's services restart
when their cinder.conf changed.

This module needs only the standard library to be imported, to stop
services and to print their status; starting them and waiting for them
uses the virtualenv's kombu, PyMySQL, requests and python-cinderclient.

    aio_services.py [--data-dir DATA] prepare | start-infra |
                    write-cinder-conf | start-cinder | status |
                    stop-cinder | stop-infra | endpoint
"""

import argparse
import configparser
import dataclasses
import datetime
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TOP not in sys.path:
    sys.path.insert(0, TOP)

from tests.fixtures import host  # noqa: E402  (pytest-free: see test)

RABBITMQ_BIN = '/usr/lib/rabbitmq/bin'
EPMD = '/usr/bin/epmd'
MARIADBD = '/usr/sbin/mariadbd'
INSTALL_DB = '/usr/bin/mariadb-install-db'
# Erlang distribution on loopback only, for the broker and its CLI.
LOOPBACK_DIST = '-kernel inet_dist_use_interface {127,0,0,1}'

BACKEND = 'engine-lvm'
CINDER_HOST = 'aio'
CINDER_SERVICES = ('cinder-api', 'cinder-scheduler', 'cinder-volume')
# The highest microversion python-cinderclient 9.10 speaks.
API_VERSION = '3.71'
USER_ID = 'aio-demo'
PROJECT_ID = 'aio-demo'
REPORT_INTERVAL = 2
SERVICE_DOWN_TIME = 10

NBD_PORT_COUNT = 32
# Port settings: preferred port (None: any free one), the service owning it.
PORTS = {
    'AIO_CINDER_PORT': (8776, 'cinder-api'),
    'AIO_NODE_API_PORT': (8790, 'storage-node'),
    'AIO_RABBIT_PORT': (None, 'rabbitmq'),
    'AIO_RABBIT_DIST_PORT': (None, 'rabbitmq'),
    'AIO_EPMD_PORT': (None, 'rabbitmq'),
    'AIO_DB_PORT': (None, 'mariadb'),
}
NBD_PORTS = ('AIO_NBD_PORTS', 10809, 'storage-node')

RABBIT_READY_TIMEOUT = 90.0
DB_READY_TIMEOUT = 60.0
CINDER_READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


class AioError(Exception):
    """A failure to report to the user as it is (no traceback)."""


def say(text: str) -> None:
    print(text, flush=True)


# -- the data directory -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each thing lives below the data directory."""

    data: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.data, *parts)

    @property
    def settings(self) -> str:
        return self.path('aio.env')

    def pid_file(self, service: str) -> str:
        return self.path('run', service + '.pid')

    def log_file(self, service: str) -> str:
        return self.path('log', service + '.log')

    @property
    def node_conf(self) -> str:
        return self.path('node', 'storage-engine.conf')

    @property
    def cinder_conf(self) -> str:
        return self.path('cinder', 'cinder.conf')

    @property
    def db_socket(self) -> str:
        # Short: a Unix socket's path has at most 107 bytes.
        return self.path('run', 'mariadb.sock')

    def make(self) -> None:
        for part in ('run', 'log', 'node', 'rabbitmq', 'mariadb',
                     'cinder', 'demo'):
            os.makedirs(self.path(part), exist_ok=True)
        # Passwords and the node's token are in there.
        os.chmod(self.data, 0o700)


# -- settings -----------------------------------------------------------------

def read_settings(path: str) -> dict:
    """``KEY=VALUE`` lines (the file bash sources); {} when missing."""
    settings = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith('#') and '=' in line:
                    key, value = line.split('=', 1)
                    settings[key.strip()] = value.strip()
    except FileNotFoundError:
        pass
    return settings


def write_settings(path: str, settings: dict) -> None:
    lines = ['# The all-in-one\'s settings, chosen on its first run '
             '(tools/aio_services.py).',
             '# Sourced by tools/all-in-one.sh; `rm -rf data` resets '
             'them with the rest.']
    for key in sorted(settings):
        value = str(settings[key])
        # Sourced by bash: only values that need no quoting.
        if not value or not all(c.isalnum() or c in '@._:-/'
                                for c in value):
            raise ValueError('unsafe setting %s=%r' % (key, value))
        lines.append('%s=%s' % (key, value))
    tmp = path + '.tmp'
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
              'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(tmp, path)


def port_free(port: int) -> bool:
    """Can a server listen on 127.0.0.1:``port``?"""
    with socket.socket() as sock:
        # As servers do: a port in TIME_WAIT only is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def parse_range(text: str) -> range:
    first, last = (int(p) for p in text.split(':'))
    return range(first, last + 1)


def pick_port(preferred: int | None, taken: set) -> int:
    if preferred and preferred not in taken and port_free(preferred):
        return preferred
    for _ in range(100):
        port = free_port()
        if port not in taken:
            return port
    raise AioError('no free TCP port on 127.0.0.1')


def pick_range(preferred: int, count: int, taken: set) -> range:
    def usable(ports):
        return ports[-1] < 65536 and not taken.intersection(ports) and \
            all(port_free(p) for p in ports)

    ports = range(preferred, preferred + count)
    if usable(ports):
        return ports
    for _ in range(200):
        base = free_port()
        ports = range(base, base + count)
        if usable(ports):
            return ports
    raise AioError('no %d consecutive free TCP ports on 127.0.0.1' % count)


def choose_settings(old: dict, running: set) -> dict:
    """The settings to use: ``old`` ones kept where they still work.

    A port is kept when its service runs (``running``: service names), or
    when it is free; otherwise (first run, or another program took it
    while the service was stopped) a new one is chosen.
    """
    new = dict(old)
    tag = new.setdefault('AIO_TAG', secrets.token_hex(4))
    new.setdefault('AIO_RABBIT_NODENAME', 'se-aio-%s@localhost' % tag)
    new.setdefault('AIO_RABBIT_PASSWORD', secrets.token_hex(16))
    new.setdefault('AIO_DB_PASSWORD', secrets.token_hex(16))
    taken = set()

    def keep(service, ports):
        if service in running:
            return True
        return not taken.intersection(ports) and \
            all(port_free(p) for p in ports)

    for key, (preferred, service) in PORTS.items():
        try:
            port = int(new[key])
        except (KeyError, ValueError):
            port = None
        if port is None or not keep(service, [port]):
            port = pick_port(preferred, taken)
        new[key] = str(port)
        taken.add(port)
    key, preferred, service = NBD_PORTS
    try:
        ports = parse_range(new[key])
    except (KeyError, ValueError):
        ports = None
    if ports is None or not keep(service, ports):
        ports = pick_range(preferred, NBD_PORT_COUNT, taken)
    new[key] = '%d:%d' % (ports[0], ports[-1])
    return new


class Settings:
    """The data directory's layout and its chosen settings."""

    def __init__(self, data_dir: str):
        self.layout = Layout(os.path.abspath(data_dir))
        self.values = read_settings(self.layout.settings)

    def __getitem__(self, key: str) -> str:
        try:
            return self.values[key]
        except KeyError:
            raise AioError('%s has no %s: run tools/all-in-one.sh first'
                           % (self.layout.settings, key)) from None

    def port(self, key: str) -> int:
        return int(self[key])

    @property
    def cinder_endpoint(self) -> str:
        return 'http://127.0.0.1:%d/v3' % self.port('AIO_CINDER_PORT')

    @property
    def node_url(self) -> str:
        return 'http://127.0.0.1:%d' % self.port('AIO_NODE_API_PORT')

    def node_token(self) -> str:
        with open(self.layout.path('node', 'api-token')) as f:
            return f.read().strip()

    @property
    def transport_url(self) -> str:
        return 'rabbit://cinder:%s@127.0.0.1:%d/cinder' % (
            self['AIO_RABBIT_PASSWORD'], self.port('AIO_RABBIT_PORT'))

    @property
    def database_url(self) -> str:
        return 'mysql+pymysql://cinder:%s@127.0.0.1:%d/cinder' \
            '?charset=utf8mb4' % (self['AIO_DB_PASSWORD'],
                                  self.port('AIO_DB_PORT'))


# -- processes ----------------------------------------------------------------

def alive(pid: int) -> bool:
    """Is ``pid`` a live process (a zombie is not)?"""
    try:
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rpartition(')')[2].split()[0] != 'Z'
    except OSError:
        return False


def cmdline(pid: int) -> list:
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().decode(errors='replace').split('\0')
    except OSError:
        return []


def _pid_in(pid_file: str) -> int | None:
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 1 else None


def running_pid(pid_file: str, *needles: str) -> int | None:
    """The PID in ``pid_file`` if that process is alive and its command
    line contains every one of ``needles`` (so it is the service, not
    another process that got the PID since).
    """
    pid = _pid_in(pid_file)
    if pid is None or not alive(pid):
        return None
    args = ' '.join(cmdline(pid))
    if not all(n in args for n in needles):
        return None
    return pid


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def group_members(pgid: int) -> list:
    """Live processes of process group ``pgid``."""
    members = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                fields = f.read().rpartition(')')[2].split()
        except OSError:
            continue
        if fields[0] != 'Z' and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def stop_pid(name: str, pid: int, timeout: float = STOP_TIMEOUT,
             group: bool = False) -> None:
    """SIGTERM ``pid`` (SIGKILL after ``timeout``); with ``group``, then
    SIGKILL what is left of its process group (it led its own session:
    API workers, per-backend children, privsep daemons).
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if not wait_gone(pid, timeout):
        say('  %s (PID %d) did not stop on SIGTERM; killing it'
            % (name, pid))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(pid, 10)
    if group and group_members(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def spawn(args: list, log_path: str, pid_file: str, **kwargs) -> int:
    """Start ``args`` in its own session, output to ``log_path``; record
    its PID (the service's own: no shell in between) in ``pid_file``.
    """
    with open(log_path, 'ab') as log:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, **kwargs)
    with open(pid_file, 'w') as f:
        f.write('%d\n' % process.pid)
    # Not waited for: it outlives this process.
    return process.pid


def log_tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return '(no %s)\n' % path


def poll(what: str, check, timeout: float, pid: int | None = None,
         logs=()) -> None:
    """Call ``check()`` until it is true; fail after ``timeout`` seconds,
    or as soon as process ``pid`` is gone, with the end of ``logs``.
    """
    deadline = time.monotonic() + timeout
    error = None
    while True:
        if pid is not None and not alive(pid):
            failed = '%s: the process (PID %d) exited' % (what, pid)
        elif time.monotonic() > deadline:
            failed = '%s: not ready after %ds (last error: %s)' % (
                what, timeout, error)
        else:
            try:
                if check():
                    return
                error = None
            except AioError:
                raise
            except Exception as exc:
                error = '%s: %s' % (type(exc).__name__, exc)
            time.sleep(0.1)
            continue
        raise AioError(failed + ''.join(
            '\n--- end of %s ---\n%s' % (p, log_tail(p)) for p in logs))


# -- services -----------------------------------------------------------------

def node_pid(s: Settings) -> int | None:
    return running_pid(s.layout.pid_file('storage-node'),
                       'storage-engine', 'serve', s.layout.node_conf)


def rabbit_env(s: Settings) -> dict:
    top = s.layout.path('rabbitmq')
    return dict(
        os.environ,
        # The Erlang cookie of the broker and its CLI: DATA/rabbitmq.
        HOME=top,
        RABBITMQ_NODENAME=s['AIO_RABBIT_NODENAME'],
        RABBITMQ_NODE_IP_ADDRESS='127.0.0.1',
        RABBITMQ_NODE_PORT=s['AIO_RABBIT_PORT'],
        RABBITMQ_DIST_PORT=s['AIO_RABBIT_DIST_PORT'],
        ERL_EPMD_ADDRESS='127.0.0.1',
        ERL_EPMD_PORT=s['AIO_EPMD_PORT'],
        RABBITMQ_CONF_ENV_FILE=os.path.join(top, 'rabbitmq-env.conf'),
        RABBITMQ_CONFIG_FILE=os.path.join(top, 'rabbitmq.conf'),
        RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(top, 'advanced.config'),
        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(top, 'enabled_plugins'),
        RABBITMQ_MNESIA_BASE=os.path.join(top, 'mnesia'),
        RABBITMQ_LOG_BASE=s.layout.path('log', 'rabbitmq'),
        RABBITMQ_PID_FILE=s.layout.pid_file('rabbitmq'),
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=LOOPBACK_DIST,
        RABBITMQ_CTL_ERL_ARGS=LOOPBACK_DIST)


def rabbit_pid(s: Settings) -> int | None:
    # beam.smp's command line names HOME (DATA/rabbitmq), not the node.
    return running_pid(s.layout.pid_file('rabbitmq'), 'beam',
                       '-home %s ' % s.layout.path('rabbitmq'))


def amqp_consumers(s: Settings, queue: str) -> int:
    """How many consumers RabbitMQ's ``queue`` has (0: no such queue)."""
    import amqp
    import kombu

    with kombu.Connection(s.transport_url.replace('rabbit://', 'amqp://', 1),
                          connect_timeout=2) as connection:
        try:
            return connection.channel().queue_declare(
                queue=queue, passive=True).consumer_count
        except amqp.exceptions.NotFound:
            return 0


def _amqp_login(s: Settings) -> bool:
    import kombu

    connection = kombu.Connection(
        s.transport_url.replace('rabbit://', 'amqp://', 1),
        connect_timeout=2)
    try:
        connection.connect()
        return True
    finally:
        connection.release()


def start_rabbitmq(s: Settings) -> int | None:
    """Start the broker (``-detached``: it returns at once) unless it
    runs; returns its PID when it already ran.
    """
    pid = rabbit_pid(s)
    if pid:
        return pid
    for program in ('rabbitmq-server', 'rabbitmqctl'):
        if not os.access(os.path.join(RABBITMQ_BIN, program), os.X_OK):
            raise AioError('%s/%s not found: tools/setup-env.sh aio '
                           'installs rabbitmq-server' % (RABBITMQ_BIN,
                                                         program))
    top = s.layout.path('rabbitmq')
    os.makedirs(s.layout.path('log', 'rabbitmq'), exist_ok=True)
    with open(os.path.join(top, 'rabbitmq.conf'), 'w') as conf:
        # The vhost and user are made when the broker first starts on an
        # empty mnesia directory (the password is kept in aio.env).
        conf.write('listeners.tcp.1 = 127.0.0.1:%s\n'
                   'default_vhost = cinder\n'
                   'default_user = cinder\n'
                   'default_pass = %s\n'
                   'default_permissions.configure = .*\n'
                   'default_permissions.read = .*\n'
                   'default_permissions.write = .*\n'
                   % (s['AIO_RABBIT_PORT'], s['AIO_RABBIT_PASSWORD']))
    with open(os.path.join(top, 'enabled_plugins'), 'w') as plugins:
        plugins.write('[].\n')
    try:
        os.unlink(s.layout.pid_file('rabbitmq'))
    except FileNotFoundError:
        pass
    startup_log = s.layout.path('log', 'rabbitmq', 'startup.log')
    with open(startup_log, 'ab') as log:
        # Upstream's script, not Debian's wrapper (which would run it as
        # the rabbitmq user, who may not reach DATA).
        status = subprocess.run(
            [os.path.join(RABBITMQ_BIN, 'rabbitmq-server'), '-detached'],
            env=rabbit_env(s), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, cwd=top, timeout=60).returncode
    if status:
        raise AioError('rabbitmq-server -detached exited with status %d:\n%s'
                       % (status, log_tail(startup_log)))
    return None


def wait_rabbitmq(s: Settings) -> int:
    logs = (s.layout.path('log', 'rabbitmq', 'startup.log'),
            s.layout.path('log', 'rabbitmq',
                          '%s.log' % s['AIO_RABBIT_NODENAME']))
    deadline = time.monotonic() + RABBIT_READY_TIMEOUT
    # -detached: the PID file appears once the node runs.
    poll('RabbitMQ', lambda: rabbit_pid(s), RABBIT_READY_TIMEOUT, logs=logs)
    pid = rabbit_pid(s)
    poll('RabbitMQ %s on 127.0.0.1:%s' % (s['AIO_RABBIT_NODENAME'],
                                          s['AIO_RABBIT_PORT']),
         lambda: _amqp_login(s), max(1.0, deadline - time.monotonic()),
         pid=pid, logs=logs)
    return pid


def stop_rabbitmq(s: Settings) -> None:
    env = rabbit_env(s)
    pid = rabbit_pid(s)
    if pid:
        say('  RabbitMQ (PID %d): stopping' % pid)
        try:
            # Returns once the PID in the file has exited.
            subprocess.run(
                [os.path.join(RABBITMQ_BIN, 'rabbitmqctl'), '-n',
                 s['AIO_RABBIT_NODENAME'], 'stop',
                 s.layout.pid_file('rabbitmq')],
                env=env, stdin=subprocess.DEVNULL, capture_output=True,
                cwd=s.layout.path('rabbitmq'), timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        if alive(pid):
            stop_pid('RabbitMQ', pid, timeout=10)
    # The epmd on the broker's own port: started by it, used by no one
    # else (it refuses to exit while a node is registered).
    if os.access(EPMD, os.X_OK) and not port_free(int(env['ERL_EPMD_PORT'])):
        subprocess.run([EPMD, '-port', env['ERL_EPMD_PORT'], '-kill'],
                       env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=10)
    if not rabbit_pid(s):
        try:
            os.unlink(s.layout.pid_file('rabbitmq'))
        except FileNotFoundError:
            pass


def mariadb_pid(s: Settings) -> int | None:
    return running_pid(s.layout.pid_file('mariadb'), 'mariadbd',
                       s.layout.path('mariadb', 'data'))


def _db_connect(s: Settings, **kwargs):
    import pymysql

    return pymysql.connect(unix_socket=s.layout.db_socket, user='root',
                           password='', connect_timeout=2, **kwargs)


def start_mariadb(s: Settings) -> int | None:
    """Make the data directory once, start mariadbd unless it runs;
    returns its PID when it already ran.
    """
    pid = mariadb_pid(s)
    if pid:
        return pid
    for program in (MARIADBD, INSTALL_DB):
        if not os.access(program, os.X_OK):
            raise AioError('%s not found: tools/setup-env.sh aio installs '
                           'mariadb-server' % program)
    if len(s.layout.db_socket.encode()) > 107:
        raise AioError('%s: too long for a Unix socket; use a checkout '
                       'with a shorter path' % s.layout.db_socket)
    top = s.layout.path('mariadb')
    datadir = os.path.join(top, 'data')
    stamp = os.path.join(top, 'installed')
    log_path = s.layout.log_file('mariadb')
    if not os.path.exists(stamp):
        # A data directory an earlier run left half made is made again.
        shutil.rmtree(datadir, ignore_errors=True)
        with open(log_path, 'ab') as log:
            # root@localhost without a password, over the socket only:
            # the server listens on loopback, for this machine's root.
            status = subprocess.run(
                [INSTALL_DB, '--no-defaults', '--datadir=' + datadir,
                 '--user=root', '--auth-root-authentication-method=normal',
                 '--skip-test-db'],
                stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, timeout=300).returncode
        if status:
            raise AioError('mariadb-install-db exited with status %d:\n%s'
                           % (status, log_tail(log_path)))
        with open(stamp, 'w') as f:
            f.write('%s\n' % datadir)
    spawn([MARIADBD, '--no-defaults', '--datadir=' + datadir,
           '--user=root', '--bind-address=127.0.0.1',
           '--port=' + s['AIO_DB_PORT'], '--socket=' + s.layout.db_socket,
           '--pid-file=' + os.path.join(top, 'mariadbd.pid'),
           '--log-error=' + log_path, '--skip-name-resolve',
           '--innodb-buffer-pool-size=64M', '--max-connections=500'],
          s.layout.path('log', 'mariadbd.out'), s.layout.pid_file('mariadb'))
    return None


def wait_mariadb(s: Settings) -> int:
    pid = _pid_in(s.layout.pid_file('mariadb'))
    if pid is None:
        raise AioError('MariaDB: no PID in %s' % s.layout.pid_file('mariadb'))
    poll('MariaDB on 127.0.0.1:%s' % s['AIO_DB_PORT'],
         lambda: _db_connect(s).close() or True, DB_READY_TIMEOUT, pid=pid,
         logs=(s.layout.log_file('mariadb'),
               s.layout.path('log', 'mariadbd.out')))
    # Cinder's database and user (again each run: idempotent).
    connection = _db_connect(s, autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute('CREATE DATABASE IF NOT EXISTS cinder '
                           'CHARACTER SET utf8mb4')
            cursor.execute("CREATE OR REPLACE USER cinder@'127.0.0.1' "
                           "IDENTIFIED BY %s", (s['AIO_DB_PASSWORD'],))
            cursor.execute("GRANT ALL PRIVILEGES ON cinder.* TO "
                           "cinder@'127.0.0.1'")
    finally:
        connection.close()
    return pid


def stop_mariadb(s: Settings) -> None:
    pid = mariadb_pid(s)
    if pid:
        say('  MariaDB (PID %d): stopping' % pid)
        stop_pid('MariaDB', pid)
    try:
        os.unlink(s.layout.pid_file('mariadb'))
    except FileNotFoundError:
        pass


# -- Cinder -------------------------------------------------------------------

def venv_bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def cinder_pid(s: Settings, service: str) -> int | None:
    return running_pid(s.layout.pid_file(service), service,
                       s.layout.cinder_conf)


def write_cinder_conf(s: Settings) -> None:
    """cinder.conf without its backend section, which
    devstack/lib/storage-engine's configure_storage_engine_backend writes
    (tools/all-in-one.sh calls it next); api-paste.ini beside it.
    """
    top = s.layout.path('cinder')
    for part in ('state', 'locks', 'conversion'):
        os.makedirs(os.path.join(top, part), exist_ok=True)
    api_paste = os.path.join(sys.prefix, 'etc', 'cinder', 'api-paste.ini')
    if not os.path.exists(api_paste):
        raise AioError('%s not found: is cinder installed in %s '
                       '(tools/setup-env.sh)?' % (api_paste, sys.prefix))
    # Found next to cinder.conf (oslo.config's find_file).
    shutil.copy(api_paste, os.path.join(top, 'api-paste.ini'))
    privsep_helper = venv_bin('privsep-helper')
    conf = configparser.RawConfigParser()
    conf.optionxform = str
    conf['DEFAULT'] = {
        'host': CINDER_HOST,
        'my_ip': '127.0.0.1',
        'auth_strategy': 'noauth',
        'transport_url': s.transport_url,
        'enabled_backends': BACKEND,
        'default_volume_type': BACKEND,
        'state_path': os.path.join(top, 'state'),
        'osapi_volume_listen': '127.0.0.1',
        'osapi_volume_listen_port': s['AIO_CINDER_PORT'],
        'osapi_volume_workers': '1',
        'report_interval': str(REPORT_INTERVAL),
        'service_down_time': str(SERVICE_DOWN_TIME),
        'image_conversion_dir': os.path.join(top, 'conversion'),
        # More than Cinder's 10 volumes a project: a demo left behind
        # (--keep) must not stop the next.
        'quota_volumes': '100',
        'quota_snapshots': '100',
        'quota_gigabytes': '1000',
    }
    conf['database'] = {'connection': s.database_url}
    conf['coordination'] = {
        'backend_url': 'file://' + os.path.join(top, 'state')}
    conf['oslo_concurrency'] = {'lock_path': os.path.join(top, 'locks')}
    # Root already, and no sudo: privsep daemons start from this
    # virtualenv's helper directly.
    conf['privsep_osbrick'] = {'helper_command': privsep_helper}
    conf['cinder_sys_admin'] = {'helper_command': privsep_helper}
    path = s.layout.cinder_conf
    tmp = path + '.tmp'
    # The database and broker passwords are in there.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
              'w') as out:
        conf.write(out)
    os.replace(tmp, path)


def _digest(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def cinder_client(s: Settings, version: str | None = None):
    """A python-cinderclient v3 Client, noauth (an admin context)."""
    from cinderclient import api_versions
    from cinderclient import client as cinder_client_mod
    from cinderclient.contrib import noauth
    from keystoneauth1 import session as ks_session

    endpoint = s.cinder_endpoint
    if version is None:
        version = min(
            api_versions.APIVersion(API_VERSION),
            api_versions.APIVersion(
                cinder_client_mod.get_highest_client_server_version(
                    endpoint))).get_string()
    auth = noauth.CinderNoAuthPlugin(USER_ID, PROJECT_ID, endpoint=endpoint)
    # The endpoint as given: with auth_strategy = noauth, Cinder's URLs
    # have no project id (the plugin's own endpoint would add it).
    return cinder_client_mod.Client(
        version, session=ks_session.Session(auth=auth),
        os_endpoint=endpoint)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _volume_backend_ready(s: Settings, since, log_start: int) -> bool:
    """The scheduler and volume service are up, and the scheduler holds
    pool stats of our backend (sent after ``since``, naive UTC, if given).
    """
    # A driver that fails to initialise leaves the service running but
    # never reporting stats: say so now, not at the deadline.
    _driver_failed(s, log_start)
    # The service list (microversion 3.49 and later: with each backend's
    # state) and the pool list are answers cinder-api gets from the
    # scheduler by RPC calls: a call made before the scheduler listens is
    # lost, and cinder-api waits a minute for its answer.
    if not amqp_consumers(s, 'cinder-scheduler'):
        return False
    client = cinder_client(s)
    up = {(svc.binary, svc.host) for svc in client.services.list()
          if svc.state == 'up'}
    volume_host = '%s@%s' % (CINDER_HOST, BACKEND)
    if ('cinder-scheduler', CINDER_HOST) not in up or \
            ('cinder-volume', volume_host) not in up:
        return False
    for pool in client.pools.list(detailed=True):
        if not pool.name.startswith(volume_host + '#'):
            continue
        stamp = getattr(pool, 'timestamp', None)
        if since is None or (stamp and datetime.datetime.fromisoformat(
                stamp.rstrip('Z')).replace(tzinfo=None) >= since):
            return True
    return False


def _driver_failed(s: Settings, log_start: int) -> bytes:
    """cinder-volume's log since ``log_start``; raise if it says that the
    driver failed to initialise (the service then runs on, never ready).
    """
    with open(s.layout.log_file('cinder-volume'), 'rb') as log:
        log.seek(log_start)
        text = log.read()
    if b'Failed to initialize driver' in text:
        raise AioError('the driver of %s@%s failed to initialise; the end '
                       'of %s:\n%s' % (CINDER_HOST, BACKEND,
                                       s.layout.log_file('cinder-volume'),
                                       log_tail(s.layout.log_file(
                                           'cinder-volume'))))
    return text


def _wait_volume_listening(s: Settings, log_start: int, check) -> None:
    """Until cinder-volume says its driver is ready and it listens for
    RPC (Cinder 29's message; without it, on after half the time allowed).
    """
    deadline = time.monotonic() + CINDER_READY_TIMEOUT / 2
    marker = b'Driver post RPC initialization completed'
    ready = check(lambda: marker in _driver_failed(s, log_start))
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.1)


def _api_answers(s: Settings) -> bool:
    import requests

    url = 'http://127.0.0.1:%d/' % s.port('AIO_CINDER_PORT')
    return requests.get(url, timeout=2).status_code in (200, 300)


def start_cinder(s: Settings) -> dict:
    """Reuse the running services if they run with this cinder.conf;
    otherwise (re)start all three (after ``cinder-manage db sync``).
    Wait until a volume can be made on our backend; make the default
    volume type. Returns {service: (PID, reused)}.
    """
    conf = s.layout.cinder_conf
    digest_file = s.layout.path('run', 'cinder.conf.sha256')
    pids = {svc: cinder_pid(s, svc) for svc in CINDER_SERVICES}
    try:
        with open(digest_file) as f:
            started_with = f.read().strip()
    except OSError:
        started_with = None
    reuse = all(pids.values()) and started_with == _digest(conf)
    logs = [s.layout.log_file(svc) for svc in CINDER_SERVICES]
    if reuse:
        since, log_start = None, 0
        try:
            log_start = os.path.getsize(s.layout.log_file('cinder-volume'))
        except OSError:
            pass
        result = {svc: (pid, True) for svc, pid in pids.items()}
    else:
        if any(pids.values()):
            say('  cinder.conf changed, or a service is missing: '
                'restarting them')
            stop_cinder(s, clean_host=False)
        log_path = s.layout.log_file('cinder-manage')
        with open(log_path, 'ab') as log:
            status = subprocess.run(
                [venv_bin('cinder-manage'), '--config-file', conf, 'db',
                 'sync'], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, timeout=300).returncode
        if status:
            raise AioError('cinder-manage db sync exited with status %d:\n%s'
                           % (status, log_tail(log_path)))
        try:
            log_start = os.path.getsize(s.layout.log_file('cinder-volume'))
        except OSError:
            log_start = 0
        since = _utcnow() - datetime.timedelta(seconds=1)
        result = {}
    deadline = time.monotonic() + CINDER_READY_TIMEOUT

    def check(ready):
        def run():
            for svc, (pid, _) in result.items():
                if not alive(pid):
                    raise AioError('%s (PID %d) exited; the end of %s:\n%s'
                                   % (svc, pid, s.layout.log_file(svc),
                                      log_tail(s.layout.log_file(svc))))
            return ready()
        return run

    try:
        if not reuse:
            for svc in ('cinder-api', 'cinder-volume'):
                result[svc] = (spawn([venv_bin(svc), '--config-file', conf],
                                     s.layout.log_file(svc),
                                     s.layout.pid_file(svc)), False)
            # The scheduler asks the volume services for their pools once,
            # when it starts, and a volume service sends them once when its
            # driver is ready, then only every minute or two: started
            # together, each may miss the other. So the scheduler starts
            # once cinder-volume listens.
            _wait_volume_listening(s, log_start, check)
            svc = 'cinder-scheduler'
            result[svc] = (spawn([venv_bin(svc), '--config-file', conf],
                                 s.layout.log_file(svc),
                                 s.layout.pid_file(svc)), False)
            with open(digest_file, 'w') as f:
                f.write(_digest(conf) + '\n')
        poll('cinder-api on %s' % s.cinder_endpoint,
             check(lambda: _api_answers(s)), CINDER_READY_TIMEOUT, logs=logs)
        poll('cinder-volume %s@%s' % (CINDER_HOST, BACKEND),
             check(lambda: _volume_backend_ready(s, since, log_start)),
             max(1.0, deadline - time.monotonic()), logs=logs)
    except AioError:
        if not reuse:
            # Not left half-started.
            stop_cinder(s, clean_host=False)
        raise
    client = cinder_client(s)
    if not any(t.name == BACKEND for t in client.volume_types.list()):
        vtype = client.volume_types.create(BACKEND)
        vtype.set_keys({'volume_backend_name': BACKEND})
    return result


def clean_demo_host(s: Settings) -> list:
    """Undo what an interrupted demo left attached on this host: mounts
    below DATA, loop devices on files below it, nbdfuse processes serving
    files below it. Returns what it undid.
    """
    top = s.layout.data
    undone = []
    loops = host.loops_under(top)
    # nbdfuse mounts itself over the file a loop device is bound to: that
    # mount goes last, or the loop device could no longer be found by it.
    backing = set()
    for device in loops:
        name = os.path.basename(device)
        with open('/sys/class/block/%s/loop/backing_file' % name) as f:
            backing.add(f.read().strip())

    def umount(points):
        for point in reversed(points):
            host.run('umount', '-l', point, check=False)
            undone.append('mount %s' % point)

    umount([p for p in host.mount_points()
            if p.startswith(top + '/') and p not in backing])
    for device in loops:
        host.run('losetup', '-d', device, check=False)
        undone.append('loop device %s' % device)
    for pid in host.nbdfuse_under(top):
        stop_pid('nbdfuse', pid, timeout=10)
        undone.append('nbdfuse (PID %d)' % pid)
    umount([p for p in host.mount_points() if p.startswith(top + '/')])
    return undone


def stop_cinder(s: Settings, clean_host: bool = True) -> None:
    if clean_host:
        for what in clean_demo_host(s):
            say('  left by a demo: %s: removed' % what)
    pids = {svc: cinder_pid(s, svc) for svc in reversed(CINDER_SERVICES)}
    # All three at once: each takes seconds to finish its work.
    for svc, pid in pids.items():
        if pid:
            say('  %s (PID %d): stopping' % (svc, pid))
            os.kill(pid, signal.SIGTERM)
    for svc, pid in pids.items():
        if pid:
            stop_pid(svc, pid, group=True)
        else:
            # A service that died (killed) may have left children in its
            # group: workers of that service and this cinder.conf only.
            leader = _pid_in(s.layout.pid_file(svc))
            left = [p for p in (group_members(leader) if leader else [])
                    if svc in ' '.join(cmdline(p)) and
                    s.layout.cinder_conf in cmdline(p)]
            for child in left:
                say('  %s (PID %d, left by PID %d): stopping'
                    % (svc, child, leader))
                stop_pid(svc, child, timeout=10)
        try:
            os.unlink(s.layout.pid_file(svc))
        except FileNotFoundError:
            pass


def status(s: Settings) -> list:
    """(service, PID or None, where) of every service."""
    rows = []
    if s.values:
        rows.append(('rabbitmq', rabbit_pid(s), '127.0.0.1:%s (%s)' % (
            s['AIO_RABBIT_PORT'], s['AIO_RABBIT_NODENAME'])))
        rows.append(('mariadb', mariadb_pid(s),
                     '127.0.0.1:%s' % s['AIO_DB_PORT']))
        rows.append(('storage-node', node_pid(s), '%s, NBD ports %s' % (
            s.node_url, s['AIO_NBD_PORTS'])))
        rows += [(svc, cinder_pid(s, svc),
                  s.cinder_endpoint if svc == 'cinder-api' else '')
                 for svc in CINDER_SERVICES]
    return rows


# -- command line -------------------------------------------------------------

def _running_services(s: Settings) -> set:
    if not s.values:
        return set()
    return {name for name, pid, _ in status(s) if pid}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description='The services of tools/all-in-one.sh (see there).')
    parser.add_argument('--data-dir', default=os.path.join(TOP, 'data'))
    parser.add_argument('command', choices=(
        'prepare', 'start-infra', 'write-cinder-conf', 'start-cinder',
        'status', 'stop-cinder', 'stop-infra', 'endpoint'))
    args = parser.parse_args(argv)
    s = Settings(args.data_dir)
    try:
        if args.command == 'prepare':
            s.layout.make()
            values = choose_settings(s.values, _running_services(s))
            if values != s.values:
                write_settings(s.layout.settings, values)
        elif args.command == 'start-infra':
            begin = time.monotonic()
            rabbit = start_rabbitmq(s)
            db = start_mariadb(s)
            # Waited for even when it ran already: it must take logins.
            pid = wait_rabbitmq(s)
            say('RabbitMQ %s on 127.0.0.1:%s: %s (PID %d)' % (
                s['AIO_RABBIT_NODENAME'], s['AIO_RABBIT_PORT'],
                'already running' if rabbit else
                'ready in %.1fs' % (time.monotonic() - begin), pid))
            pid = wait_mariadb(s)
            say('MariaDB on 127.0.0.1:%s: %s (PID %d)' % (
                s['AIO_DB_PORT'], 'already running' if db else
                'ready in %.1fs' % (time.monotonic() - begin), pid))
        elif args.command == 'write-cinder-conf':
            write_cinder_conf(s)
        elif args.command == 'start-cinder':
            begin = time.monotonic()
            started = start_cinder(s)
            say('Cinder (%s) at %s, backend %s@%s#%s: %s' % (
                ', '.join('%s PID %d' % (svc, pid)
                          for svc, (pid, _) in started.items()),
                s.cinder_endpoint, CINDER_HOST, BACKEND, 'default',
                'already running' if all(r for _, r in started.values())
                else 'ready in %.1fs' % (time.monotonic() - begin)))
        elif args.command == 'status':
            rows = status(s)
            if not rows:
                say('nothing started yet (no %s)' % s.layout.settings)
            for name, pid, where in rows:
                say('  %-17s %-20s %s' % (
                    name, 'running (PID %d)' % pid if pid else 'stopped',
                    where))
        elif args.command == 'stop-cinder':
            if s.values:
                stop_cinder(s)
        elif args.command == 'stop-infra':
            if s.values:
                stop_mariadb(s)
                stop_rabbitmq(s)
        elif args.command == 'endpoint':
            say(s.cinder_endpoint)
    except AioError as exc:
        print('all-in-one: %s' % exc, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
