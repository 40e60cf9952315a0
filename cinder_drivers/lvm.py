"""The LVM-style family: volumes in a volume group of one storage node.

``volume_driver = cinder_drivers.lvm.EngineLVMDriver``. Volumes are thin
or thick (``provisioning:type`` in the volume type, else
``engine_provisioning``), snapshots and clones are copy-on-write and
instant, and volumes are exported per host over NBD. Everything is in the
shared base; this family adds nothing to it but its name, which is the
point: the AoE family is this driver with another export protocol.
"""

from cinder import interface

from cinder_drivers import base


@interface.volumedriver
class EngineLVMDriver(base.EngineDriverBase):
    """LVM-style volumes on a storage-engine node, exported over NBD.

    Version history:

    .. code-block:: none

        1.0.0 - First version: thin and thick volumes, snapshots, clones,
                revert, online extend, retype thin <-> thick, manage,
                multiattach, NBD exports admitting only their host.
        1.1.0 - Snapshot manage/unmanage and snapshot-manageable-list;
                manageable-list answers through Cinder (extra_info is a
                dict); a bad option value fails its own backend only; a
                node not up at start leaves the backend down until it
                answers, not uninitialised.
    """

    VERSION = '1.1.0'
