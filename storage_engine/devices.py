"""Physical devices: the files and block devices volume groups live on.

A :class:`Device` is an open file descriptor plus the few operations the
volume store needs: positioned reads and writes, zeroing a range, and
``fdatasync``. Zeroing uses what the device offers cheaply (a punched hole
in a regular file, ``BLKZEROOUT`` on a block device, which a loop device
turns into a punched hole of its backing file) and falls back to writing
zeros, so freshly allocated space never shows a former owner's data.

Running out of space is not a device error. A write (or a zeroing) that
the filesystem under a sparse file refuses with ENOSPC or EDQUOT raises
:class:`errors.DeviceFull`: nothing, or a prefix, landed, and the same
write succeeds once there is room. Every other failure is
:class:`errors.DeviceError`, and a failed ``fdatasync`` always is one,
whatever its errno: the kernel may have dropped the dirty pages it could
not write, so what the page cache shows is no longer what the disk holds.
:meth:`Device.preallocate` lets the metadata area be allocated up front,
so that its writes cannot fail for want of space.
"""

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct

from storage_engine import errors

# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
# <linux/fs.h>: _IO(0x12, 127)
BLKZEROOUT = 0x127F

_ZERO_CHUNK = bytes(1 << 20)
# A write refused for want of space, not for a fault of the device.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

_libc = ctypes.CDLL(ctypes.util.find_library('c') or None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                       ctypes.c_int64]
_fallocate.restype = ctypes.c_int


class Device:
    """An open physical device (regular file or block device)."""

    def __init__(self, path: str, fd: int, is_block: bool, read_only: bool):
        self.path = path
        self.fd = fd
        self.is_block = is_block
        self.read_only = read_only
        # Cleared the first time the cheap zeroing path is refused, so the
        # fallback is not retried on every allocation.
        self._can_punch = True
        # Written since the last sync (set after each write lands, so a
        # sync that starts after a write completed always sees it).
        self.dirty = False
        #: called with the DeviceFull error each time space runs out (the
        #: volume group's condition watches it); any thread
        self.on_full = None
        self._mount = None

    @classmethod
    def open(cls, path: str, read_only: bool = False,
             create_size: int | None = None) -> 'Device':
        """Open ``path``; with ``create_size``, create a sparse file first.

        An existing file is used as it is (a block device has its own size).
        """
        flags = os.O_RDONLY if read_only else os.O_RDWR
        flags |= os.O_CLOEXEC
        if create_size is not None and not os.path.exists(path):
            flags |= os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            raise errors.NotFound('physical volume %s does not exist' % path,
                                  path=path)
        except IsADirectoryError:
            raise errors.InvalidArgument(
                '%s is a directory, not a file or block device' % path,
                path=path)
        except OSError as e:
            raise errors.DeviceError('cannot open %s: %s' % (path, e),
                                     path=path)
        st = os.fstat(fd)
        is_block = stat.S_ISBLK(st.st_mode)
        if not is_block and not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise errors.InvalidArgument(
                '%s is neither a regular file nor a block device' % path,
                path=path)
        dev = cls(path, fd, is_block, read_only)
        if create_size is not None and not is_block and st.st_size == 0:
            os.ftruncate(fd, create_size)
        return dev

    @property
    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)

    def pread(self, length: int, offset: int, nowait: bool = False) -> bytes:
        """Read; with ``nowait``, raise BlockingIOError instead of waiting
        for the disk (the data is not all in the page cache).
        """
        if nowait:
            return self._pread_nowait(length, offset)
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as e:
            raise errors.DeviceError('read error on %s at %d: %s'
                                     % (self.path, offset, e), path=self.path)
        if len(data) < length:
            # A short read past the end of a file means zeros (sparse tail).
            data += bytes(length - len(data))
        return data

    def _pread_nowait(self, length: int, offset: int) -> bytearray:
        buf = bytearray(length)
        try:
            n = os.preadv(self.fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            raise
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                raise BlockingIOError(errno.EAGAIN, 'nowait unsupported')
            raise errors.DeviceError('read error on %s at %d: %s'
                                     % (self.path, offset, e), path=self.path)
        if n < length:
            # Partly cached, or the sparse tail of a file: let the caller
            # retry with a blocking read, which sorts out which.
            raise BlockingIOError(errno.EAGAIN, 'short nowait read')
        return buf

    def preadinto(self, view, offset: int) -> None:
        """Read ``len(view)`` bytes into ``view`` (a writable buffer)."""
        view = memoryview(view).cast('B')
        try:
            while view:
                n = os.preadv(self.fd, [view], offset)
                if n == 0:
                    view[:] = bytes(len(view))      # sparse tail of a file
                    return
                view = view[n:]
                offset += n
        except OSError as e:
            raise errors.DeviceError('read error on %s at %d: %s'
                                     % (self.path, offset, e), path=self.path)

    def pwrite(self, data, offset: int) -> None:
        try:
            n = os.pwrite(self.fd, data, offset)
            if n == len(data):
                self.dirty = True
                return                  # the usual case: all written
            view = memoryview(data).cast('B')[n:]
            offset += n
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
            self.dirty = True
        except OSError as e:
            # A prefix may have landed: the next sync must cover it.
            self.dirty = True
            if e.errno in _FULL_ERRNOS:
                raise self._full('write', offset, e) from None
            raise errors.DeviceError('write error on %s at %d: %s'
                                     % (self.path, offset, e), path=self.path)

    def _full(self, what: str, offset: int, e: OSError,
              report: bool = True) -> errors.DeviceFull:
        """The DeviceFull error for ``e``; with ``report``, also given to
        ``on_full``.
        """
        where = self.filesystem()
        try:
            st = os.statvfs(self.path)
            free = ', %d bytes free' % (st.f_bavail * st.f_frsize)
        except OSError:
            free = ''
        exc = errors.DeviceFull(
            '%s: no space for %s %s at %d (filesystem %s%s)'
            % (os.strerror(e.errno), what, self.path, offset, where, free),
            path=self.path, filesystem=where, offset=offset)
        if report and self.on_full is not None:
            self.on_full(exc)
        return exc

    def filesystem(self) -> str:
        """The mount point of the filesystem holding the file (a block
        device: the device itself).
        """
        if self.is_block:
            return self.path
        if self._mount is None:
            self._mount = mount_point(self.path)
        return self._mount

    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros."""
        if length <= 0:
            return
        if self._can_punch:
            try:
                if self.is_block:
                    fcntl.ioctl(self.fd, BLKZEROOUT,
                                struct.pack('=QQ', offset, length))
                else:
                    self._punch(offset, length)
                self.dirty = True
                return
            except OSError as e:
                if e.errno in _FULL_ERRNOS:
                    # Punching a hole can need a new extent block.
                    self.dirty = True
                    raise self._full('zeroing', offset, e) from None
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY,
                                   errno.EINVAL, errno.ENOSYS):
                    raise errors.DeviceError(
                        'cannot zero %s at %d: %s' % (self.path, offset, e),
                        path=self.path)
                self._can_punch = False
        end = offset + length
        while offset < end:
            n = min(len(_ZERO_CHUNK), end - offset)
            self.pwrite(memoryview(_ZERO_CHUNK)[:n], offset)
            offset += n

    def _punch(self, offset: int, length: int) -> None:
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if _fallocate(self.fd, mode, offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def preallocate(self, offset: int, length: int) -> bool:
        """Allocate the blocks of ``[offset, offset+length)`` of a file, so
        that writes there cannot fail for want of space; contents and size
        stay as they are.

        True when the range is allocated (a block device always is), False
        when the filesystem cannot preallocate (a copy-on-write one cannot
        promise it either). DeviceFull if there is not room for it.
        """
        if self.is_block or length <= 0:
            return True
        if _fallocate(self.fd, FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        e = OSError(err, os.strerror(err))
        if err in _FULL_ERRNOS:
            # Not a refused write: the caller says what it means.
            raise self._full('preallocating', offset, e, report=False)
        raise errors.DeviceError('cannot preallocate %s at %d: %s'
                                 % (self.path, offset, e), path=self.path)

    def sync(self) -> None:
        self.dirty = False
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise errors.DeviceError('flush error on %s: %s'
                                     % (self.path, e), path=self.path)

    def lock(self, exclusive: bool = True) -> None:
        """Take an advisory lock so one process at a time owns the group."""
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        try:
            fcntl.flock(self.fd, op)
        except BlockingIOError:
            raise errors.GroupLocked(
                '%s is in use by another volume group handle' % self.path,
                path=self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def mount_point(path: str) -> str:
    """The mount point of the filesystem that holds ``path``."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path
