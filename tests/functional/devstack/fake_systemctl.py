"""A stand-in for ``systemctl``, as much of it as devstack's service
functions (``run_process``, ``stop_process``) and the devstack plugin use,
for a machine without systemd.

    fake_systemctl.py daemon-reload
    fake_systemctl.py enable|disable|is-enabled|start|stop|restart UNIT
    fake_systemctl.py is-active [--quiet] UNIT
    fake_systemctl.py show --property=NAME --value UNIT
    fake_systemctl.py status UNIT [--no-pager]

What it keeps of systemd's behaviour, because the plugin depends on it:

- A unit is what the last ``daemon-reload`` read: the unit file in
  ``FAKE_SYSTEMD_UNIT_DIR`` and its drop-ins (``UNIT.d/*.conf``, in name
  order, later settings adding to or replacing earlier ones). A unit file
  or drop-in written after the reload is not seen by ``start``.
- ``start`` runs ExecStart (split as systemd does, no shell) with only the
  unit's Environment, stdin from /dev/null and stdout and stderr to the
  unit's journal (``FAKE_SYSTEMD_JOURNAL/UNIT.log``), in a session of its
  own, and returns without waiting: the service is not a child, nor a
  job, of the shell that started it. Starting an active unit does nothing.
- ``stop`` sends SIGTERM to the main process only (devstack's units have
  KillMode=process), SIGKILL after TimeoutStopSec (at most
  ``FAKE_SYSTEMD_STOP_TIMEOUT`` seconds here).
- ``show --property=MainPID`` is 0 when the unit is not running.

What it cannot do: change user or capabilities. What a service was started
with (its loaded unit, User and AmbientCapabilities included) is recorded
in ``FAKE_SYSTEMD_STATE/UNIT.started.json`` for the tests to check, and
every start in ``FAKE_SYSTEMD_STATE/starts`` (one JSON line each).
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

UNIT_DIR = os.environ.get('FAKE_SYSTEMD_UNIT_DIR', '')
STATE = os.environ.get('FAKE_SYSTEMD_STATE', '')
JOURNAL = os.environ.get('FAKE_SYSTEMD_JOURNAL', '')
STOP_TIMEOUT = float(os.environ.get('FAKE_SYSTEMD_STOP_TIMEOUT', '30'))
# systemd's own default PATH for services.
DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'


def fail(message: str, code: int = 1):
    print('systemctl: %s' % message, file=sys.stderr)
    sys.exit(code)


def parse_unit(text: str, unit: dict) -> None:
    """Add the settings of unit file (or drop-in) ``text`` to ``unit``:
    {section: {key: [values]}}; an empty value resets the key's list.
    """
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in '#;':
            continue
        if line.startswith('[') and line.endswith(']'):
            section = unit.setdefault(line[1:-1], {})
            continue
        if section is None or '=' not in line:
            fail('bad unit line %r' % line)
        key, value = (part.strip() for part in line.split('=', 1))
        if value == '':
            section[key] = []
        else:
            section.setdefault(key, []).append(value)


def load(name: str) -> dict:
    unit: dict = {}
    with open(os.path.join(UNIT_DIR, name)) as f:
        parse_unit(f.read(), unit)
    dropins = os.path.join(UNIT_DIR, name + '.d')
    if os.path.isdir(dropins):
        for conf in sorted(os.listdir(dropins)):
            if conf.endswith('.conf'):
                with open(os.path.join(dropins, conf)) as f:
                    parse_unit(f.read(), unit)
    return unit


def state_path(*parts) -> str:
    return os.path.join(STATE, *parts)


def loaded() -> dict:
    try:
        with open(state_path('loaded.json')) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def loaded_unit(name: str) -> dict:
    units = loaded()
    if name not in units:
        fail('Unit %s not found.' % name, 5)
    return units[name]


def alive(pid: int) -> bool:
    try:
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rpartition(')')[2].split()[0] != 'Z'
    except OSError:
        return False


def main_pid(name: str) -> int:
    try:
        with open(state_path(name + '.pid')) as f:
            pid = int(f.read())
    except (FileNotFoundError, ValueError):
        return 0
    return pid if alive(pid) else 0


def environment(unit: dict) -> dict:
    env = {'PATH': DEFAULT_PATH}
    for value in unit.get('Service', {}).get('Environment', []):
        for assignment in shlex.split(value):
            key, _, val = assignment.partition('=')
            env[key] = val
    return env


def daemon_reload(args):
    units = {}
    for name in sorted(os.listdir(UNIT_DIR)) if os.path.isdir(UNIT_DIR) \
            else []:
        if name.endswith('.service') and \
                os.path.isfile(os.path.join(UNIT_DIR, name)):
            units[name] = load(name)
    with open(state_path('loaded.json'), 'w') as f:
        json.dump(units, f, indent=1)


def enable(args):
    loaded_unit(args[0])
    open(state_path(args[0] + '.enabled'), 'w').close()


def disable(args):
    try:
        os.unlink(state_path(args[0] + '.enabled'))
    except FileNotFoundError:
        pass


def is_enabled(args):
    enabled = os.path.exists(state_path(args[0] + '.enabled'))
    print('enabled' if enabled else 'disabled')
    sys.exit(0 if enabled else 1)


def start(args):
    name = args[0]
    unit = loaded_unit(name)
    if main_pid(name):
        return
    service = unit.get('Service', {})
    argv = shlex.split(service['ExecStart'][-1])
    os.makedirs(JOURNAL, exist_ok=True)
    with open(os.path.join(JOURNAL, name + '.log'), 'ab') as journal, \
            open(os.devnull, 'rb') as devnull:
        process = subprocess.Popen(argv, stdin=devnull, stdout=journal,
                                   stderr=journal, cwd='/',
                                   env=environment(unit),
                                   start_new_session=True)
    with open(state_path(name + '.pid'), 'w') as f:
        f.write(str(process.pid))
    record = {'unit': name, 'pid': process.pid, 'argv': argv,
              'loaded': unit}
    with open(state_path(name + '.started.json'), 'w') as f:
        json.dump(record, f, indent=1)
    with open(state_path('starts'), 'a') as f:
        f.write(json.dumps(record) + '\n')


def stop(args):
    name = args[0]
    loaded_unit(name)
    pid = main_pid(name)
    if pid:
        os.kill(pid, signal.SIGTERM)
        timeout = min(float(loaded()[name].get('Service', {}).get(
            'TimeoutStopSec', ['90'])[-1]), STOP_TIMEOUT)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            while alive(pid):
                time.sleep(0.05)
    try:
        os.unlink(state_path(name + '.pid'))
    except FileNotFoundError:
        pass


def restart(args):
    stop(args)
    start(args)


def is_active(args):
    quiet = '--quiet' in args
    name = [a for a in args if not a.startswith('-')][0]
    active = bool(main_pid(name))
    if not quiet:
        print('active' if active else 'inactive')
    sys.exit(0 if active else 3)


def show(args):
    props = []
    names = []
    value_only = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == '--value':
            value_only = True
        elif arg.startswith('--property='):
            props.append(arg.split('=', 1)[1])
        elif arg in ('-p', '--property'):
            i += 1
            props.append(args[i])
        else:
            names.append(arg)
        i += 1
    name = names[0]
    unit = loaded().get(name, {})
    values = {
        'MainPID': str(main_pid(name)),
        'ActiveState': 'active' if main_pid(name) else 'inactive',
        'Environment': ' '.join(
            assignment
            for value in unit.get('Service', {}).get('Environment', [])
            for assignment in shlex.split(value)),
    }
    for prop in props:
        print(values[prop] if value_only else '%s=%s' % (prop, values[prop]))


def status(args):
    name = [a for a in args if not a.startswith('-')][0]
    pid = main_pid(name)
    print('%s - %s' % (name, 'active (running), main PID %d' % pid if pid
                       else 'inactive (dead)'))
    sys.exit(0 if pid else 3)


COMMANDS = {'daemon-reload': daemon_reload, 'enable': enable,
            'disable': disable, 'is-enabled': is_enabled, 'start': start,
            'stop': stop, 'restart': restart, 'is-active': is_active,
            'show': show, 'status': status}


def main(argv):
    if not UNIT_DIR or not STATE or not JOURNAL:
        fail('FAKE_SYSTEMD_UNIT_DIR, FAKE_SYSTEMD_STATE and '
             'FAKE_SYSTEMD_JOURNAL must be set')
    if not argv or argv[0] not in COMMANDS:
        fail('unknown command %r' % (argv[:1],), 2)
    os.makedirs(STATE, exist_ok=True)
    with open(state_path('calls'), 'a') as f:
        f.write(' '.join(argv) + '\n')
    COMMANDS[argv[0]](argv[1:])


if __name__ == '__main__':
    main(sys.argv[1:])
