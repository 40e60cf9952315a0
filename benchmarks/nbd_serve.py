#!/usr/bin/env python3
"""Serve volumes of a volume group over NBD until SIGTERM (benchmarks).

    nbd_serve.py PV0 PORT VOLUME [VOLUME ...]

Prints ``READY`` once listening. The storage-node service will do this
properly (with its API); this runner only exists so benchmarks measure our
server in its own process, as the peers run in theirs.
"""

import asyncio
import signal
import sys

from storage_engine.nbd import exports
from storage_engine.nbd import server
from storage_engine.volstore import VolumeGroup


async def main(pv0, port, names):
    vg = VolumeGroup.open(pv0)
    table = exports.ExportTable()
    for name in names:
        table.add(exports.Export(name, vg.open_volume(name),
                                 exports.AccessList.build(
                                     hosts=['127.0.0.1'])))
    srv = server.NBDServer(table)
    await srv.listen_tcp('127.0.0.1', port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print('READY', flush=True)
    await stop.wait()
    await srv.close()
    vg.close()


if __name__ == '__main__':
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
