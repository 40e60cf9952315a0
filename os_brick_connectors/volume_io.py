"""A volume reached over a block protocol, as a Python file object.

What our connectors return in ``file`` mode, as os-brick's RBD connector
returns an image handle: cinder-volume's copy paths (image to volume,
volume to image, backup) read and write it like a file, with no device on
the host. A protocol's handle (nbd_io.py, aoe_io.py) subclasses
:class:`BlockVolumeIO` with its aligned reads, writes and flush.

The protocols take only requests aligned to a block (512 bytes) and no
larger than a maximum payload. Callers may use any offset and length: an
unaligned edge is read whole, and written by read-modify-write of the
block it falls in. One request at a time: share a handle between threads
only with a lock.
"""

import errno
import io
import typing

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# Large enough for full-speed sequential copies, small enough that a copy
# does not hold much memory per request.
MAX_CHUNK = 8 * 1024 * 1024


class BlockVolumeIO(io.RawIOBase):
    """A raw, seekable file over a block protocol's client.

    Closing it flushes what was written and closes the client.
    ``flush()`` makes written data durable when there is something to
    flush, ``fsync()`` always asks.
    """

    #: what the protocol is called in messages
    kind = 'block'

    def __init__(self, block: int, max_payload: int, read_only: bool,
                 name: str = ''):
        super().__init__()
        self._pos = 0
        self._dirty = False
        self._block = max(1, block)
        chunk = min(max_payload, MAX_CHUNK)
        self._chunk = max(self._block, chunk - chunk % self._block)
        self._read_only = read_only
        self.name = name

    # -- what a protocol provides ---------------------------------------------

    @property
    def size(self) -> int:
        raise NotImplementedError

    def _pread(self, length: int, offset: int) -> bytes:
        """Aligned read of at most the maximum payload."""
        raise NotImplementedError

    def _pwrite(self, data, offset: int) -> None:
        """Aligned write of at most the maximum payload."""
        raise NotImplementedError

    def _sync(self) -> None:
        """Make what was written durable."""
        raise NotImplementedError

    def _close_client(self) -> None:
        raise NotImplementedError

    # -- what it is -----------------------------------------------------------

    def __repr__(self):
        return '<%s %s size=%d%s>' % (
            self.__class__.__name__, self.name, self.size,
            ' closed' if self.closed else '')

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self._read_only

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation('an %s volume has no file descriptor'
                                      % self.kind)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError('I/O operation on a closed %s volume'
                             % self.kind)

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
            self._read_into(view[:length], self._pos)
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
            raise io.UnsupportedOperation('the %s volume is read-only'
                                          % self.kind)
        view = memoryview(data).cast('B')
        if not len(view):
            return 0
        if self._pos >= self.size:
            raise OSError(errno.ENOSPC, 'write at %d, beyond the end of the '
                          'volume (%d bytes)' % (self._pos, self.size))
        # Like a block device: what fits is written, and counted.
        length = min(len(view), self.size - self._pos)
        self._write_from(view[:length], self._pos)
        self._pos += length
        self._dirty = True
        return length

    def flush(self) -> None:
        super().flush()    # ValueError once closed, as files do
        if self._dirty:
            self.fsync()

    def fsync(self) -> None:
        self._check_open()
        self._sync()
        self._dirty = False

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()     # flushes
        finally:
            self._close_client()

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
        return start, self._pread(self._block, start)

    def _read_into(self, view: memoryview, offset: int) -> None:
        done = 0
        for start, length, aligned in self._pieces(offset, len(view)):
            if aligned:
                for at in range(0, length, self._chunk):
                    n = min(self._chunk, length - at)
                    view[done + at:done + at + n] = self._pread(n, start + at)
            else:
                base, block = self._block_of(start)
                view[done:done + length] = \
                    block[start - base:start - base + length]
            done += length

    def _write_from(self, view: memoryview, offset: int) -> None:
        done = 0
        for start, length, aligned in self._pieces(offset, len(view)):
            if aligned:
                for at in range(0, length, self._chunk):
                    n = min(self._chunk, length - at)
                    self._pwrite(view[done + at:done + at + n], start + at)
            else:
                base, block = self._block_of(start)
                block = bytearray(block)
                block[start - base:start - base + length] = \
                    view[done:done + length]
                self._pwrite(block, base)
            done += length


def handle_is_usable(handle, what: str) -> bool:
    """Whether a volume handle a connector returned still reads (os-brick's
    check_valid_device for a handle rather than a device path).
    """
    try:
        position = handle.tell()
        try:
            handle.seek(0)
            handle.read(min(4096, handle.size))
        finally:
            handle.seek(position)
    except Exception as exc:
        LOG.error('%s volume handle %s is not usable: %s', what, handle, exc)
        return False
    return True
