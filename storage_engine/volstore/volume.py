"""I/O on one volume or snapshot: the data path of the volume store.

Reads resolve each cluster through the volume's map and its parent chain;
never-written space reads as zeros. Writes go straight to an owned cluster
(the common case: no lock beyond the volume's gate); a first write to a
cluster allocates one, fills it (zeros, or a copy of the parent's cluster
for copy-on-write), writes the data and only then publishes the mapping,
so a reader never sees a cluster before its content is there.

A write the filesystem under a PV refuses for want of space raises
DeviceFull (ENOSPC to NBD clients): a first write gives its new cluster
back, and reads, and writes into clusters already allocated, go on.

All offsets and lengths are multiples of 512 bytes.
"""

from storage_engine import errors
from storage_engine.volstore.clustermap import UNMAPPED
from storage_engine.volstore.clustermap import ZERO
from storage_engine.volstore import info
from storage_engine.volstore import layout

SECTOR = layout.SECTOR


class VolumeHandle:
    """Read, write, flush, discard and map one volume of an open group."""

    def __init__(self, group, vol):
        self._group = group
        self._vol = vol
        self._cs = group.cluster_size
        self._gate = group.gate(vol)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # A handle holds no resources of its own; the group does.
        return None

    # -- properties ----------------------------------------------------------

    @property
    def size(self) -> int:
        return self._vol.size

    @property
    def read_only(self) -> bool:
        return self._vol.read_only or self._group.read_only

    @property
    def can_fast_zero(self) -> bool:
        """Zeroing is a metadata operation on every PV (no zeros written)."""
        return all(pv.device._can_punch for pv in self._group._pvs)

    @property
    def name(self) -> str:
        return self._vol.name

    @property
    def id(self) -> str:
        return self._vol.id

    # -- checks ---------------------------------------------------------------

    def _check(self, offset: int, length: int, write: bool) -> None:
        vol = self._vol
        if vol.deleted or vol.hidden:
            raise errors.VolumeNotFound('%s was deleted' % vol.name)
        self._group._check_usable(io=True)
        if write and self.read_only:
            raise errors.ReadOnly('%s %s is read-only' % (vol.kind, vol.name))
        if offset % SECTOR or length % SECTOR or offset < 0 or length < 0:
            raise errors.UnalignedIO(
                'offset %d and length %d must be multiples of %d'
                % (offset, length, SECTOR), offset=offset, length=length)
        if offset + length > vol.size:
            raise errors.OutOfRange(
                'I/O at %d+%d is past the end of %s (%d bytes)'
                % (offset, length, vol.name, vol.size),
                offset=offset, length=length, size=vol.size)

    def _enter(self, offset, length, write) -> None:
        self._gate.enter()
        try:
            # Checked inside the gate: a delete or revert that closed the
            # gate before us has changed the volume by now.
            self._check(offset, length, write)
        except BaseException:
            self._gate.leave()
            raise

    # -- reads ----------------------------------------------------------------

    def read(self, offset: int, length: int, nowait: bool = False) -> bytes:
        """Read; with ``nowait``, raise BlockingIOError rather than wait
        for the disk (an event loop then hands the read to a thread).
        """
        self._enter(offset, length, False)
        try:
            cs = self._cs
            lcl, within = divmod(offset, cs)
            if within + length <= cs:
                pcl = self._group.state.resolve(self._vol, lcl)
                if pcl < 0:
                    return bytes(length)
                dev, base = self._group.locate(pcl)
                return dev.pread(length, base + within, nowait)
            return b''.join(data if data is not None else bytes(n)
                            for _off, n, data in
                            self._read_runs(offset, length, nowait))
        finally:
            self._gate.leave()

    def read_extents(self, offset: int, length: int, nowait: bool = False):
        """Read as ``[(offset, length, bytes or None)]``; None is a range
        that reads as zeros without being stored (NBD's OFFSET_HOLE).
        """
        self._enter(offset, length, False)
        try:
            lcl, within = divmod(offset, self._cs)
            if length and within + length <= self._cs:
                # One cluster, the common case.
                pcl = self._group.state.resolve(self._vol, lcl)
                if pcl < 0:
                    return [(offset, length, None)]
                dev, base = self._group.locate(pcl)
                return [(offset, length,
                         dev.pread(length, base + within, nowait))]
            return self._read_runs(offset, length, nowait)
        finally:
            self._gate.leave()

    def read_extents_into(self, offset: int, view):
        """Like read_extents, reading data into ``view`` (a buffer of the
        request's length, reused by the caller): ``[(offset, length,
        memoryview of view or None)]``; None ranges read as zeros and are
        left untouched in ``view``.
        """
        view = memoryview(view).cast('B')
        length = len(view)
        self._enter(offset, length, False)
        try:
            resolve = self._group.state.resolve
            locate = self._group.locate
            vol = self._vol
            runs = []
            for lcl, within, n in self._segments(offset, length):
                pos = lcl * self._cs + within
                part = view[pos - offset:pos - offset + n]
                pcl = resolve(vol, lcl)
                if pcl >= 0:
                    dev, base = locate(pcl)
                    dev.preadinto(part, base + within)
                is_data = pcl >= 0
                if runs and runs[-1][2] == is_data:
                    runs[-1][1] += n
                else:
                    runs.append([pos, n, is_data])
            return [(off, n, view[off - offset:off - offset + n] if data
                     else None) for off, n, data in runs]
        finally:
            self._gate.leave()

    def _read_runs(self, offset, length, nowait):
        resolve = self._group.state.resolve
        locate = self._group.locate
        vol = self._vol
        runs = []           # [offset, length, list of bytes or None]
        for lcl, within, n in self._segments(offset, length):
            pcl = resolve(vol, lcl)
            if pcl < 0:
                data = None
            else:
                dev, base = locate(pcl)
                data = dev.pread(n, base + within, nowait)
            last = runs[-1] if runs else None
            if last is not None and (last[2] is None) == (data is None):
                last[1] += n
                if data is not None:
                    last[2].append(data)
            else:
                runs.append([lcl * self._cs + within, n,
                             None if data is None else [data]])
        return [(off, n, None if parts is None else
                 parts[0] if len(parts) == 1 else b''.join(parts))
                for off, n, parts in runs]

    # -- writes ---------------------------------------------------------------

    def write(self, offset: int, data, fua: bool = False) -> None:
        """Write ``data``; durable at the next flush, or at once with FUA."""
        view = memoryview(data).cast('B')
        length = len(view)
        self._enter(offset, length, True)
        try:
            cs = self._cs
            lcl, within = divmod(offset, cs)
            if length and within + length <= cs:
                # One cluster, the common case.
                pcl = self._vol.map.get(lcl)
                if pcl >= 0:
                    dev, base = self._group.locate(pcl)
                    dev.pwrite(view, base + within)
                else:
                    self._write_new(lcl, within, view)
            elif length:
                self._write_clusters(offset, view)
        finally:
            self._gate.leave()
        if fua:
            self._group.commit()

    def _write_clusters(self, offset: int, view) -> None:
        cs = self._cs
        vol = self._vol
        locate = self._group.locate
        length = len(view)
        pos = 0
        while pos < length:
            lcl, within = divmod(offset + pos, cs)
            n = min(length - pos, cs - within)
            chunk = view[pos:pos + n]
            pcl = vol.map.get(lcl)
            if pcl >= 0:
                dev, base = locate(pcl)
                dev.pwrite(chunk, base + within)
            else:
                self._write_new(lcl, within, chunk)
            pos += n

    def _write_new(self, lcl: int, within: int, chunk) -> None:
        """First write to a cluster this volume does not own yet."""
        group = self._group
        vol = self._vol
        cs = self._cs
        with group.alloc_lock(vol):
            pcl = vol.map.get(lcl)
            if pcl >= 0:
                # Another writer allocated it while we waited.
                dev, base = group.locate(pcl)
                dev.pwrite(chunk, base + within)
                return
            src = ZERO if pcl == ZERO else group.state.resolve(vol, lcl)
            new = group.allocate_cluster(vol)
            try:
                dev, base = group.locate(new)
                if len(chunk) == cs:
                    dev.pwrite(chunk, base)
                elif src >= 0:
                    sdev, soff = group.locate(src)
                    buf = bytearray(sdev.pread(cs, soff))
                    buf[within:within + len(chunk)] = chunk
                    dev.pwrite(buf, base)
                else:
                    # A reused cluster holds a former owner's data.
                    dev.zero(base, cs)
                    dev.pwrite(chunk, base + within)
            except BaseException:
                group.abandon_cluster(new)
                raise
            group.publish(vol, lcl, new)

    def flush(self) -> None:
        """Make every write completed so far durable."""
        self._check(0, 0, False)
        self._group.commit()

    # -- discard and write-zeroes ---------------------------------------------

    def discard(self, offset: int, length: int) -> None:
        """Trim: the range reads as zeros afterwards and, where whole
        clusters of a thin volume are covered, gives their space back.
        """
        self.write_zeroes(offset, length, may_unmap=True)

    def write_zeroes(self, offset: int, length: int,
                     may_unmap: bool = True) -> None:
        """Make the range read as zeros.

        With ``may_unmap`` whole clusters of a thin volume are unmapped
        (deallocated); without it (NBD's NO_HOLE) they stay allocated.
        """
        self._check(offset, length, True)
        vol = self._vol
        cs = self._cs
        frees = may_unmap and vol.thin and any(
            vol.map.get(lcl) >= 0
            for lcl, within, n in self._segments(offset, length)
            if n == cs)
        if frees:
            # Unmapping frees clusters: no I/O may be in flight on them.
            with self._gate.exclusive():
                self._check(offset, length, True)
                self._zero(offset, length, may_unmap, can_free=True)
        else:
            self._enter(offset, length, True)
            try:
                # A cluster a concurrent write allocates meanwhile is
                # zeroed in place, never freed, outside the exclusive gate.
                self._zero(offset, length, may_unmap, can_free=False)
            finally:
                self._gate.leave()

    def _segments(self, offset, length):
        cs = self._cs
        while length:
            lcl, within = divmod(offset, cs)
            n = min(length, cs - within)
            yield lcl, within, n
            offset += n
            length -= n

    def _zero(self, offset: int, length: int, may_unmap: bool,
              can_free: bool) -> None:
        group = self._group
        vol = self._vol
        cs = self._cs
        for lcl, within, n in self._segments(offset, length):
            pcl = vol.map.get(lcl)
            if pcl >= 0:
                if n == cs and may_unmap and vol.thin and can_free:
                    group.publish(vol, lcl,
                                  ZERO if vol.parent is not None
                                  else UNMAPPED)
                else:
                    dev, base = group.locate(pcl)
                    dev.zero(base + within, n)
            elif not may_unmap:
                # NO_HOLE: the range must end up allocated.
                self._write_new(lcl, within, bytes(n))
            elif group.state.resolve(vol, lcl) < 0:
                continue                      # already reads as zeros
            elif n == cs:
                group.publish(vol, lcl, ZERO)  # hide the parent's data
            else:
                self._write_new(lcl, within, bytes(n))

    # -- allocation map -------------------------------------------------------

    def allocation(self, offset: int = 0, length: int | None = None,
                   own: bool = False) -> list[info.Extent]:
        """Extents of ``[offset, offset+length)`` by allocation state.

        By default a range is ``data`` if reading it returns stored data
        (own or inherited) and ``hole`` if it reads as unallocated zeros.
        With ``own``, only this volume's own clusters are ``data``;
        explicit zero ranges hiding the parent are ``zero``, and ranges
        read through to the parent are ``hole`` (what an incremental copy
        from the parent snapshot has to transfer is ``data`` + ``zero``).
        """
        vol = self._vol
        if length is None:
            length = vol.size - offset
        self._enter(offset, length, False)
        try:
            resolve = self._group.state.resolve
            extents = []
            cur_state = None
            cur_start = offset
            for lcl, within, n in self._segments(offset, length):
                if own:
                    value = vol.map.get(lcl)
                    state = info.DATA if value >= 0 else \
                        info.ZERO if value == ZERO else info.HOLE
                else:
                    state = info.DATA if resolve(vol, lcl) >= 0 \
                        else info.HOLE
                pos = lcl * self._cs + within
                if state != cur_state:
                    if cur_state is not None:
                        extents.append(info.Extent(cur_start,
                                                   pos - cur_start,
                                                   cur_state))
                    cur_state, cur_start = state, pos
            if cur_state is not None:
                extents.append(info.Extent(cur_start,
                                           offset + length - cur_start,
                                           cur_state))
            return extents
        finally:
            self._gate.leave()
