"""Run an OpenStack service with our os-brick connectors registered.

    storage-engine-with-connectors PROGRAM [ARGUMENT ...]

os-brick finds connectors through hard-coded tables, so every process that
attaches our volumes must call :func:`os_brick_connectors.register` before
it asks os-brick for one. cinder-volume does so through our drivers'
``do_setup``; services that load no code of ours do not: cinder-backup
(it attaches volumes to back them up and to restore them) and nova-compute.
This runs such a service's own entry point (the ``console_scripts`` entry
point named PROGRAM, e.g. ``cinder-backup``, in this Python environment)
in this process, after registering our connectors, with ``sys.argv`` as if
PROGRAM had been run. Nothing of the service is patched or copied, so the
command line of a unit or a devstack service only gains this prefix::

    storage-engine-with-connectors cinder-backup \
        --config-file /etc/cinder/cinder.conf

The entry point's module is imported first, before os-brick: OpenStack
services monkey-patch the standard library with eventlet when their
command module is imported, and that must happen before anything creates
locks or threads.
"""

import importlib.metadata
import os
import sys

import os_brick_connectors

USAGE = 'usage: storage-engine-with-connectors PROGRAM [ARGUMENT ...]'


def entry_point(program: str):
    """The console-script entry point ``program`` of this environment."""
    name = os.path.basename(program)
    found = [ep for ep in importlib.metadata.entry_points(
        group='console_scripts') if ep.name == name]
    if not found:
        raise LookupError('%s is not a program of this Python environment '
                          '(%s): install it here, or run this from its '
                          'environment' % (name, sys.prefix))
    return found[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ('-h', '--help'):
        print('%s\n\nRuns PROGRAM (cinder-backup, nova-compute...) with the '
              'storage-engine os-brick connectors registered.' % USAGE)
        return 0
    try:
        ep = entry_point(argv[0])
    except LookupError as exc:
        print('storage-engine-with-connectors: %s' % exc, file=sys.stderr)
        return 2
    service_main = ep.load()            # the service's imports (eventlet)
    os_brick_connectors.register()
    sys.argv = [ep.name] + argv[1:]
    result = service_main()
    return result if isinstance(result, int) else 0


if __name__ == '__main__':
    sys.exit(main())
