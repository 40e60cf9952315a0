"""``storage-engine vg``: offline volume-group administration.

These commands open a volume group directly, so the group must not be
open in a running service (the group's lock says so if it is; a group a
node serves is checked online, with ``storage-engine pool check``)::

    storage-engine vg create PV[:SIZE] [PV[:SIZE] ...] [--name N]
                             [--cluster-size 1M] [--journal-size 64M]
    storage-engine vg show PV0 [--format json]
    storage-engine vg check PV0 [--format json]
    storage-engine vg add-pv PV0 PV[:SIZE]
"""

import argparse
import dataclasses

from storage_engine.cli import exits
from storage_engine.cli import output
from storage_engine import units
from storage_engine.volstore import check as check_mod
from storage_engine.volstore import group as group_mod


def _pv_arg(text: str):
    path, sep, size = text.partition(':')
    return (path, units.parse_size(size)) if sep else path


def cmd_vg_create(args: argparse.Namespace) -> int:
    vg = group_mod.VolumeGroup.create(
        [_pv_arg(p) for p in args.pvs], name=args.name,
        cluster_size=units.parse_size(args.cluster_size),
        journal_size=units.parse_size(args.journal_size))
    cap = vg.capacity()
    vg.close()
    print('created volume group %s: %s in %d physical volume(s), cluster '
          'size %s' % (args.name, units.format_size(cap.total),
                       len(args.pvs), units.format_size(cap.cluster_size)))
    return exits.OK


def cmd_vg_show(args: argparse.Namespace) -> int:
    vg = group_mod.VolumeGroup.open(args.pv0, read_only=True)
    try:
        data = {
            'name': vg.name, 'uuid': vg.uuid,
            'capacity': dataclasses.asdict(vg.capacity()),
            'physical_volumes': [dataclasses.asdict(p)
                                 for p in vg.physical_volumes()],
            'volumes': [dataclasses.asdict(v) for v in vg.volumes()],
            'snapshots': [dataclasses.asdict(v) for v in vg.snapshots()],
        }
    finally:
        vg.close()

    def human(d):
        c = d['capacity']
        print('volume group %s (%s)' % (d['name'], d['uuid']))
        print('  total %s, free %s, provisioned %s, thick reserved %s' % (
            units.format_size(c['total']), units.format_size(c['free']),
            units.format_size(c['provisioned']),
            units.format_size(c['thick_reserved'])))
        rows = [[v['name'], v['kind'], units.format_size(v['size']),
                 'thin' if v['thin'] else 'thick',
                 units.format_size(v['allocated']), v['id']]
                for v in d['volumes'] + d['snapshots']]
        if rows:
            print()
            output.table(rows, ['NAME', 'KIND', 'SIZE', 'TYPE', 'ALLOCATED',
                                'ID'])

    output.emit(args.format, data, human)
    return exits.OK


def cmd_vg_check(args: argparse.Namespace) -> int:
    # A group in use raises errors.GroupInUse: exits.IN_USE, not PROBLEMS
    # (nothing was checked).
    report = check_mod.check_group(args.pv0)
    data = dataclasses.asdict(report)
    data['ok'] = report.ok
    output.emit(args.format, data, output.check_report)
    return exits.OK if report.ok else exits.PROBLEMS


def cmd_vg_add_pv(args: argparse.Namespace) -> int:
    vg = group_mod.VolumeGroup.open(args.pv0)
    try:
        vg.add_pv(*(_pv_arg(args.pv) if ':' in args.pv else (args.pv,)))
        total = vg.capacity().total
    finally:
        vg.close()
    print('volume group %s now has %s' % (vg.name, units.format_size(total)))
    return exits.OK


def add_parsers(sub, format_parent: argparse.ArgumentParser) -> None:
    """Add ``vg`` and its subcommands to the top-level subparsers."""
    vg = sub.add_parser('vg', help='work on a volume group directly '
                                   '(offline)')
    vgsub = vg.add_subparsers(dest='vg_command', required=True)

    p = vgsub.add_parser('create', help='create a volume group')
    p.add_argument('pvs', nargs='+', metavar='PV[:SIZE]',
                   help='file or block device; a missing file is created '
                        'sparse with SIZE (e.g. /srv/pv0:100G)')
    p.add_argument('--name', default='vg0')
    p.add_argument('--cluster-size', default='1M')
    p.add_argument('--journal-size', default='64M')
    p.set_defaults(func=cmd_vg_create)

    for name, func, helptext, more in (
            ('show', cmd_vg_show, 'capacity, physical volumes, volumes',
             {}),
            ('check', cmd_vg_check, 'consistency check (exit 1 on '
                                    'problems, 9 if a running node holds '
                                    'the group)',
             {'description': 'Check a volume group no process has open, '
                             'changing nothing. A group\na running node '
                             'serves is refused (exit 9): check it online '
                             'with\n`storage-engine pool check NAME`.',
              'epilog': exits.EPILOG,
              'formatter_class': argparse.RawDescriptionHelpFormatter})):
        p = vgsub.add_parser(name, help=helptext, parents=[format_parent],
                             **more)
        p.add_argument('pv0', help='the group\'s first physical volume')
        p.set_defaults(func=func)

    p = vgsub.add_parser('add-pv', help='grow a group with another PV')
    p.add_argument('pv0')
    p.add_argument('pv', metavar='PV[:SIZE]')
    p.set_defaults(func=cmd_vg_add_pv)
