#!/usr/bin/env python3
"""A short demonstration of the volume store, printing what it does.

Run by tools/all-in-one.sh. Idempotent: it reuses the group in DATA_DIR and
replaces the demo's own volumes.
"""

import argparse
import hashlib
import os
import sys

from storage_engine import errors
from storage_engine import units
from storage_engine.volstore import check_group
from storage_engine.volstore import VolumeGroup


def say(text):
    print('  ' + text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--data-dir', default='data')
    args = parser.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    pv0 = os.path.join(args.data_dir, 'pv0.img')
    if os.path.exists(pv0):
        vg = VolumeGroup.open(pv0)
        say('opened volume group %s on %s' % (vg.name, pv0))
    else:
        vg = VolumeGroup.create([(pv0, 20 * units.Gi)], name='demo')
        say('created volume group %s: a 20 GiB sparse file %s'
            % (vg.name, pv0))
    with vg:
        for name in ('demo-clone', 'demo-thick', 'demo-vol'):
            try:
                vg.delete_volume(name)
            except errors.VolumeNotFound:
                pass
        for snap in vg.snapshots():
            if snap.name == 'demo-snap':
                vg.delete_snapshot(snap.name)
        vol = vg.create_volume('demo-vol', 4 * units.Gi, thin=True)
        say('created thin volume %s (%s), %s allocated'
            % (vol.name, units.format_size(vol.size),
               units.format_size(vol.allocated)))
        thick = vg.create_volume('demo-thick', 1 * units.Gi, thin=False)
        say('created thick volume %s (%s), %s allocated up front'
            % (thick.name, units.format_size(thick.size),
               units.format_size(thick.allocated)))
        h = vg.open_volume('demo-vol')
        data = os.urandom(8 * units.Mi)
        h.write(units.Mi, data)
        h.flush()
        say('wrote 8 MiB at offset 1 MiB and flushed; sha256 %s'
            % hashlib.sha256(data).hexdigest()[:16])
        snap = vg.create_snapshot('demo-vol', 'demo-snap')
        say('took snapshot %s (metadata only)' % snap.name)
        h.write(units.Mi, bytes(8 * units.Mi))
        say('overwrote the volume\'s data with zeros')
        vg.clone('demo-snap', 'demo-clone')
        c = vg.open_volume('demo-clone')
        got = c.read(units.Mi, 8 * units.Mi)
        say('clone %s reads the snapshot\'s data: sha256 %s (%s)'
            % ('demo-clone', hashlib.sha256(got).hexdigest()[:16],
               'match' if got == data else 'MISMATCH'))
        vg.revert('demo-vol', 'demo-snap')
        back = vg.open_volume('demo-vol').read(units.Mi, 8 * units.Mi)
        say('reverted demo-vol to demo-snap: %s'
            % ('data back' if back == data else 'MISMATCH'))
        cap = vg.capacity()
        say('group: total %s, allocated %s, provisioned %s'
            % (units.format_size(cap.total), units.format_size(cap.allocated),
               units.format_size(cap.provisioned)))
    report = check_group(pv0)
    say('consistency check: %s' % ('consistent' if report.ok
                                   else '; '.join(report.errors)))
    return 0 if report.ok and got == data and back == data else 1


if __name__ == '__main__':
    sys.exit(main())
