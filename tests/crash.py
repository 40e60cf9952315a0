"""Simulating crashes of an open volume group in tests."""


def abandon(vg):
    """Drop an open group as a crash would: no commit, no checkpoint.

    The page cache survives, as it does when a process is killed; the
    devices are closed so the group can be opened again.
    """
    vg._closed = True
    for pv in vg._pvs:
        pv.device.close()
