"""A volume behind an NBD export, as a Python file object.

What the NBD connector returns in ``file`` mode (see volume_io.py for what
such a handle is for and how it takes unaligned I/O). Our server, having
told the client its block sizes, takes only requests aligned to the
minimum block (512 bytes) and no larger than the maximum payload.
"""

from storage_engine.nbd import client as nbd_client
from storage_engine.nbd import constants as const

from os_brick_connectors import volume_io

MAX_CHUNK = volume_io.MAX_CHUNK


class NBDVolumeIO(volume_io.BlockVolumeIO):
    """A raw, seekable file over a connected :class:`NBDClient`.

    Closing it flushes what was written and disconnects. ``flush()`` makes
    written data durable (NBD_CMD_FLUSH) when there is something to flush,
    ``fsync()`` always asks; both need a server that offers flush.
    """

    kind = 'NBD'

    def __init__(self, client: nbd_client.NBDClient, read_only: bool = False,
                 name: str = ''):
        self._client = client
        super().__init__(
            client.core.minimum_block, client.core.maximum_payload,
            read_only or bool(client.flags & const.NBD_FLAG_READ_ONLY),
            name)

    @property
    def size(self) -> int:
        return self._client.size

    def _pread(self, length: int, offset: int) -> bytes:
        return self._client.pread(length, offset)

    def _pwrite(self, data, offset: int) -> None:
        self._client.pwrite(data, offset)

    def _sync(self) -> None:
        if self._client.flags & const.NBD_FLAG_SEND_FLUSH:
            self._client.flush()

    def _close_client(self) -> None:
        self._client.close()
