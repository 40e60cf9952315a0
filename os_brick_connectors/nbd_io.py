"""A volume behind an NBD export, as a Python file object.

What the NBD connector returns in ``file`` mode, as os-brick's RBD connector
returns an image handle: cinder-volume's copy paths (image to volume, volume
to image, backup) read and write it like a file, with no device on the host.

Our server, having told the client its block sizes, takes only requests
aligned to the minimum block (512 bytes) and no larger than the maximum
payload. Callers may use any offset and length: an unaligned edge is
read whole, and written by read-modify-write of the block it falls in.
One request at a time: share a handle between threads only with a lock.
"""

import errno
import io
import typing

from storage_engine.nbd import client as nbd_client
from storage_engine.nbd import constants as const

# Large enough for full-speed sequential copies, small enough that a copy
# does not hold much memory per request.
MAX_CHUNK = 8 * 1024 * 1024


class NBDVolumeIO(io.RawIOBase):
    """A raw, seekable file over a connected :class:`NBDClient`.

    Closing it flushes what was written and disconnects. ``flush()`` makes
    written data durable (NBD_CMD_FLUSH) when there is something to flush,
    ``fsync()`` always asks; both need a server that offers flush.
    """

    def __init__(self, client: nbd_client.NBDClient, read_only: bool = False,
                 name: str = ''):
        super().__init__()
        self._client = client
        self._pos = 0
        self._dirty = False
        self._block = max(1, client.core.minimum_block)
        chunk = min(client.core.maximum_payload, MAX_CHUNK)
        self._chunk = max(self._block, chunk - chunk % self._block)
        self._read_only = read_only or bool(
            client.flags & const.NBD_FLAG_READ_ONLY)
        self.name = name

    def __repr__(self):
        return '<NBDVolumeIO %s size=%d%s>' % (
            self.name, self._client.size, ' closed' if self.closed else '')

    # -- what it is -----------------------------------------------------------

    @property
    def size(self) -> int:
        return self._client.size

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self._read_only

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation('an NBD volume has no file descriptor')

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError('I/O operation on a closed NBD volume')

    # -- position -------------------------------------------------------------

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError('invalid whence (%r)' % (whence,))
        if pos < 0:
            raise OSError(errno.EINVAL, 'negative seek position %d' % pos)
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._check_open()
        return self._pos

    # -- reading --------------------------------------------------------------

    def readinto(self, buffer) -> int:
        self._check_open()
        view = memoryview(buffer).cast('B')
        length = max(0, min(len(view), self.size - self._pos))
        if length:
            self._pread_into(view[:length], self._pos)
            self._pos += length
        return length

    def read(self, size: typing.Optional[int] = -1) -> bytes:
        self._check_open()
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        buffer = bytearray(size)
        return bytes(buffer[:self.readinto(buffer)])

    def readall(self) -> bytes:
        return self.read(-1)

    # -- writing --------------------------------------------------------------

    def write(self, data) -> int:
        self._check_open()
        if self._read_only:
            raise io.UnsupportedOperation('the NBD volume is read-only')
        view = memoryview(data).cast('B')
        if not len(view):
            return 0
        if self._pos >= self.size:
            raise OSError(errno.ENOSPC, 'write at %d, beyond the end of the '
                          'volume (%d bytes)' % (self._pos, self.size))
        # Like a block device: what fits is written, and counted.
        length = min(len(view), self.size - self._pos)
        self._pwrite(view[:length], self._pos)
        self._pos += length
        self._dirty = True
        return length

    def flush(self) -> None:
        super().flush()    # ValueError once closed, as files do
        if self._dirty:
            self.fsync()

    def fsync(self) -> None:
        self._check_open()
        if self._client.flags & const.NBD_FLAG_SEND_FLUSH:
            self._client.flush()
        self._dirty = False

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()     # flushes
        finally:
            self._client.close()

    # -- aligned requests -----------------------------------------------------

    def _pieces(self, offset: int, length: int):
        """[offset, offset + length) as (offset, length, aligned) pieces:
        an unaligned head inside one block, an aligned middle, an unaligned
        tail inside one block.
        """
        block = self._block
        end = offset + length
        if offset % block:
            head_end = min(end, offset - offset % block + block)
            yield offset, head_end - offset, False
            offset = head_end
        middle_end = end - end % block
        if offset < middle_end:
            yield offset, middle_end - offset, True
            offset = middle_end
        if offset < end:
            yield offset, end - offset, False

    def _block_of(self, offset: int) -> typing.Tuple[int, bytes]:
        start = offset - offset % self._block
        return start, self._client.pread(self._block, start)

    def _pread_into(self, view: memoryview, offset: int) -> None:
        done = 0
        for start, length, aligned in self._pieces(offset, len(view)):
            if aligned:
                for at in range(0, length, self._chunk):
                    n = min(self._chunk, length - at)
                    view[done + at:done + at + n] = self._client.pread(
                        n, start + at)
            else:
                base, block = self._block_of(start)
                view[done:done + length] = \
                    block[start - base:start - base + length]
            done += length

    def _pwrite(self, view: memoryview, offset: int) -> None:
        done = 0
        for start, length, aligned in self._pieces(offset, len(view)):
            if aligned:
                for at in range(0, length, self._chunk):
                    n = min(self._chunk, length - at)
                    self._client.pwrite(view[done + at:done + at + n],
                                        start + at)
            else:
                base, block = self._block_of(start)
                block = bytearray(block)
                block[start - base:start - base + length] = \
                    view[done:done + length]
                self._client.pwrite(block, base)
            done += length
