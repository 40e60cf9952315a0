"""The LVM-style volume store: volume groups of thick and thin volumes.

Public API::

    from storage_engine.volstore import VolumeGroup
    vg = VolumeGroup.create([('/var/lib/se/pv0', 100 << 30)], name='vg0')
    vg.create_volume('data', 10 << 30, thin=True)
    with vg.open_volume('data') ... read / write / flush / discard
"""

from storage_engine.volstore.check import check_group  # noqa: F401
from storage_engine.volstore.group import VolumeGroup  # noqa: F401
