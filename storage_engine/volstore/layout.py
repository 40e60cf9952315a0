"""On-disk layout of physical volumes: the label and the superblock.

Every physical volume (PV) starts with a 4 KiB label naming its group and
its place in it. The first PV (PV0) also holds the group's metadata area::

    PV0:  0       label (4 KiB)
          64 KiB  superblock slot 0 (64 KiB)
          128 KiB superblock slot 1 (64 KiB)
          256 KiB journal ring (journal_size bytes)
          data_offset (aligned to the cluster size) .. end: data clusters
    PVn:  0       label
          data_offset .. end: data clusters

The superblock is written alternately to its two slots with a rising
sequence number and a CRC; the newest valid slot wins, so a torn superblock
write falls back to the previous one, whose checkpoint is never released
before the new superblock is durable.

Checkpoints (the whole metadata state) are written into ordinary data
clusters owned by the metadata, so metadata space grows with the group.
"""

import dataclasses
import json
import struct
import uuid
import zlib

from storage_engine import errors

SECTOR = 512
LABEL_SIZE = 4096
SUPERBLOCK_SLOTS = (64 * 1024, 128 * 1024)
SUPERBLOCK_SIZE = 64 * 1024
JOURNAL_OFFSET = 256 * 1024

LABEL_MAGIC = b'SEPVLBL1'
SUPER_MAGIC = b'SESUPER1'
FORMAT_VERSION = 1

# magic, version, pv index, group uuid, pv uuid, data offset, data clusters,
# cluster size, crc (of everything before it)
_LABEL = struct.Struct('<8sII16s16sQQI')
_CRC = struct.Struct('<I')
# magic, version, sequence, body length, body crc, header crc
_SUPER_HDR = struct.Struct('<8sIQII')


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


@dataclasses.dataclass(frozen=True)
class Label:
    group_uuid: str
    pv_uuid: str
    pv_index: int
    data_offset: int
    data_clusters: int
    cluster_size: int

    def encode(self) -> bytes:
        body = _LABEL.pack(LABEL_MAGIC, FORMAT_VERSION, self.pv_index,
                           uuid.UUID(self.group_uuid).bytes,
                           uuid.UUID(self.pv_uuid).bytes, self.data_offset,
                           self.data_clusters, self.cluster_size)
        body += _CRC.pack(zlib.crc32(body))
        return body + bytes(LABEL_SIZE - len(body))

    @classmethod
    def decode(cls, raw: bytes, path: str = '?') -> 'Label':
        head = raw[:_LABEL.size]
        if len(head) < _LABEL.size or head[:8] != LABEL_MAGIC:
            raise errors.NotAPhysicalVolume(
                '%s has no physical volume label' % path, path=path)
        (crc,) = _CRC.unpack_from(raw, _LABEL.size)
        if zlib.crc32(head) != crc:
            raise errors.ChecksumMismatch(
                'physical volume label of %s is corrupt' % path, path=path)
        (_magic, version, index, guuid, puuid, data_offset, clusters,
         cluster_size) = _LABEL.unpack(head)
        if version != FORMAT_VERSION:
            raise errors.MetadataError(
                '%s has label version %d, this engine reads %d'
                % (path, version, FORMAT_VERSION), path=path)
        return cls(str(uuid.UUID(bytes=guuid)), str(uuid.UUID(bytes=puuid)),
                   index, data_offset, clusters, cluster_size)


def encode_superblock(seq: int, body: dict) -> bytes:
    data = json.dumps(body, separators=(',', ':'), sort_keys=True).encode()
    if _SUPER_HDR.size + 4 + len(data) > SUPERBLOCK_SIZE:
        raise errors.MetadataError('superblock would exceed %d bytes'
                                   % SUPERBLOCK_SIZE)
    head = _SUPER_HDR.pack(SUPER_MAGIC, FORMAT_VERSION, seq, len(data),
                           zlib.crc32(data))
    return head + _CRC.pack(zlib.crc32(head)) + data


def decode_superblock(raw: bytes) -> tuple[int, dict] | None:
    """Return ``(seq, body)``, or None if the slot is empty, torn or stale."""
    if len(raw) < _SUPER_HDR.size + 4 or raw[:8] != SUPER_MAGIC:
        return None
    head = raw[:_SUPER_HDR.size]
    (hcrc,) = _CRC.unpack_from(raw, _SUPER_HDR.size)
    if zlib.crc32(head) != hcrc:
        return None
    _magic, version, seq, length, crc = _SUPER_HDR.unpack(head)
    start = _SUPER_HDR.size + 4
    data = raw[start:start + length]
    if version != FORMAT_VERSION or len(data) != length or \
            zlib.crc32(data) != crc:
        return None
    return seq, json.loads(data)
