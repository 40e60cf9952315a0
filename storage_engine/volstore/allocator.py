"""The cluster allocator: which physical clusters of a group are in use.

One byte per cluster (1 MiB of memory per TiB at the default 1 MiB
cluster size) so that searching for free space is a C-speed ``find`` on a
``bytearray``, single clusters and contiguous runs alike.

The allocator is never persisted: on open it is derived from the ownership
recorded in the metadata (volume maps and checkpoint clusters), so a crash
can never leave a cluster allocated to nobody (a leak) on disk.
"""

import threading

from storage_engine import errors

FREE = 0
USED = 1


class Allocator:
    def __init__(self, total: int):
        self._used = bytearray(total)
        self.free_count = total
        self._cursor = 0
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return len(self._used)

    def grow(self, clusters: int) -> None:
        with self._lock:
            self._used.extend(bytes(clusters))
            self.free_count += clusters

    def is_used(self, pcl: int) -> bool:
        return self._used[pcl] == USED

    def claim(self, pcl: int) -> bool:
        """Mark ``pcl`` used while deriving ownership; False if it already was.

        Only used on open and by the consistency check, single-threaded.
        """
        if self._used[pcl]:
            return False
        self._used[pcl] = USED
        self.free_count -= 1
        return True

    def allocate_one(self) -> int:
        with self._lock:
            used = self._used
            i = used.find(FREE, self._cursor)
            if i < 0:
                i = used.find(FREE, 0, self._cursor)
                if i < 0:
                    raise errors.NoSpace('volume group is full')
            used[i] = USED
            self.free_count -= 1
            self._cursor = i + 1
            return i

    def allocate(self, count: int) -> list[tuple[int, int]]:
        """Allocate ``count`` clusters as few ``(start, length)`` runs.

        A single contiguous run is preferred (thick volumes then map to a
        linear range); otherwise the first free runs found are used.
        """
        if count <= 0:
            return []
        with self._lock:
            if count > self.free_count:
                raise errors.NoSpace('volume group is full')
            used = self._used
            needle = bytes(count)
            i = used.find(needle, self._cursor)
            if i < 0:
                i = used.find(needle)
            if i >= 0:
                used[i:i + count] = b'\x01' * count
                self.free_count -= count
                self._cursor = i + count
                return [(i, count)]
            runs = []
            need = count
            pos = 0
            while need:
                start = used.find(FREE, pos)
                end = used.find(USED, start)
                if end < 0:
                    end = len(used)
                n = min(end - start, need)
                used[start:start + n] = b'\x01' * n
                runs.append((start, n))
                need -= n
                pos = start + n
            self.free_count -= count
            self._cursor = pos
            return runs

    def release(self, clusters) -> None:
        with self._lock:
            used = self._used
            n = 0
            for pcl in clusters:
                if used[pcl]:
                    used[pcl] = FREE
                    n += 1
            self.free_count += n

    def release_runs(self, runs) -> None:
        with self._lock:
            for start, count in runs:
                self._used[start:start + count] = bytes(count)
                self.free_count += count

    def count_used(self, start: int, end: int) -> int:
        return self._used.count(USED, start, end)

    def used_map(self) -> bytes:
        """A copy of the map, one byte per cluster (consistency check)."""
        with self._lock:
            return bytes(self._used)

    def used_clusters(self):
        """Yield every used cluster number (consistency check)."""
        used = self._used
        i = used.find(USED)
        while i >= 0:
            yield i
            i = used.find(USED, i + 1)


def derive(total: int, checkpoint_runs, volumes) -> tuple['Allocator', list]:
    """The allocator that ownership implies, and the problems found.

    ``checkpoint_runs`` are the ``(start, count)`` runs the checkpoint in
    use occupies; ``volumes`` the volumes and snapshots of the model. Each
    physical cluster must be owned once and lie inside the group. Opening
    a group and the consistency check both derive it this way, so they
    cannot disagree about what is owned.
    """
    alloc = Allocator(total)
    problems = []
    for start, count in checkpoint_runs:
        for pcl in range(start, start + count):
            if pcl >= total or not alloc.claim(pcl):
                problems.append('checkpoint cluster %d is out of range '
                                'or owned twice' % pcl)
    for vol in volumes:
        owned = 0
        for pcl in vol.map.physical_clusters():
            owned += 1
            if pcl >= total:
                problems.append('%s maps cluster %d past the end of the '
                                'group' % (vol.name, pcl))
            elif not alloc.claim(pcl):
                problems.append('cluster %d is owned twice (again by '
                                '%s %s)' % (pcl, vol.kind, vol.name))
        if owned != vol.owned:
            problems.append('%s %s owns %d clusters, metadata says %d'
                            % (vol.kind, vol.name, owned, vol.owned))
    return alloc, problems
