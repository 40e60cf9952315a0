"""The ``storage-engine`` command.

Run the storage-node service::

    storage-engine serve [...]          (see storage-engine serve --help)

Talk to a running node through its management API (``--url``, default
``$STORAGE_ENGINE_URL`` or http://127.0.0.1:8790; ``--token``, default
``$STORAGE_ENGINE_TOKEN``; ``--ca-file`` for https; ``--format table|json``;
these options may come before or after the command)::

    storage-engine status
    storage-engine pool list | show NAME | check NAME | reopen NAME
    storage-engine volume list [--pool P] | show REF | delete REF
    storage-engine volume create NAME SIZE [--pool P] [--thin|--thick]
                                 [--from-snapshot REF | --from-volume REF]
                                 [--id UUID]
    storage-engine volume extend REF SIZE | rename REF NEW
    storage-engine volume revert REF SNAPSHOT_REF
    storage-engine volume flatten REF [--no-wait]
    storage-engine snapshot list [--volume REF] | show REF | delete REF
    storage-engine snapshot create VOLUME_REF NAME [--id UUID]
    storage-engine export list [--volume REF] | show ID | delete ID
    storage-engine export create REF --host H [--host H ...] [--read-only]
                                 [--protocol nbd|aoe] [--id UUID]
    storage-engine job list | show ID

REF is an id or a name; SIZE is bytes or 10G, 512M... (binary units).

Work on a volume group directly, while no service has it open::

    storage-engine vg create|show|check|add-pv ...

Exit codes, for scripts: 0 success; 1 a check found problems (``vg
check``, ``pool check``), a job failed, or a pool reopened is not back
in service; 2 bad usage or an invalid argument; 3 not found; 4 conflict
(already exists, busy); 5 no space; 6 unauthorized; 7 unavailable (node
unreachable or not ready); 8 any other error; 9 ``vg check`` of a group a
running process holds. An error
is one line on stderr, ``storage-engine: error: <message>``, the form
argparse uses for usage errors.
"""

import argparse
import logging
import os
import sys

from storage_engine.cli import exits
from storage_engine.cli import output
from storage_engine.cli import remote
from storage_engine.cli import vg
from storage_engine import client as client_mod
from storage_engine import errors

PROG = 'storage-engine'
URL_ENV = 'STORAGE_ENGINE_URL'
TOKEN_ENV = 'STORAGE_ENGINE_TOKEN'


def _common_options(parser: argparse.ArgumentParser, defaults: bool,
                    connection: bool = True) -> None:
    """Add the options every command shares.

    The top-level parser gets the real defaults; each command's parser gets
    the same options with no default at all (SUPPRESS), so an option given
    after the command overrides the top-level one and an option not given
    there leaves it alone.
    """
    def default(value):
        return value if defaults else argparse.SUPPRESS

    if connection:
        parser.add_argument(
            '--url', default=default(os.environ.get(
                URL_ENV, client_mod.DEFAULT_URL)),
            help='the node\'s API (default: $%s or %s)'
                 % (URL_ENV, client_mod.DEFAULT_URL))
        parser.add_argument(
            '--token', default=default(os.environ.get(TOKEN_ENV)),
            help='the node\'s token (default: $%s; prefer the variable: '
                 'arguments show in ps)' % TOKEN_ENV)
        parser.add_argument(
            '--ca-file', default=default(None), metavar='PEM',
            help='CA bundle to verify an https node with')
        parser.add_argument(
            '-v', '--verbose', action='store_true',
            default=default(False),
            help='log what the client retries to stderr')
    parser.add_argument('--format', choices=output.FORMATS,
                        default=default(output.TABLE),
                        help='table for people, json for scripts')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Userspace block storage engine: volume groups, '
                    'volumes, snapshots and exports.',
        epilog=exits.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(parser, defaults=True)
    api = argparse.ArgumentParser(add_help=False)
    _common_options(api, defaults=False)
    fmt = argparse.ArgumentParser(add_help=False)
    _common_options(fmt, defaults=False, connection=False)

    sub = parser.add_subparsers(dest='command', required=True)
    serve = sub.add_parser('serve', add_help=False,
                           help='run the storage-node service (its own '
                                'options: serve --help)')
    serve.add_argument('serve_args', nargs=argparse.REMAINDER)
    serve.set_defaults(func=lambda args: _serve(args.serve_args))
    remote.add_parsers(sub, [api])
    vg.add_parsers(sub, fmt)
    return parser


def _serve(argv: list[str]) -> int:
    # Imported here: the service pulls in aiohttp and friends, which the
    # client-side commands have no use for.
    from storage_engine.service import serve
    return serve.main(argv)


def _setup_logging(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr,
            format='%(asctime)s %(levelname)s %(name)s: %(message)s')
        return
    # Retries are the client's business; without -v the outcome (success,
    # or one error line) is all the command says. A NullHandler also keeps
    # logging's last-resort handler from printing warnings.
    logger = logging.getLogger('storage_engine')
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def _fail(message: str) -> None:
    print('%s: error: %s' % (PROG, ' '.join(str(message).splitlines())),
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit code (see :mod:`.exits`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == 'serve':
        return _serve(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, 'verbose', False))
    try:
        return args.func(args)
    except errors.EngineError as e:
        _fail(e)
        return exits.for_error(e)
    except OSError as e:
        # Outside the engine's hierarchy (a file the command itself opens).
        _fail(e)
        return exits.ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
