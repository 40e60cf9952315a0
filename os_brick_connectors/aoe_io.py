"""A volume behind an AoE target, as a Python file object.

What the AoE connector returns in ``file`` mode (see volume_io.py for what
such a handle is for and how it takes unaligned I/O), over our own
initiator, :class:`storage_engine.aoe.client.AoEClient`: it takes
512-byte-aligned requests of any length and splits them into frames
itself.
"""

from os_brick_connectors import volume_io

SECTOR = 512


class AoEVolumeIO(volume_io.BlockVolumeIO):
    """A raw, seekable file over a connected AoEClient.

    Closing it flushes what was written (ATA FLUSH CACHE) and closes the
    client's socket.
    """

    kind = 'AoE'

    def __init__(self, client, read_only: bool = False, name: str = ''):
        self._client = client
        super().__init__(SECTOR, volume_io.MAX_CHUNK, read_only, name)

    @property
    def size(self) -> int:
        return self._client.size

    @property
    def client(self):
        return self._client

    def _pread(self, length: int, offset: int) -> bytes:
        return self._client.read(offset, length)

    def _pwrite(self, data, offset: int) -> None:
        self._client.write(offset, data)

    def _sync(self) -> None:
        self._client.flush()

    def _close_client(self) -> None:
        self._client.close()
