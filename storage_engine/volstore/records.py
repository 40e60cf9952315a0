"""Journal record types and their payloads.

Management operations are small JSON documents: readable with a hex dump,
and cheap next to the fdatasync that commits them. Mapping changes, the
only records on the data path, are packed binary.

A record carries every choice the live operation made (ids, physical
clusters, timestamps), so that replaying it is deterministic: the same
:meth:`State.apply` builds the same state live and after a crash.
"""

import json
import struct

from storage_engine import errors

R_CREATE = 1          # a volume (possibly a clone of a snapshot)
R_MAP = 2             # mapping changes from the data path
R_DELETE = 3          # a volume
R_SNAPSHOT = 4
R_RENAME = 5
R_EXTEND = 6
R_REVERT = 7
R_FLATTEN_DONE = 8
R_DELETE_SNAPSHOT = 9
R_POLICY = 10
R_CLONE_VOLUME = 11   # a hidden snapshot of a volume and a clone of it
R_SET_PROVISIONING = 12   # a volume turns thin or thick

_MAP_HEAD = struct.Struct('<II')      # vid, count
_MAP_ENTRY = struct.Struct('<qq')     # logical cluster, value


def encode_json(body: dict) -> bytes:
    return json.dumps(body, separators=(',', ':'), sort_keys=True).encode()


def decode_json(payload: bytes) -> dict:
    try:
        return json.loads(payload)
    except ValueError as e:
        raise errors.MetadataError('undecodable journal record: %s' % e)


def encode_map(batch: dict) -> bytes:
    """``{vid: [(logical, value), ...]}`` -> payload."""
    parts = []
    for vid, entries in batch.items():
        parts.append(_MAP_HEAD.pack(vid, len(entries)))
        parts.extend(_MAP_ENTRY.pack(lcl, val) for lcl, val in entries)
    return b''.join(parts)


def decode_map(payload: bytes):
    """Yield ``(vid, [(logical, value), ...])`` in the order written."""
    pos = 0
    end = len(payload)
    while pos < end:
        vid, count = _MAP_HEAD.unpack_from(payload, pos)
        pos += _MAP_HEAD.size
        stop = pos + count * _MAP_ENTRY.size
        if stop > end:
            raise errors.MetadataError('truncated mapping record')
        yield vid, list(_MAP_ENTRY.iter_unpack(payload[pos:stop]))
        pos = stop


MAP_ENTRY_SIZE = _MAP_ENTRY.size
