"""The metadata journal: a ring of checksummed records on PV0.

Every metadata change is a record appended here before it is acknowledged.
A record is a 24-byte header (magic, type, LSN, length, CRC32 of header and
payload) and its payload. Records are written in *commits*: a commit is one
contiguous, 4 KiB-aligned write followed by ``fdatasync``, padded with zeros
to the next 4 KiB boundary so that no later commit ever rewrites a block
holding an earlier, acknowledged one.

Replay starts at the position and LSN the superblock names and accepts a
record only if its magic, CRC and LSN (exactly the next expected) are all
right; the first record that fails ends the journal. A torn record is
therefore simply not there; a torn commit may keep a prefix of its records
(sectors land in any order), which is why every management operation is a
single record. Stale records from earlier laps of the ring have smaller
LSNs and can never pass. After a crash the store jumps the
LSN past anything the ring can hold (see VolumeGroup), so records of a
torn commit that survive beyond the replayed end can never be taken for
new ones either.

A commit that does not fit before the end of the ring starts with a WRAP
record at the current position and continues at the start of the ring.

A commit whose write fails (no space under a sparse PV0) leaves the head
where it was, and may have left a prefix of its records there. That is
harmless as long as whatever is written next at the head either is a
superset of the failed commit (the group keeps the failed records pending
and writes them first: same positions, same LSNs, same bytes) or starts at
an LSN past any the failed commit used: the journal is then *torn*, and the
next checkpoint jumps the LSN (see VolumeGroup._write_checkpoint).
:meth:`Journal.preallocate` allocates ring blocks ahead of the head so that
appends do not run out of space in the first place.
"""

import struct
import zlib

from storage_engine import errors

BLOCK = 4096
MAGIC = b'SEJR'
# magic, type, flags, lsn, payload length, crc
_HDR = struct.Struct('<4sHHQII')
HEADER_SIZE = _HDR.size
R_WRAP = 0xFFFF


def _align(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _crc(seed: int, head_without_crc: bytes, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(head_without_crc, seed))


def encode_record(seed: int, rtype: int, lsn: int, payload: bytes) -> bytes:
    head = _HDR.pack(MAGIC, rtype, 0, lsn, len(payload), 0)[:-4]
    return head + struct.pack('<I', _crc(seed, head, payload)) + payload


class Journal:
    """Appends commits to, and replays, the ring ``[offset, offset+size)``."""

    def __init__(self, device, offset: int, size: int, seed: int):
        if size % BLOCK or size < 4 * BLOCK:
            raise errors.InvalidArgument(
                'journal size must be a multiple of 4 KiB, at least 16 KiB')
        self.device = device
        # The CRC seed is derived from the group's UUID: records another
        # group left on a reused device never pass.
        self.seed = seed
        self.offset = offset
        self.size = size
        # Where replay starts (the superblock's view) and where we write.
        self.start_pos = 0
        self.start_lsn = 1
        self.head_pos = 0
        self.next_lsn = 1
        # Bytes of ring in use since start_pos, wrap waste included.
        self.used = 0
        # A commit failed after it may have written records at the head.
        self.torn = False
        # The whole ring is known to be allocated (see preallocate).
        self.allocated = False

    # -- replay ---------------------------------------------------------------

    def replay(self, start_pos: int, start_lsn: int):
        """Yield ``(lsn, rtype, payload)`` of every committed record.

        Leaves the journal positioned after the last valid record.
        """
        self.start_pos = pos = start_pos
        self.start_lsn = lsn = start_lsn
        used = 0
        while True:
            if pos >= self.size:
                pos = 0   # the previous commit ended exactly at the end
            rec = self._read_record(pos, lsn)
            if rec is None and pos % BLOCK:
                # End of a commit: the rest of its block is padding.
                used += _align(pos) - pos
                pos = _align(pos)
                if pos >= self.size:
                    pos = 0
                rec = self._read_record(pos, lsn)
            if rec is None:
                break
            rtype, payload = rec
            if rtype == R_WRAP:
                used += self.size - pos
                pos = 0
            else:
                length = HEADER_SIZE + len(payload)
                pos += length
                used += length
                yield lsn, rtype, payload
            lsn += 1
            if used >= self.size:
                raise errors.MetadataError('journal replay ran round the ring')
        self.head_pos = _align(pos) % self.size
        self.used = used + (_align(pos) - pos)
        self.next_lsn = lsn

    def _read_record(self, pos: int, lsn: int):
        if self.size - pos < HEADER_SIZE:
            return None
        head = self.device.pread(HEADER_SIZE, self.offset + pos)
        magic, rtype, _flags, rlsn, length, crc = _HDR.unpack(head)
        if magic != MAGIC or rlsn != lsn or \
                length > self.size - pos - HEADER_SIZE:
            return None
        payload = self.device.pread(length, self.offset + pos + HEADER_SIZE)
        if _crc(self.seed, head[:-4], payload) != crc:
            return None
        return rtype, payload

    # -- writing --------------------------------------------------------------

    def reset(self, start_pos: int, start_lsn: int) -> None:
        """A checkpoint now covers everything before ``start_lsn``."""
        self.start_pos = self.head_pos = start_pos
        self.start_lsn = self.next_lsn = start_lsn
        self.used = 0
        self.torn = False

    def preallocate(self, ahead: int | None = None) -> bool:
        """Allocate ring blocks so appends cannot run out of space: the
        whole ring, or only ``ahead`` bytes from the head (wrapping).

        True if that is done (or the ring is allocated already), False if
        the device cannot preallocate; DeviceFull if there is no room.
        """
        if self.allocated:
            return True
        if ahead is None or ahead >= self.size:
            self.allocated = self.device.preallocate(self.offset, self.size)
            return self.allocated
        first = min(ahead, self.size - self.head_pos)
        done = self.device.preallocate(self.offset + self.head_pos, first)
        if done and ahead > first:
            done = self.device.preallocate(self.offset, ahead - first)
        return done

    def commit_size(self, records) -> int:
        """Ring bytes appending ``records`` now takes, wrap included.

        A commit that does not fit before the end of the ring also uses up
        the rest of the ring up to the end (the WRAP record and the skip).
        """
        body = _align(sum(HEADER_SIZE + len(p) for _t, p in records))
        room = self.size - self.head_pos
        return body if body <= room else room + body

    def fits(self, records) -> bool:
        """Whether ``records`` can be appended without overwriting any
        record replay still needs (one block is kept free, so the head
        never catches up with the start).
        """
        return self.has_room(sum(HEADER_SIZE + len(p) for _t, p in records))

    def has_room(self, nbytes: int) -> bool:
        """Whether a commit of ``nbytes`` of records (headers included)
        can be appended now (see :meth:`fits`).
        """
        body = _align(nbytes)
        room = self.size - self.head_pos
        need = body if body <= room else room + body
        return body <= self.size // 2 and \
            self.used + need <= self.size - BLOCK

    def append(self, records) -> None:
        """Write one commit (the caller syncs the device afterwards)."""
        if not records:
            return
        lsn = self.next_lsn
        chunks = []
        for rtype, payload in records:
            chunks.append(encode_record(self.seed, rtype, lsn, payload))
            lsn += 1
        body = b''.join(chunks)
        body += bytes(_align(len(body)) - len(body))
        pos = self.head_pos
        waste = 0
        # Until the write is done: a failure may leave a prefix behind.
        self.torn = True
        if len(body) > self.size - pos:
            # Does not fit before the end: a WRAP record, then from 0.
            wrap = encode_record(self.seed, R_WRAP, self.next_lsn, b'')
            self.device.pwrite(wrap, self.offset + pos)
            waste = self.size - pos
            pos = 0
            # Renumber: the WRAP took the first LSN.
            lsn = self.next_lsn + 1
            chunks = []
            for rtype, payload in records:
                chunks.append(encode_record(self.seed, rtype, lsn,
                                            payload))
                lsn += 1
            body = b''.join(chunks)
            body += bytes(_align(len(body)) - len(body))
        self.device.pwrite(body, self.offset + pos)
        self.torn = False
        self.next_lsn = lsn
        self.head_pos = (pos + len(body)) % self.size
        self.used += waste + len(body)
