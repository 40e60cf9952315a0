"""Value objects the volume store hands out (never live internals)."""

import dataclasses

DATA = 'data'
ZERO = 'zero'
HOLE = 'hole'


@dataclasses.dataclass(frozen=True)
class VolumeInfo:
    id: str
    name: str
    kind: str                 # 'volume' or 'snapshot'
    size: int                 # bytes
    thin: bool
    parent_id: str | None     # the snapshot this one reads through
    origin_id: str | None     # snapshot: its volume; clone: its snapshot
    created_at: float
    allocated: int            # bytes in clusters this volume owns
    read_only: bool
    has_parent: bool = False  # it reads some data through a snapshot


@dataclasses.dataclass(frozen=True)
class GroupCapacity:
    total: int                # bytes of data clusters in all PVs
    free: int                 # bytes in clusters nobody owns
    allocated: int            # bytes owned by volumes, snapshots, metadata
    provisioned: int          # sum of volume sizes
    thick_reserved: int       # bytes thick volumes may still claim
    available_thin: int       # what thin writes can still allocate
    max_over_subscription_ratio: float
    reserved_percentage: int
    volumes: int
    snapshots: int
    cluster_size: int


@dataclasses.dataclass(frozen=True)
class PhysicalVolumeInfo:
    index: int
    uuid: str
    path: str
    size: int                 # bytes of data clusters
    free: int


@dataclasses.dataclass(frozen=True)
class Extent:
    """A run of a volume with one allocation state.

    ``data``: stored data; ``hole``: unallocated, reads as zeros (or, in an
    own-only map, reads through to the parent); ``zero``: an explicit zero
    range that hides the parent's data (own-only maps only).
    """

    offset: int
    length: int
    state: str
