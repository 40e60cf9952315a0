"""What the Cinder test modules share: waiting for a volume (or snapshot,
or backup) to settle, creating and deleting, and attaching a volume as a
compute host would, reaching its export with our own NBD client.
"""

import contextlib

from storage_engine.nbd import client as nbd_client
from tests.fixtures import waiting

TIMEOUT = 180.0
# What a compute host sends for an NBD attach: the driver exports to 'ip'.
CONNECTOR = {'ip': '127.0.0.1', 'host': 'se-tests', 'initiator': None,
             'multipath': False, 'platform': 'x86_64', 'os_type': 'linux'}
MOVING = ('creating', 'deleting', 'extending', 'retyping', 'attaching',
          'detaching', 'reserved', 'managing', 'unmanaging', 'reverting',
          'downloading', 'uploading', 'maintenance', 'backing-up',
          'restoring', 'restoring-backup')


def status(client, ident, manager='volumes'):
    return waiting.cinder_status(client, ident, manager)


def settled(client, ident, cinder, wanted='available', manager='volumes',
            timeout=TIMEOUT):
    """Wait until the object ``ident`` of ``manager`` (volumes, volume
    snapshots, backups) leaves its transitional states; it must be
    ``wanted`` then. Returns it (None once deleted).
    """
    final = waiting.wait_for(
        '%s %s settles' % (manager, ident),
        lambda: status(client, ident, manager) not in MOVING and
        status(client, ident, manager), timeout, logs=cinder.log_tails)
    assert final == wanted, '%s %s is %s, not %s' % (manager, ident, final,
                                                     wanted)
    return getattr(client, manager).get(ident) if final != 'deleted' \
        else None


def create(client, cinder, size=1, **kwargs):
    vol = client.volumes.create(size, **kwargs)
    return settled(client, vol.id, cinder)


def delete(client, ident, cinder, manager='volumes'):
    getattr(client, manager).delete(ident)
    settled(client, ident, cinder, 'deleted', manager)


def nbd(data):
    """Our NBD client on the export an attachment's connection names."""
    return nbd_client.NBDClient.connect(data['export_name'],
                                        host=data['host'], port=data['port'])


@contextlib.contextmanager
def attached(client, cinder, volume_id, connector=None):
    """A volume attached (no server id) and connected: yields our NBD
    client on its export; detached afterwards.
    """
    att = client.attachments.create(volume_id, connector or CONNECTOR,
                                    mode='rw')
    info = att['connection_info']
    assert info['driver_volume_type'] == 'nbd', info
    client.attachments.complete(att['id'])
    try:
        with nbd(info) as dev:
            yield dev
    finally:
        client.attachments.delete(att['id'])
        settled(client, volume_id, cinder)
