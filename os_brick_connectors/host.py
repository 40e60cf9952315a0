"""The host side of attaching: root commands and what the kernel shows.

Every command our connectors run as root is built here, as an argument list
(never a shell string), and run through os-brick's executor with
``run_as_root=True``: in a service that is os-brick's privsep daemon. What
the connectors only need to *read* (mounts, processes, block devices in
sysfs) is read here directly from /proc and /sys, without root.
"""

import errno
import os
import re
import shutil
import sys
import time
import typing

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# The detaching launcher (os_brick_connectors/spawn.py), run by the same
# Python as the service, so it finds this package wherever it is installed.
SPAWN = (sys.executable, '-m', 'os_brick_connectors.spawn')

_OCTAL_ESCAPE = re.compile(r'\\([0-7]{3})')


class Host:
    """Root commands.

    ``run_as_root(*cmd, **kwargs)`` runs one and returns ``(stdout,
    stderr)``: a connector's ``self._execute(*cmd, run_as_root=True,
    root_helper=self._root_helper, **kwargs)``.
    """

    def __init__(self, run_as_root: typing.Callable):
        self._run_as_root = run_as_root

    def _root(self, *cmd: str, **kwargs) -> str:
        out, _err = self._run_as_root(*cmd, **kwargs)
        return out or ''

    # -- files ----------------------------------------------------------------

    def make_dir(self, path: str) -> None:
        # 0755: the pidfiles and log in it are for anyone to read; the
        # volume itself is not: a FUSE mount made without allow_other
        # admits only the user who made it (root).
        self._root('mkdir', '-p', '-m', '0755', path)

    def make_file(self, path: str) -> None:
        self._root('touch', path)

    def write_file(self, path: str, text: str) -> None:
        self._root('tee', path, process_input=text)

    def remove_files(self, *paths: str) -> None:
        self._root('rm', '-f', '--', *paths)

    def remove_dir(self, path: str) -> None:
        self._root('rmdir', '--', path)

    # -- processes ------------------------------------------------------------

    def spawn(self, command: typing.Sequence[str], log: str,
              pidfile: str) -> int:
        """Start ``command`` detached (see spawn.py); its PID."""
        out = self._root(*SPAWN, '--log', log, '--pidfile', pidfile, '--',
                         *command)
        return int(out.split()[-1])

    def kill(self, pid: int, signal_name: str = 'TERM') -> None:
        self._root('kill', '-s', signal_name, str(pid))

    # -- FUSE -----------------------------------------------------------------

    def unmount_fuse(self, path: str) -> None:
        # fusermount3 (fuse3) or fusermount (fuse 2) when installed; as root
        # a plain umount does the same.
        for program in ('fusermount3', 'fusermount'):
            if shutil.which(program):
                self._root(program, '-u', path)
                return
        self._root('umount', path)

    # -- loop devices ---------------------------------------------------------

    def loop_attach(self, path: str, read_only: bool,
                    device: typing.Optional[str] = None) -> str:
        """Bind ``path`` to ``device``, or to the first free loop device."""
        ro = ['--read-only'] if read_only else []
        if device:
            self._root('losetup', *ro, device, path)
            return device
        return self._root('losetup', '--find', '--show', *ro,
                          path).strip()

    def loop_devices(self, path: str) -> typing.List[str]:
        """The loop devices bound to ``path`` (``losetup -j``)."""
        out = self._root('losetup', '-j', path)
        # "/dev/loop0: [0039]:1 (/run/os-brick-nbd/x/disk)"
        return [line.split(':', 1)[0] for line in out.splitlines()
                if line.startswith('/dev/')]

    def loop_detach(self, device: str) -> None:
        self._root('losetup', '-d', device)

    def flush_buffers(self, device: str) -> None:
        self._root('blockdev', '--flushbufs', device)

    # -- kernel NBD -----------------------------------------------------------

    def nbd_connect(self, device: str, host: str, port: int, export: str,
                    read_only: bool, tls: typing.Optional[dict]) -> None:
        """``nbd-client``; ``tls``: {'cacertfile', 'certfile', 'keyfile',
        'tlshostname'} (given options turn TLS on).
        """
        cmd = ['nbd-client', host, str(port), device, '-N', export]
        if read_only:
            cmd.append('-readonly')
        for option, value in sorted((tls or {}).items()):
            cmd += ['-' + option, value]
        self._root(*cmd)

    def nbd_disconnect(self, device: str) -> None:
        self._root('nbd-client', '-d', device)


# -- reading host state (no root needed) ------------------------------------

def poll(done: typing.Callable[[], bool], timeout: float) -> bool:
    """Call ``done`` until it is true (True) or ``timeout`` passes (False),
    checking often at first, then every 100 ms.
    """
    deadline = time.monotonic() + timeout
    interval = 0.002
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 2, 0.1)
    return True


def _read(path: str) -> typing.Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_pid(path: str) -> typing.Optional[int]:
    text = _read(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def mounted(path: str) -> bool:
    """Whether ``path`` is a mount point in this mount namespace."""
    text = _read('/proc/self/mountinfo') or ''
    for line in text.splitlines():
        fields = line.split(' ')
        if len(fields) > 4 and _OCTAL_ESCAPE.sub(
                lambda m: chr(int(m.group(1), 8)), fields[4]) == path:
            return True
    return False


def process_running(pid: typing.Optional[int], name: typing.Optional[str],
                    argument: str) -> bool:
    """Whether ``pid`` is a live ``name`` process (any name, given None)
    with ``argument`` in its command line (a recorded PID may have been
    reused since).
    """
    if not pid:
        return False
    comm = _read('/proc/%d/comm' % pid)
    cmdline = _read('/proc/%d/cmdline' % pid)
    stat = _read('/proc/%d/stat' % pid) or ''
    # The state follows the parenthesised command name; Z: a zombie.
    state = stat.rpartition(')')[2].split()[:1]
    return (comm is not None and (name is None or comm.strip() == name) and
            cmdline is not None and argument in cmdline.split('\0') and
            state != ['Z'])


def _sys_block(device: str, *parts: str) -> str:
    return os.path.join('/sys/class/block', os.path.basename(device), *parts)


def block_size(device: str) -> typing.Optional[int]:
    """Size of a block device in bytes (sysfs counts 512-byte sectors)."""
    text = _read(_sys_block(device, 'size'))
    return int(text) * 512 if text else None


def loop_bound(device: str) -> bool:
    return os.path.exists(_sys_block(device, 'loop', 'backing_file'))


def block_in_use(device: str) -> typing.Optional[str]:
    """Why ``device`` is in use by the kernel (mounted, held by another
    block device, swap), or None. A process that merely has it open does
    not show here.
    """
    try:
        if os.listdir(_sys_block(device, 'holders')):
            return 'held by %s' % ', '.join(
                sorted(os.listdir(_sys_block(device, 'holders'))))
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    number = (_read(_sys_block(device, 'dev')) or '').strip()
    for line in (_read('/proc/self/mountinfo') or '').splitlines():
        fields = line.split(' ')
        if number and len(fields) > 4 and fields[2] == number:
            return 'mounted on %s' % fields[4]
    for line in (_read('/proc/swaps') or '').splitlines()[1:]:
        if line.split()[:1] == [device]:
            return 'used as swap'
    return None


def nbd_devices() -> typing.List[str]:
    """The kernel's /dev/nbdN devices, in numeric order."""
    try:
        names = [n for n in os.listdir('/sys/class/block')
                 if re.fullmatch(r'nbd\d+', n)]
    except OSError:
        return []
    return ['/dev/' + n for n in sorted(names, key=lambda n: int(n[3:]))]


def nbd_connected(device: str) -> bool:
    # The kernel shows the PID of the client while one is connected.
    return os.path.exists(_sys_block(device, 'pid'))
