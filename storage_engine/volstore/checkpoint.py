"""Checkpoints: the whole metadata state, written at once.

A checkpoint is written into data clusters owned by the metadata, then the
superblock is pointed at it; the journal restarts after it. Format::

    header: magic, version, json length, page count, crc (seeded with the
            group UUID, over everything after the header)
    json:   group policy and one entry per volume or snapshot
    pages:  (vid u32, page index u32, 8 KiB of map entries) per page

Clean shutdowns write one, so opening a cleanly closed group reads one
checkpoint and replays nothing.
"""

import json
import struct
import zlib

from storage_engine import errors
from storage_engine.volstore import clustermap
from storage_engine.volstore import state as state_mod

MAGIC = b'SECKPT01'
VERSION = 1
_HDR = struct.Struct('<8sIQQI')
_PAGE_HEAD = struct.Struct('<II')
_PAGE_REC = _PAGE_HEAD.size + clustermap.PAGE_BYTES


def dump(state: state_mod.State, seed: int) -> bytes:
    """Serialize ``state``; the caller holds the metadata lock."""
    vols = []
    pages = []
    for vol in state.volumes.values():
        vols.append({
            'vid': vol.vid, 'id': vol.id, 'name': vol.name,
            'kind': vol.kind, 'size': vol.size, 'thin': vol.thin,
            'parent': vol.parent.vid if vol.parent is not None else None,
            'origin': vol.origin_vid, 'created': vol.created,
            'hidden': vol.hidden, 'owned': vol.owned,
        })
        for index, page in vol.map.nonempty_pages():
            pages.append(_PAGE_HEAD.pack(vol.vid, index))
            pages.append(page.tobytes())
    doc = json.dumps({'next_vid': state.next_vid, 'policy': state.policy,
                      'volumes': vols}, separators=(',', ':')).encode()
    body = b''.join([doc] + pages)
    head = _HDR.pack(MAGIC, VERSION, len(doc), len(pages) // 2,
                     zlib.crc32(body, seed))
    return head + body


def load(blob: bytes, cluster_size: int, seed: int) -> state_mod.State:
    if len(blob) < _HDR.size or blob[:8] != MAGIC:
        raise errors.MetadataError('checkpoint header is missing')
    _magic, version, doc_len, npages, crc = _HDR.unpack_from(blob)
    if version != VERSION:
        raise errors.MetadataError('checkpoint version %d unknown' % version)
    body = memoryview(blob)[_HDR.size:]
    if len(body) != doc_len + npages * _PAGE_REC:
        raise errors.ChecksumMismatch('checkpoint has the wrong length')
    if zlib.crc32(body, seed) != crc:
        raise errors.ChecksumMismatch('checkpoint checksum mismatch')
    doc = json.loads(bytes(body[:doc_len]))
    st = state_mod.State(cluster_size)
    st.next_vid = doc['next_vid']
    st.policy.update(doc['policy'])
    parents = {}
    for rec in doc['volumes']:
        vol = state_mod.VolumeMeta(rec['vid'], rec['id'], rec['name'],
                                   rec['kind'], rec['size'], rec['thin'],
                                   rec['created'], origin_vid=rec['origin'])
        vol.hidden = rec['hidden']
        vol.owned = rec['owned']
        parents[vol.vid] = rec['parent']
        st._register(vol)
    for vid, parent_vid in parents.items():
        if parent_vid is not None:
            vol = st.volumes[vid]
            vol.parent = st.get(parent_vid)
            vol.parent.children.add(vol)
    pos = doc_len
    for _ in range(npages):
        vid, index = _PAGE_HEAD.unpack_from(body, pos)
        pos += _PAGE_HEAD.size
        st.get(vid).map.load_page(
            index, body[pos:pos + clustermap.PAGE_BYTES])
        pos += clustermap.PAGE_BYTES
    for vol in st.volumes.values():
        st._account(vol, +1)
    return st
