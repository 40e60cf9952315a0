"""The engine's one exception hierarchy.

Every error the engine raises on purpose is an :class:`EngineError`. Each
class carries a stable ``code`` that outer layers (the management API, the
client, the Cinder drivers) translate without parsing messages, and an
``errno`` where a block protocol has to answer with one.
"""

import errno as _errno


class EngineError(Exception):
    """Base class of every deliberate engine error."""

    code = 'engine_error'
    errno = _errno.EIO

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


# -- bad input: the caller can fix the request --------------------------------

class InvalidArgument(EngineError):
    code = 'invalid_argument'
    errno = _errno.EINVAL


class InvalidName(InvalidArgument):
    code = 'invalid_name'


class InvalidSize(InvalidArgument):
    code = 'invalid_size'


class UnalignedIO(InvalidArgument):
    """Offset or length of an I/O is not a multiple of the sector size."""

    code = 'unaligned_io'


class OutOfRange(InvalidArgument):
    """An I/O reaches past the end of the volume."""

    code = 'out_of_range'


# -- the thing named does not exist, or already does --------------------------

class NotFound(EngineError):
    code = 'not_found'
    errno = _errno.ENOENT


class VolumeNotFound(NotFound):
    code = 'volume_not_found'


class SnapshotNotFound(NotFound):
    code = 'snapshot_not_found'


class AlreadyExists(EngineError):
    code = 'already_exists'
    errno = _errno.EEXIST


# -- state that refuses the request -------------------------------------------

class NoSpace(EngineError):
    """Not enough capacity (physical, reserved or over-subscription)."""

    code = 'no_space'
    errno = _errno.ENOSPC


class DeviceFull(NoSpace):
    """The filesystem (or thin device) under a physical volume refused a
    write for want of space (ENOSPC, EDQUOT).

    Nothing, or a prefix of the write, landed, and the group stays usable:
    the same write succeeds once there is room again. ``details`` name the
    physical volume (``path``) and its filesystem (``filesystem``, a mount
    point).
    """

    code = 'device_full'


class Busy(EngineError):
    code = 'busy'
    errno = _errno.EBUSY


class GroupLocked(Busy):
    """The volume group is open in another process (or another handle)."""

    code = 'group_locked'


class IncarnationMismatch(EngineError):
    """A delete meant for an earlier incarnation of an id found a later
    one (see storage_engine/incarnation.py); nothing was deleted.
    """

    code = 'incarnation_mismatch'
    errno = _errno.ESTALE


class GroupInUse(GroupLocked):
    """An offline command was given a group a running process serves; the
    process (the storage node) is the way to it.
    """

    code = 'group_in_use'


class ReadOnly(EngineError):
    code = 'read_only'
    errno = _errno.EPERM


class WrongKind(InvalidArgument):
    """A snapshot was named where a volume is needed, or the reverse."""

    code = 'wrong_kind'


# -- the caller or the service ----------------------------------------------

class Unauthorized(EngineError):
    """The management API refused the request's token (or it had none)."""

    code = 'unauthorized'
    errno = _errno.EACCES


class Unavailable(EngineError):
    """The service (or something it needs) cannot serve the request now;
    the same request may succeed later.
    """

    code = 'unavailable'
    errno = _errno.EAGAIN


# -- the store itself ---------------------------------------------------------

class MetadataError(EngineError):
    """On-disk metadata is missing, torn beyond recovery, or inconsistent."""

    code = 'metadata_error'


class ChecksumMismatch(MetadataError):
    code = 'checksum_mismatch'


class NotAPhysicalVolume(MetadataError):
    code = 'not_a_physical_volume'


class DeviceError(EngineError):
    """An I/O error from a physical volume; the group stops accepting work."""

    code = 'device_error'
    errno = _errno.EIO


class GroupClosed(EngineError):
    code = 'group_closed'
    errno = _errno.ESHUTDOWN
