"""An AoE target served as a local NBD export: the AoE connector's fuse mode.

    python -m os_brick_connectors.aoe_bridge serve --shelf S --slot L \\
        --target-mac MAC --interface IF [--interface IF...] [--netns NS] \\
        --socket PATH --export NAME --ready FILE [--read-only] [--timeout T]
    python -m os_brick_connectors.aoe_bridge probe --shelf S --slot L \\
        --target-mac MAC --interface IF [...] [--netns NS] [--timeout T]

Without aoe.ko there is no AoE block device. ``serve`` reaches the target
with our own initiator (:class:`storage_engine.aoe.client.AoEClient`, its
raw socket opened in the network namespace NS when given) and serves it,
through the engine's NBD server, on the Unix socket PATH as export NAME to
local clients only; nbdfuse and losetup make that a /dev/loopN. It writes
its PID to FILE once it listens, and serves until SIGTERM or SIGINT. If
the target does not answer on any interface within T seconds it exits
with status 2 and the reason on standard error: the target does not
admit this host's MAC addresses, or does not exist.

``probe`` asks the target who it is and prints one JSON object, ``size``
(bytes), ``interface``, ``mac`` (ours) and ``target_mac``: how the
connector learns a volume's current size from a root helper, whatever
its own privileges.

Both need CAP_NET_RAW (and CAP_SYS_ADMIN for a namespace): the connector
runs them as root through os-brick's privsep.
"""

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import typing

from os_brick_connectors import spawn
from storage_engine import errors

LOG = logging.getLogger('os_brick_connectors.aoe_bridge')

SECTOR = 512
EXIT_UNAVAILABLE = 2


@dataclasses.dataclass(frozen=True)
class Extent:
    """A run of the target as the NBD server's block status reads it
    (the fields of the volume store's extents; the bridge, which runs
    where volumes attach, does not import the store).
    """

    offset: int
    length: int
    state: str = 'data'


class AoEBackend:
    """An AoEClient with the volume handle interface the NBD server uses.

    Reads that would block the event loop are refused with
    BlockingIOError when asked ``nowait``, so the server runs them in its
    threads; errors of the initiator reach the server as engine errors,
    which it answers with an NBD error (EIO) instead of failing the
    connection.
    """

    def __init__(self, client, read_only: bool = False):
        self.client = client
        self.read_only = read_only
        self.can_fast_zero = False

    @property
    def size(self) -> int:
        return self.client.size

    def _call(self, what, func, *args):
        try:
            return func(*args)
        except errors.EngineError:
            raise
        except OSError as exc:
            raise errors.DeviceError('AoE %s failed: %s' % (what, exc)) \
                from exc

    def read(self, offset: int, length: int, nowait: bool = False) -> bytes:
        if nowait:
            raise BlockingIOError('an AoE read waits for the network')
        return self._call('read', self.client.read, offset, length)

    def read_extents(self, offset: int, length: int, nowait: bool = False):
        return [(offset, length, self.read(offset, length, nowait))]

    def read_extents_into(self, offset: int, view):
        view = memoryview(view).cast('B')
        view[:] = self.read(offset, len(view))
        return [(offset, len(view), view)]

    def write(self, offset: int, data) -> None:
        if self.read_only:
            raise errors.ReadOnly('the AoE export is read-only')
        self._call('write', self.client.write, offset, data)

    def write_zeroes(self, offset: int, length: int,
                     may_unmap: bool = True) -> None:
        # AoE has no way to zero without sending the zeros.
        chunk = 1024 * 1024
        zeros = bytes(min(chunk, length))
        for at in range(offset, offset + length, chunk):
            n = min(chunk, offset + length - at)
            self.write(at, zeros[:n])

    def flush(self) -> None:
        self._call('flush', self.client.flush)

    def allocation(self, offset: int, length: int) -> list:
        # AoE does not say what is allocated: everything is data.
        return [Extent(offset, length, 'data')]


def open_client(interfaces: typing.Sequence[str], shelf: int, slot: int,
                target_mac: typing.Optional[str], netns: typing.Optional[str],
                timeout: float):
    """``(client, interface)``: an AoEClient of the target on the first
    interface that reaches it; errors.Unavailable naming every interface
    tried otherwise.
    """
    from storage_engine.aoe import client as aoe_client

    problems = []
    for interface in interfaces:
        try:
            return aoe_client.AoEClient(interface, shelf, slot,
                                        target_mac=target_mac, netns=netns,
                                        timeout=timeout), interface
        except errors.Unavailable:
            problems.append('%s: no answer within %gs' % (interface, timeout))
        except (errors.EngineError, OSError, ValueError) as exc:
            if isinstance(exc, PermissionError) and len(interfaces) == 1:
                raise
            problems.append('%s: %s' % (interface, exc))
    raise errors.Unavailable(
        'AoE target e%d.%d (%s) is not reachable from %s%s (%s); a target '
        'that is not exported, or whose export does not admit the MAC '
        'addresses of these interfaces, never answers'
        % (shelf, slot, target_mac or 'any MAC',
           ', '.join(interfaces) or 'no interface',
           ' in network namespace %s' % netns if netns else '',
           '; '.join(problems) or 'no interface given'))


async def _serve(backend: AoEBackend, socket_path: str, export: str,
                 ready: str) -> None:
    from storage_engine.nbd import exports
    from storage_engine.nbd import server as nbd_server

    table = exports.ExportTable()
    table.add(exports.Export(export, backend,
                             exports.AccessList.build(local=True),
                             description='AoE target via aoe_bridge',
                             read_only=backend.read_only))
    server = nbd_server.NBDServer(table)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if os.path.exists(socket_path):
            os.unlink(socket_path)      # a dead bridge's
        await server.listen_unix(socket_path)
        spawn.write_pidfile(ready, os.getpid())
        LOG.info('serving %s on %s', export, socket_path)
        await stop.wait()
        LOG.info('stopping')
    finally:
        await server.close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m os_brick_connectors.aoe_bridge',
        description='Serve an AoE target as a local NBD export, or probe '
                    'it.')
    commands = parser.add_subparsers(dest='command', required=True)
    for name in ('serve', 'probe'):
        sub = commands.add_parser(name)
        sub.add_argument('--shelf', type=int, required=True)
        sub.add_argument('--slot', type=int, required=True)
        sub.add_argument('--target-mac',
                         help='the target\'s MAC (default: any)')
        sub.add_argument('--interface', action='append', required=True,
                         help='an AoE interface of this host (repeat for '
                              'more; tried in order)')
        sub.add_argument('--netns', help='the network namespace of the '
                                         'interfaces')
        sub.add_argument('--timeout', type=float, default=30.0)
        if name == 'serve':
            sub.add_argument('--socket', required=True,
                             help='Unix socket to serve NBD on')
            sub.add_argument('--export', required=True,
                             help='the NBD export name')
            sub.add_argument('--ready', required=True,
                             help='file that receives the PID once '
                                  'serving')
            sub.add_argument('--read-only', action='store_true')
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format='%(asctime)s %(process)d %(levelname)s %(name)s '
               '%(message)s')
    try:
        client, interface = open_client(
            args.interface, args.shelf, args.slot, args.target_mac,
            args.netns, args.timeout)
    except errors.Unavailable as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        if args.command == 'probe':
            print(json.dumps({'size': client.size,
                              'interface': interface,
                              'mac': client.mac,
                              'target_mac': client.target_mac}))
            return 0
        LOG.info('AoE target e%d.%d (%s): %d bytes, reached from %s (%s)',
                 args.shelf, args.slot, client.target_mac, client.size,
                 interface, client.mac)
        asyncio.run(_serve(AoEBackend(client, args.read_only), args.socket,
                           args.export, args.ready))
        return 0
    finally:
        client.close()


if __name__ == '__main__':
    sys.exit(main())
