"""A volume group on a real block device: a loop device over a file.

Block devices take other paths than files: their size comes from the
device, and zeroing uses BLKZEROOUT (which a loop device turns into a
punched hole of its backing file). Needs root and losetup, which the test
tiers have; the loop device is detached whatever happens.
"""

import os
import subprocess

import pytest

from storage_engine import errors
from storage_engine.volstore import check_group
from storage_engine.volstore import VolumeGroup

MiB = 1 << 20


@pytest.fixture
def loop_device(tmp_path):
    backing = tmp_path / 'backing.img'
    with open(backing, 'wb') as f:
        f.truncate(128 * MiB)
    dev = subprocess.run(['losetup', '--find', '--show', str(backing)],
                         capture_output=True, text=True, check=True
                         ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(['losetup', '--detach', dev], check=True)


def test_group_on_a_loop_device(loop_device, tmp_path):
    vg = VolumeGroup.create([loop_device], cluster_size=64 * 1024,
                            journal_size=256 * 1024)
    try:
        cap = vg.capacity()
        # The whole device minus the label, superblocks and journal.
        assert 120 * MiB < cap.total < 128 * MiB
        vg.create_volume('thick', 8 * MiB, thin=False)
        vg.create_volume('thin', 8 * MiB)
        for name in ('thick', 'thin'):
            h = vg.open_volume(name)
            assert h.read(0, MiB) == bytes(MiB)
            h.write(4096, b'B' * 8192)
            h.discard(8192, 4096)      # partial cluster: zeroed in place
            assert h.read(0, 16384) == \
                bytes(4096) + b'B' * 4096 + bytes(4096) + bytes(4096)
        vg.flush()
        # Reused space never shows the former owner's data.
        vg.delete_volume('thin')
        vg.create_volume('again', 8 * MiB, thin=False)
        assert vg.open_volume('again').read(0, 8 * MiB) == bytes(8 * MiB)
    finally:
        vg.close()
    assert check_group(loop_device).ok
    vg = VolumeGroup.open(loop_device)
    try:
        assert vg.open_volume('thick').read(4096, 4096) == b'B' * 4096
        with pytest.raises(errors.AlreadyExists):
            VolumeGroup.create([(str(tmp_path / 'other'), 64 * MiB),
                                loop_device], journal_size=256 * 1024)
    finally:
        vg.close()
    assert not os.path.exists(tmp_path / 'other')
