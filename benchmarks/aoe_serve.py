#!/usr/bin/env python3
"""Serve one file over AoE with our target until SIGTERM (benchmarks).

    aoe_serve.py INTERFACE SHELF SLOT FILE MAC [--netns NS] [--buffers N]

The file is served as a raw disk (os.pread/os.pwrite, like vblade does), so
a benchmark compares the two targets on the same file, interface and
initiator; ``MAC`` is the only initiator admitted. Prints ``READY`` once the
socket is open. The storage-node service serves engine volumes with the
same target class.
"""

import argparse
import asyncio
import os
import signal

from storage_engine.aoe import server


class FileDisk:
    """The volume-handle interface over a plain file."""

    read_only = False

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        self.id = os.path.basename(path)

    def read(self, offset: int, length: int, nowait: bool = False) -> bytes:
        return os.pread(self.fd, length, offset)

    def write(self, offset: int, data) -> None:
        os.pwrite(self.fd, data, offset)

    def flush(self) -> None:
        os.fdatasync(self.fd)


async def main(args) -> None:
    target = server.AoETarget(args.interface, args.shelf, netns=args.netns,
                              buffer_count=args.buffers)
    await target.start()
    target.add(args.slot, FileDisk(args.file), [args.mac],
               description='bench')
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print('READY', flush=True)
    await stop.wait()
    await target.close()


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('interface')
    parser.add_argument('shelf', type=int)
    parser.add_argument('slot', type=int)
    parser.add_argument('file')
    parser.add_argument('mac')
    parser.add_argument('--netns')
    parser.add_argument('--buffers', type=int, default=16)
    asyncio.run(main(parser.parse_args()))
