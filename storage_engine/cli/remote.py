"""The ``storage-engine`` commands that talk to a node's management API.

Every command goes through :class:`storage_engine.client.Client`, so it
sees the same errors, retries and idempotent creates as a Cinder driver
does; the command only resolves names, parses sizes and prints. With
``--format json`` it prints the API's JSON unchanged (a list command: the
list), for scripts; otherwise tables and fields for people.
"""

import argparse
import sys

from storage_engine.cli import exits
from storage_engine.cli import output
from storage_engine.cli import refs
from storage_engine import client as client_mod
from storage_engine import errors
from storage_engine import names
from storage_engine import units


def make_client(args: argparse.Namespace) -> client_mod.Client:
    return client_mod.Client(args.url, args.token, ca_file=args.ca_file)


# -- how objects look to people -----------------------------------------------

def _pct(job: dict) -> str:
    return '%.1f%%' % ((job.get('progress') or {}).get('percent') or 0)


def _source(volume: dict) -> str | None:
    source = volume.get('source') or {}
    for kind in ('snapshot', 'volume'):
        if source.get(kind + '_id'):
            return '%s %s' % (kind, source[kind + '_id'])
    return None


def _aoe_address(c: dict) -> str:
    """An AoE device's name, as the Linux driver has it: e<shelf>.<slot>."""
    return 'e%s.%s' % (c.get('shelf'), c.get('slot'))


def _endpoint(export: dict) -> str:
    c = export.get('connection') or {}
    if c.get('protocol') == 'aoe':
        return 'aoe://%s/%s' % (c.get('interface'), _aoe_address(c))
    return '%s://%s:%s/%s' % (c.get('protocol', 'nbd'), c.get('host'),
                              c.get('port'), c.get('export_name'))


POOL_HEADERS = ['NAME', 'TOTAL', 'FREE', 'ALLOCATED', 'PROVISIONED',
                'AVAILABLE THIN', 'VOLUMES', 'SNAPSHOTS']


def pool_row(p: dict) -> list:
    return [p['name'], output.size(p['total']), output.size(p['free']),
            output.size(p['allocated']), output.size(p['provisioned']),
            output.size(p['available_thin']), p['volumes'], p['snapshots']]


VOLUME_HEADERS = ['NAME', 'POOL', 'SIZE', 'TYPE', 'ALLOCATED', 'PARENT',
                  'STATUS', 'ID']


def volume_row(v: dict) -> list:
    return [v['name'], v['pool'], output.size(v['size']), v['provisioning'],
            output.size(v['allocated']), output.yes_no(v.get('has_parent')),
            v['status'], v['id']]


def show_volume(v: dict) -> None:
    output.fields([
        ('id', v['id']), ('name', v['name']), ('pool', v['pool']),
        ('size', '%s (%d bytes)' % (output.size(v['size']), v['size'])),
        ('provisioning', v['provisioning']),
        ('allocated', output.size(v['allocated'])),
        ('source', _source(v)),
        ('has parent', output.yes_no(v.get('has_parent'))),
        ('status', v['status']), ('created', v['created_at'])])


SNAPSHOT_HEADERS = ['NAME', 'POOL', 'VOLUME', 'SIZE', 'STATUS', 'CREATED',
                    'ID']


def snapshot_row(s: dict) -> list:
    return [s['name'], s['pool'], s.get('volume_id'), output.size(s['size']),
            s['status'], s['created_at'], s['id']]


def show_snapshot(s: dict) -> None:
    output.fields([
        ('id', s['id']), ('name', s['name']), ('pool', s['pool']),
        ('volume', s.get('volume_id')),
        ('size', '%s (%d bytes)' % (output.size(s['size']), s['size'])),
        ('status', s['status']), ('created', s['created_at'])])


EXPORT_HEADERS = ['ID', 'VOLUME', 'HOSTS', 'ACCESS', 'ENDPOINT', 'TLS']


def export_row(e: dict) -> list:
    return [e['id'], e['volume_id'], ','.join(e['hosts']),
            'ro' if e['read_only'] else 'rw', _endpoint(e),
            (e.get('connection') or {}).get('tls_mode')]


def show_export(e: dict) -> None:
    c = e.get('connection') or {}
    if c.get('protocol') == 'aoe':
        address = [('shelf.slot', '%s.%s' % (c.get('shelf'), c.get('slot'))),
                   ('target mac', c.get('mac')),
                   ('interface', c.get('interface'))]
    else:
        address = [('export name', c.get('export_name')),
                   ('tls', c.get('tls_mode'))]
    output.fields([
        ('id', e['id']), ('volume', e['volume_id']),
        ('protocol', e['protocol']), ('hosts', ', '.join(e['hosts'])),
        ('access', 'read-only' if e['read_only'] else 'read-write'),
        ('endpoint', _endpoint(e))] + address +
        [('created', e['created_at'])])


JOB_HEADERS = ['ID', 'KIND', 'VOLUME', 'STATE', 'PROGRESS', 'CREATED',
               'FINISHED']


def job_row(j: dict) -> list:
    return [j['id'], j['kind'], j['volume_id'], j['state'], _pct(j),
            j['created_at'], j.get('finished_at')]


def show_job(j: dict) -> None:
    progress = j.get('progress') or {}
    error = j.get('error')
    output.fields([
        ('id', j['id']), ('kind', j['kind']), ('volume', j['volume_id']),
        ('state', j['state']),
        ('progress', '%s (%s of %s)' % (_pct(j), progress.get('done'),
                                        progress.get('total'))),
        ('error', '%s: %s' % (error.get('code'), error.get('message'))
         if error else None),
        ('created', j['created_at']), ('finished', j.get('finished_at'))])


def _lister(headers: list[str], row):
    return lambda items: output.table([row(x) for x in items], headers)


# -- node and pools -----------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    client = make_client(args)
    try:
        client.ready()
        not_ready = None
    except errors.Unavailable as e:
        if e.details.get('status') != 503:
            raise               # unreachable: there is nothing to show
        not_ready = e
    data = {'ready': not_ready is None, 'node': client.node(),
            'pools': client.pools()}

    def human(d: dict) -> None:
        n, stats = d['node'], d['node']['stats']
        cap, nbd, aoe = stats['capacity'], n['nbd'], n.get('aoe')
        output.fields([
            ('node', '%s (version %s), up %s' % (
                n['name'], n['version'], output.duration(n['uptime']))),
            ('ready', 'yes' if d['ready'] else 'no: %s' % not_ready),
            ('nbd', '%s:%s (tls %s)' % (nbd['host'], nbd['port'],
                                        nbd['tls_mode'])),
            ('aoe', 'shelf %s on %s (%s)'
             % (aoe['shelf'], aoe['interface'], aoe['mac'])
             if aoe else 'off'),
            ('capacity', 'total %s, free %s, allocated %s, provisioned %s'
             % tuple(output.size(cap[k]) for k in
                     ('total', 'free', 'allocated', 'provisioned'))),
            ('objects', '%d pool(s), %d volume(s), %d snapshot(s), '
             '%d export(s)' % (stats['pools'], stats['volumes'],
                               stats['snapshots'], stats['exports'])),
            ('activity', '%d NBD connection(s), %d job(s) running' % (
                stats['nbd_connections'], stats['jobs_running']))])
        if d['pools']:
            print()
            output.table([pool_row(p) for p in d['pools']], POOL_HEADERS)

    output.emit(args.format, data, human)
    return exits.OK if not_ready is None else exits.UNAVAILABLE


def cmd_pool_list(args: argparse.Namespace) -> int:
    output.emit(args.format, make_client(args).pools(),
                _lister(POOL_HEADERS, pool_row))
    return exits.OK


def _health(p: dict) -> str:
    """A pool's health, for people: ``ok``, or the state, since when and
    why.
    """
    h = p.get('health') or {'state': 'ok'}
    if h['state'] == 'ok':
        return 'ok'
    return '%s since %s: %s' % (h['state'], h.get('since'), h.get('reason'))


def _backing(p: dict) -> str | None:
    b = p.get('backing') or {}
    if not b.get('shortfall'):
        return None
    return 'its files may grow by %s more than %s' % (
        output.size(b['shortfall']), ', '.join(
            '%s has free (%s)' % (fs['mount'], output.size(fs['free']))
            for fs in b.get('filesystems', ())))


def show_pool(p: dict) -> None:
    output.fields([
        ('name', p['name']),
        ('health', _health(p)),
        ('short of space', _backing(p)),
        ('cluster size', output.size(p['cluster_size'])),
        ('total', output.size(p['total'])),
        ('free', output.size(p['free'])),
        ('allocated', output.size(p['allocated'])),
        ('provisioned', output.size(p['provisioned'])),
        ('thick reserved', output.size(p['thick_reserved'])),
        ('available thin', output.size(p['available_thin'])),
        ('over-subscription', '%g' % p['max_over_subscription_ratio']),
        ('reserved', '%d%%' % p['reserved_percentage']),
        ('volumes', p['volumes']), ('snapshots', p['snapshots'])])
    if p['physical_volumes']:
        print()
        output.table([[pv['index'], pv['path'], output.size(pv['size']),
                       output.size(pv['free'])]
                      for pv in p['physical_volumes']],
                     ['PV', 'PATH', 'SIZE', 'FREE'])


def cmd_pool_reopen(args: argparse.Namespace) -> int:
    pool = make_client(args).reopen_pool(args.name)
    output.emit(args.format, pool, show_pool)
    if (pool.get('health') or {}).get('state', 'ok') != 'ok':
        print('storage-engine: error: pool %s is not back in service: %s'
              % (args.name, _health(pool)), file=sys.stderr)
        return exits.PROBLEMS
    return exits.OK


def cmd_pool_show(args: argparse.Namespace) -> int:
    output.emit(args.format, make_client(args).pool(args.name), show_pool)
    return exits.OK


def cmd_pool_check(args: argparse.Namespace) -> int:
    # The same report, output and exit codes as the offline vg check.
    report = make_client(args).check_pool(args.name)
    output.emit(args.format, report, output.check_report)
    return exits.OK if report['ok'] else exits.PROBLEMS


# -- volumes ------------------------------------------------------------------

def cmd_volume_list(args: argparse.Namespace) -> int:
    output.emit(args.format, make_client(args).volumes(pool=args.pool),
                _lister(VOLUME_HEADERS, volume_row))
    return exits.OK


def cmd_volume_show(args: argparse.Namespace) -> int:
    client = make_client(args)
    output.emit(args.format, client.volume(refs.volume_id(client, args.ref)),
                show_volume)
    return exits.OK


def cmd_volume_create(args: argparse.Namespace) -> int:
    client = make_client(args)
    size = units.parse_size(args.size)
    volume_id = names.check_id(args.id) if args.id else None
    snapshot_src = (refs.snapshot_id(client, args.from_snapshot)
                    if args.from_snapshot else None)
    volume_src = (refs.volume_id(client, args.from_volume)
                  if args.from_volume else None)
    volume = client.create_volume(
        args.name, size, pool=args.pool, provisioning=args.provisioning,
        source_snapshot_id=snapshot_src, source_volume_id=volume_src,
        id=volume_id)
    output.emit(args.format, volume, show_volume)
    return exits.OK


def cmd_volume_delete(args: argparse.Namespace) -> int:
    client = make_client(args)
    volume_id = refs.volume_id(client, args.ref)
    client.delete_volume(volume_id)
    if args.format != output.JSON:
        print('deleted volume %s' % args.ref)
    return exits.OK


def cmd_volume_extend(args: argparse.Namespace) -> int:
    client = make_client(args)
    size = units.parse_size(args.size)
    output.emit(args.format, client.extend_volume(
        refs.volume_id(client, args.ref), size), show_volume)
    return exits.OK


def cmd_volume_rename(args: argparse.Namespace) -> int:
    client = make_client(args)
    output.emit(args.format, client.rename_volume(
        refs.volume_id(client, args.ref), args.new_name), show_volume)
    return exits.OK


def cmd_volume_revert(args: argparse.Namespace) -> int:
    client = make_client(args)
    volume_id = refs.volume_id(client, args.ref)
    snapshot_id = refs.snapshot_id(client, args.snapshot)
    output.emit(args.format, client.revert_volume(volume_id, snapshot_id),
                show_volume)
    return exits.OK


def cmd_volume_flatten(args: argparse.Namespace) -> int:
    client = make_client(args)
    job = client.flatten_volume(refs.volume_id(client, args.ref))
    if not args.no_wait:
        bar = output.ProgressBar('flatten %s' % args.ref)
        try:
            job = client.wait_job(job['id'], progress=bar,
                                  raise_on_failure=False)
        finally:
            bar.close()
    output.emit(args.format, job, show_job)
    if job['state'] == 'failed':
        error = job.get('error') or {}
        print('storage-engine: error: job %s failed: %s'
              % (job['id'], error.get('message', 'no reason given')),
              file=sys.stderr)
        return exits.PROBLEMS
    return exits.OK


# -- snapshots ----------------------------------------------------------------

def cmd_snapshot_list(args: argparse.Namespace) -> int:
    client = make_client(args)
    volume_id = refs.volume_id(client, args.volume) if args.volume else None
    output.emit(args.format, client.snapshots(volume_id=volume_id),
                _lister(SNAPSHOT_HEADERS, snapshot_row))
    return exits.OK


def cmd_snapshot_show(args: argparse.Namespace) -> int:
    client = make_client(args)
    output.emit(args.format,
                client.snapshot(refs.snapshot_id(client, args.ref)),
                show_snapshot)
    return exits.OK


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    client = make_client(args)
    snapshot_id = names.check_id(args.id) if args.id else None
    output.emit(args.format, client.create_snapshot(
        refs.volume_id(client, args.volume), args.name, id=snapshot_id),
        show_snapshot)
    return exits.OK


def cmd_snapshot_delete(args: argparse.Namespace) -> int:
    client = make_client(args)
    client.delete_snapshot(refs.snapshot_id(client, args.ref))
    if args.format != output.JSON:
        print('deleted snapshot %s' % args.ref)
    return exits.OK


# -- exports ------------------------------------------------------------------

def cmd_export_list(args: argparse.Namespace) -> int:
    client = make_client(args)
    volume_id = (refs.volume_or_snapshot_id(client, args.volume)
                 if args.volume else None)
    output.emit(args.format, client.exports(volume_id=volume_id),
                _lister(EXPORT_HEADERS, export_row))
    return exits.OK


def cmd_export_show(args: argparse.Namespace) -> int:
    output.emit(args.format,
                make_client(args).export(names.check_id(args.id)),
                show_export)
    return exits.OK


def cmd_export_create(args: argparse.Namespace) -> int:
    client = make_client(args)
    export_id = names.check_id(args.id) if args.id else None
    output.emit(args.format, client.create_export(
        refs.volume_or_snapshot_id(client, args.ref), args.hosts,
        read_only=args.read_only, protocol=args.protocol, id=export_id),
        show_export)
    return exits.OK


def cmd_export_delete(args: argparse.Namespace) -> int:
    make_client(args).delete_export(names.check_id(args.id))
    if args.format != output.JSON:
        print('deleted export %s' % args.id)
    return exits.OK


# -- jobs ---------------------------------------------------------------------

def cmd_job_list(args: argparse.Namespace) -> int:
    output.emit(args.format, make_client(args).jobs(),
                _lister(JOB_HEADERS, job_row))
    return exits.OK


def cmd_job_show(args: argparse.Namespace) -> int:
    output.emit(args.format, make_client(args).job(names.check_id(args.id)),
                show_job)
    return exits.OK


# -- the parsers --------------------------------------------------------------

def add_parsers(sub, parents: list[argparse.ArgumentParser]) -> None:
    """Add the API commands to the top-level subparsers; ``parents`` carry
    the connection and format options, so they may follow the command too.
    """
    def leaf(group, name, func, helptext, **kwargs):
        p = group.add_parser(
            name, help=helptext, parents=parents, epilog=exits.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        p.set_defaults(func=func)
        return p

    def resource(name, helptext):
        p = sub.add_parser(name, help=helptext)
        return p.add_subparsers(dest=name + '_command', required=True)

    leaf(sub, 'status', cmd_status, 'the node, its NBD endpoint and pools')

    pools = resource('pool', 'pools (volume groups) of the node')
    leaf(pools, 'list', cmd_pool_list, 'every pool and its capacity')
    leaf(pools, 'show', cmd_pool_show, 'one pool').add_argument('name')
    p = leaf(pools, 'check', cmd_pool_check,
             'consistency check of a pool, online (exit 1 on problems)',
             description='Check the pool\'s volume group while the node '
                         'serves it, as vg check\ndoes offline: I/O goes '
                         'on.')
    p.add_argument('name')
    leaf(pools, 'reopen', cmd_pool_reopen,
         'bring a pool stopped by an I/O error back (closed and opened '
         'again from disk, its exports served again), without restarting '
         'the node; another pool is only checked again').add_argument(
             'name')

    vols = resource('volume', 'volumes')
    p = leaf(vols, 'list', cmd_volume_list, 'volumes, or those of one pool')
    p.add_argument('--pool')
    leaf(vols, 'show', cmd_volume_show, 'one volume').add_argument(
        'ref', metavar='REF', help='volume id or name')
    p = leaf(vols, 'create', cmd_volume_create,
             'create a volume, empty or a clone')
    p.add_argument('name', metavar='NAME')
    p.add_argument('size', metavar='SIZE', help='e.g. 10G, 512M, 4096')
    p.add_argument('--pool', help='default: the node\'s default pool')
    kind = p.add_mutually_exclusive_group()
    kind.add_argument('--thin', dest='provisioning', action='store_const',
                      const='thin', help='allocate on write')
    kind.add_argument('--thick', dest='provisioning', action='store_const',
                      const='thick', help='reserve all of SIZE now')
    source = p.add_mutually_exclusive_group()
    source.add_argument('--from-snapshot', metavar='REF',
                        help='clone this snapshot')
    source.add_argument('--from-volume', metavar='REF',
                        help='clone this volume as it is now')
    p.add_argument('--id', metavar='UUID',
                   help='the new volume\'s id (default: a new one); '
                        'repeating a create with the same id is harmless')
    leaf(vols, 'delete', cmd_volume_delete, 'delete a volume').add_argument(
        'ref', metavar='REF')
    p = leaf(vols, 'extend', cmd_volume_extend, 'grow a volume (online)')
    p.add_argument('ref', metavar='REF')
    p.add_argument('size', metavar='SIZE', help='the new size')
    p = leaf(vols, 'rename', cmd_volume_rename, 'rename a volume')
    p.add_argument('ref', metavar='REF')
    p.add_argument('new_name', metavar='NEW')
    p = leaf(vols, 'revert', cmd_volume_revert,
             'make a volume what it was at one of its snapshots')
    p.add_argument('ref', metavar='REF')
    p.add_argument('snapshot', metavar='SNAPSHOT_REF')
    p = leaf(vols, 'flatten', cmd_volume_flatten,
             'copy shared data into a clone so it has no parent')
    p.add_argument('ref', metavar='REF')
    p.add_argument('--no-wait', action='store_true',
                   help='print the job at once instead of waiting for it')

    snaps = resource('snapshot', 'snapshots')
    p = leaf(snaps, 'list', cmd_snapshot_list,
             'snapshots, or those of one volume')
    p.add_argument('--volume', metavar='REF')
    leaf(snaps, 'show', cmd_snapshot_show, 'one snapshot').add_argument(
        'ref', metavar='REF', help='snapshot id or name')
    p = leaf(snaps, 'create', cmd_snapshot_create, 'snapshot a volume')
    p.add_argument('volume', metavar='VOLUME_REF')
    p.add_argument('name', metavar='NAME')
    p.add_argument('--id', metavar='UUID')
    leaf(snaps, 'delete', cmd_snapshot_delete,
         'delete a snapshot').add_argument('ref', metavar='REF')

    exports = resource('export',
                       'exports (NBD, AoE) of volumes and snapshots')
    p = leaf(exports, 'list', cmd_export_list,
             'exports, or those of one volume or snapshot')
    p.add_argument('--volume', metavar='REF')
    leaf(exports, 'show', cmd_export_show, 'one export').add_argument('id')
    p = leaf(exports, 'create', cmd_export_create,
             'export a volume (or, read-only, a snapshot) to hosts')
    p.add_argument('ref', metavar='REF', help='volume or snapshot')
    p.add_argument('--host', dest='hosts', action='append', required=True,
                   metavar='H', help='a host admitted (repeat for more): '
                                     'an IP address or network for nbd, a '
                                     'MAC address for aoe')
    p.add_argument('--protocol', choices=['nbd', 'aoe'], default='nbd',
                   help='nbd (default), or aoe (ATA over Ethernet, on a '
                        'node with [aoe] interface)')
    p.add_argument('--read-only', action='store_true')
    p.add_argument('--id', metavar='UUID')
    leaf(exports, 'delete', cmd_export_delete,
         'remove an export (disconnects its clients)').add_argument('id')

    jobs = resource('job', 'long-running jobs (flatten)')
    leaf(jobs, 'list', cmd_job_list, 'running and finished jobs')
    leaf(jobs, 'show', cmd_job_show, 'one job').add_argument('id')
