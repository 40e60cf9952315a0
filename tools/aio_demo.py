#!/usr/bin/env python3
"""The all-in-one's demo: Cinder on our engine, used as a user and as Nova
use it, through python-cinderclient (noauth, an admin context).

Run by tools/all-in-one.sh once the services run (tools/aio_services.py).
It makes a volume type with extra specs (``provisioning:type thin``), a
volume of that type; attaches it to this host as Nova does (an attachment
made with os-brick's connector properties, the connection made by our NBD
connector: nbdfuse and a loop device, a real /dev/loopN), makes an ext4
filesystem on it and writes a file; snapshots the volume, makes a volume
from the snapshot (a clone), attaches the clone, reads the file back and
compares it byte for byte; then prints an account of what it did.

The objects of a run are named ``aio-demo-<run>-...`` and deleted at its
end (``--keep`` leaves them, to look at; the next run deletes them, as it
deletes whatever an interrupted run left). Exit status 0 only when every
step worked and the bytes read back are the bytes written.
"""

import argparse
import contextlib
import hashlib
import logging
import os
import sys
import time
import uuid
import warnings

TOOLS = os.path.dirname(os.path.abspath(__file__))
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

import aio_services  # noqa: E402
from aio_services import AioError  # noqa: E402
from tests.fixtures import host  # noqa: E402

PREFIX = 'aio-demo-'
TIMEOUT = 180.0
MiB = 1024 * 1024
GiB = 1024 * MiB
PAYLOAD_SIZE = 8 * MiB
NOUNS = {'volumes': 'volume', 'volume_snapshots': 'snapshot',
         'volume_types': 'volume type'}
MOVING = ('creating', 'downloading', 'extending', 'retyping', 'attaching',
          'detaching', 'deleting', 'uploading', 'reverting', 'maintenance')


def size_text(n: int) -> str:
    for unit, size in (('GiB', GiB), ('MiB', MiB), ('KiB', 1024)):
        if n >= size:
            return '%g %s' % (round(n / size, 1), unit)
    return '%d B' % n


def status_of(client, ident: str, manager: str = 'volumes') -> str:
    """The status of a Cinder volume or snapshot; 'deleted' once gone."""
    from cinderclient import exceptions as cinder_exc

    try:
        return getattr(client, manager).get(ident).status
    except cinder_exc.NotFound:
        return 'deleted'


class Demo:
    def __init__(self, settings, client, node, props, keep: bool):
        self.s = settings
        self.client = client
        self.node = node
        self.props = props
        self.keep = keep
        self.run = time.strftime('%H%M%S-') + uuid.uuid4().hex[:4]
        self.run_dir = settings.layout.path('demo', 'os-brick-nbd')
        self.mnt = settings.layout.path('demo', 'mnt')
        # What this run made, in order: (manager, object).
        self.made = []

    # -- output ---------------------------------------------------------------

    @staticmethod
    def say(what: str, headline: str, seconds: float | None = None,
            detail: str | None = None) -> None:
        line = '  %-11s %s' % (what, headline)
        if seconds is not None:
            line = '%-66s %6.2fs' % (line, seconds)
        if detail:
            line += '\n  %-11s %s' % ('', detail)
        print(line, flush=True)

    # -- Cinder ---------------------------------------------------------------

    def name(self, what: str) -> str:
        return '%s%s-%s' % (PREFIX, self.run, what)

    def settle(self, obj, wanted: str = 'available',
               manager: str = 'volumes'):
        """Wait until ``obj`` leaves its transitional states; it must be
        ``wanted`` then.
        """
        deadline = time.monotonic() + TIMEOUT
        while True:
            status = status_of(self.client, obj.id, manager)
            if status not in MOVING:
                break
            if time.monotonic() > deadline:
                raise AioError('%s %s still %s after %ds' % (
                    NOUNS[manager], obj.id, status, TIMEOUT))
            time.sleep(0.2)
        if status != wanted:
            raise AioError('%s %s (%s) is %s, not %s; see %s' % (
                NOUNS[manager], getattr(obj, 'name', ''), obj.id, status,
                wanted, self.s.layout.log_file('cinder-volume')))
        return None if status == 'deleted' else \
            getattr(self.client, manager).get(obj.id)

    @contextlib.contextmanager
    def attached(self, volume):
        """A Nova-style attach of ``volume`` to this host: yields the
        device path and the connection info.
        """
        from os_brick.initiator import connector as brick_connector

        att = self.client.attachments.create(volume.id, self.props,
                                             mode='rw')
        # The driver's connection data with driver_volume_type beside it:
        # what Nova hands to the connector.
        info = att['connection_info']
        connector = brick_connector.InitiatorConnector.factory(
            'NBD', None, run_dir=self.run_dir)
        try:
            try:
                device = connector.connect_volume(info)
                self.client.attachments.complete(att['id'])
                yield device['path'], info
            finally:
                connector.disconnect_volume(info, None)
        finally:
            self.client.attachments.delete(att['id'])

    @contextlib.contextmanager
    def mounted(self, device: str):
        os.makedirs(self.mnt, exist_ok=True)
        host.run('mount', device, self.mnt)
        try:
            yield self.mnt
        finally:
            host.run('umount', self.mnt)

    # -- the demo -------------------------------------------------------------

    def main(self, size_gb: int) -> None:
        c = self.client
        print('Demo run %s: python-cinderclient -> Cinder %s (noauth, '
              'project %s) -> backend %s -> storage node %s' % (
                  self.run, self.s.cinder_endpoint, aio_services.PROJECT_ID,
                  aio_services.BACKEND, self.s.node_url), flush=True)

        begin = time.monotonic()
        specs = {'volume_backend_name': aio_services.BACKEND,
                 'provisioning:type': 'thin'}
        vtype = c.volume_types.create(self.name('thin'))
        self.made.append(('volume_types', vtype))
        vtype.set_keys(specs)
        self.say('volume type', vtype.name, time.monotonic() - begin,
                 'id %s, extra specs %s' % (vtype.id, ', '.join(
                     '%s=%s' % kv for kv in sorted(specs.items()))))

        begin = time.monotonic()
        vol = c.volumes.create(size_gb, name=self.name('volume'),
                               volume_type=vtype.name)
        self.made.append(('volumes', vol))
        vol = self.settle(vol)
        engine = self.node.volume(vol.id)
        self.say('volume', vol.name, time.monotonic() - begin,
                 'id %s, %d GiB, %s on %s; in the engine: %s, %s '
                 'allocated' % (vol.id, vol.size, vol.status,
                                getattr(vol, 'os-vol-host-attr:host', '?'),
                                engine['provisioning'],
                                size_text(engine['allocated'])))

        payload = os.urandom(PAYLOAD_SIZE)
        digest = hashlib.sha256(payload).hexdigest()
        note = 'written by the all-in-one demo, run %s\n' % self.run
        begin = time.monotonic()
        with self.attached(vol) as (device, info):
            self.say('attach', '%s -> %s' % (vol.name, device),
                     time.monotonic() - begin,
                     'NBD export %s at %s:%s, connected by our os-brick '
                     'connector (fuse mode: nbdfuse + a loop device)' % (
                         info.get('export_name'), info.get('host'),
                         info.get('port')))
            begin = time.monotonic()
            host.run('mkfs.ext4', '-q', device)
            with self.mounted(device) as mnt:
                with open(os.path.join(mnt, 'payload.bin'), 'wb') as f:
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
                with open(os.path.join(mnt, 'hello.txt'), 'w') as f:
                    f.write(note)
            self.say('write', 'ext4 on %s, 2 files' % device,
                     time.monotonic() - begin,
                     'payload.bin: %d random bytes (sha256 %s...); '
                     'hello.txt' % (len(payload), digest[:16]))
            begin = time.monotonic()
        engine = self.node.volume(vol.id)
        self.say('detach', '%s: %s' % (vol.name, status_of(c, vol.id)),
                 time.monotonic() - begin,
                 'in the engine: %s allocated of %d GiB' % (
                     size_text(engine['allocated']), vol.size))

        begin = time.monotonic()
        snap = c.volume_snapshots.create(vol.id, name=self.name('snapshot'))
        self.made.append(('volume_snapshots', snap))
        snap = self.settle(snap, manager='volume_snapshots')
        self.say('snapshot', snap.name, time.monotonic() - begin,
                 'id %s, of %s, %s' % (snap.id, vol.name, snap.status))

        begin = time.monotonic()
        clone = c.volumes.create(size_gb, name=self.name('clone'),
                                 snapshot_id=snap.id, volume_type=vtype.name)
        self.made.append(('volumes', clone))
        clone = self.settle(clone)
        engine = self.node.volume(clone.id)
        self.say('clone', clone.name, time.monotonic() - begin,
                 'id %s, from the snapshot, %d GiB, %s; in the engine: %s, '
                 '%s allocated (it shares the snapshot\'s data)' % (
                     clone.id, clone.size, clone.status,
                     engine['provisioning'],
                     size_text(engine['allocated'])))

        begin = time.monotonic()
        with self.attached(clone) as (device, info):
            self.say('attach', '%s -> %s' % (clone.name, device),
                     time.monotonic() - begin,
                     'NBD export %s at %s:%s' % (
                         info.get('export_name'), info.get('host'),
                         info.get('port')))
            begin = time.monotonic()
            with self.mounted(device) as mnt:
                with open(os.path.join(mnt, 'payload.bin'), 'rb') as f:
                    back = f.read()
                with open(os.path.join(mnt, 'hello.txt')) as f:
                    note_back = f.read()
            same = back == payload and note_back == note
            self.say('read back', 'payload.bin and hello.txt from %s'
                     % device, time.monotonic() - begin,
                     '%d of %d bytes compared: %s (sha256 %s...)' % (
                         len(back), len(payload),
                         'identical' if same else 'DIFFERENT',
                         hashlib.sha256(back).hexdigest()[:16]))
            begin = time.monotonic()
        self.say('detach', '%s: %s' % (clone.name, status_of(c, clone.id)),
                 time.monotonic() - begin)
        if not same:
            raise AioError('the clone of the snapshot does not read back '
                           'what was written before the snapshot')

    # -- clean-up -------------------------------------------------------------

    def delete(self, objects) -> list:
        """Delete ``objects`` ((manager, object), in the order made)
        newest first: clones before the snapshots they come from, before
        their volumes, before their type. Returns what failed.
        """
        failed = []
        for manager, obj in reversed(objects):
            try:
                if manager == 'volume_types':
                    self.client.volume_types.delete(obj.id)
                    continue
                for att in self._attachments(obj) if manager == 'volumes' \
                        else ():
                    self.client.attachments.delete(att.id)
                getattr(self.client, manager).delete(obj.id)
                self.settle(obj, wanted='deleted', manager=manager)
            except Exception as exc:
                failed.append('%s %s: %s' % (NOUNS[manager], obj.id, exc))
        return failed

    def _attachments(self, volume) -> list:
        return self.client.attachments.list(
            search_opts={'volume_id': volume.id})

    def leftovers(self) -> list:
        """Objects earlier runs left (--keep, or interrupted), in the
        order they were made, as :meth:`delete` takes them: types, volumes,
        snapshots, volumes made from snapshots.
        """
        c = self.client
        volumes = [v for v in c.volumes.list()
                   if (v.name or '').startswith(PREFIX)]
        return [('volume_types', t) for t in c.volume_types.list()
                if t.name.startswith(PREFIX)] + \
            [('volumes', v) for v in volumes if not v.snapshot_id] + \
            [('volume_snapshots', s) for s in c.volume_snapshots.list()
             if (s.name or '').startswith(PREFIX)] + \
            [('volumes', v) for v in volumes if v.snapshot_id]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-dir',
                        default=os.path.join(aio_services.TOP, 'data'))
    parser.add_argument('--keep', action='store_true',
                        help='leave the objects made (the next run '
                             'deletes them)')
    parser.add_argument('--size', type=int, default=1,
                        help='size of the volumes, GiB (default 1)')
    args = parser.parse_args(argv)

    # Imported by os-brick's privsep: a banner, not our business.
    warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
    s = aio_services.Settings(args.data_dir)
    log_path = s.layout.log_file('demo')
    logging.basicConfig(
        filename=log_path, level=logging.INFO,
        format='%(asctime)s %(process)d %(levelname)s %(name)s %(message)s')
    from os_brick.initiator import connector as brick_connector

    from storage_engine import client as engine_client

    begin = time.monotonic()
    rc = 1
    demo = None
    try:
        client = aio_services.cinder_client(s)
        node = engine_client.Client(s.node_url, s.node_token())
        with host.brick(s.layout.path('demo', 'locks')):
            # This host as Nova sees it.
            props = brick_connector.get_connector_properties(
                None, '127.0.0.1', multipath=False, enforce_multipath=False)
            demo = Demo(s, client, node, props, args.keep)
            undone = aio_services.clean_demo_host(s)
            old = demo.leftovers()
            if undone or old:
                print('  (an earlier run left %s: removing it)' % ', '.join(
                    undone + ['%s %s' % (NOUNS[m], o.name)
                              for m, o in old]))
                failed = demo.delete(old)
                if failed:
                    raise AioError('could not delete what an earlier run '
                                   'left: %s' % '; '.join(failed))
            try:
                demo.main(args.size)
                rc = 0
            finally:
                # Whatever happened, nothing stays attached here.
                undone = aio_services.clean_demo_host(s)
                if undone:
                    print('  cleaned up on this host: %s' % ', '.join(undone))
                if args.keep:
                    print('  kept: %s (the next run deletes them)' % ', '.join(
                        o.name for _, o in demo.made))
                else:
                    t0 = time.monotonic()
                    failed = demo.delete(demo.made)
                    if failed:
                        rc = 1
                        print('all-in-one demo: could not delete: %s'
                              % '; '.join(failed), file=sys.stderr)
                    elif demo.made:
                        demo.say('delete', 'what this run made',
                                 time.monotonic() - t0, ', '.join(
                                     o.name for _, o in reversed(demo.made)))
    except AioError as exc:
        print('all-in-one demo: FAILED: %s' % exc, file=sys.stderr)
    except Exception as exc:
        logging.exception('the demo failed')
        print('all-in-one demo: FAILED: %s: %s' % (type(exc).__name__, exc),
              file=sys.stderr)
    elapsed = time.monotonic() - begin
    if rc:
        print('all-in-one demo: see %s and the services\' logs in %s'
              % (log_path, s.layout.path('log')), file=sys.stderr)
    else:
        print('Demo done in %.1fs: the clone read back the %d bytes '
              'written before the snapshot.' % (elapsed, PAYLOAD_SIZE))
    sys.stdout.flush()
    return rc


if __name__ == '__main__':
    sys.exit(main())
