"""Start a long-lived program detached from whoever asked for it.

    python -m os_brick_connectors.spawn --log LOG --pidfile PID -- CMD ...

os-brick runs root commands through privsep, which waits until the command
has exited and closed its output. nbdfuse has no daemon mode: run directly,
it would hold that call for as long as the volume is attached, and die with
the service that attached it. This starts CMD in a new session, with no
terminal, its standard input from /dev/null and its output appended to the
file LOG, writes its PID to the file PID, prints the PID and returns at once.
CMD is then a child of init and outlives the caller.
"""

import argparse
import os
import subprocess
import sys


def write_pidfile(path: str, pid: int) -> None:
    # Written whole and renamed into place, so a reader never sees half.
    tmp = '%s.tmp' % path
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b'%d\n' % pid)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m os_brick_connectors.spawn',
        description='Start CMD detached, in its own session.')
    parser.add_argument('--log', required=True,
                        help='file CMD writes its output to (appended)')
    parser.add_argument('--pidfile', required=True,
                        help='file that receives the PID of CMD')
    parser.add_argument('command', nargs=argparse.REMAINDER,
                        help='-- CMD [ARG...]')
    args = parser.parse_args(argv)
    command = args.command
    if command[:1] == ['--']:
        command = command[1:]
    if not command:
        parser.error('no command given')

    # Files CMD makes (nbdfuse's pidfile) readable by the unprivileged
    # service that waits for them, whatever umask privsep runs with.
    os.umask(0o022)
    fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                    stdout=fd, stderr=fd, cwd='/',
                                    close_fds=True, start_new_session=True)
        except OSError as exc:
            print('cannot run %s: %s' % (command[0], exc), file=sys.stderr)
            return 127
    finally:
        os.close(fd)
    write_pidfile(args.pidfile, proc.pid)
    print(proc.pid)
    return 0


if __name__ == '__main__':
    sys.exit(main())
