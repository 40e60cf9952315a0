"""cinder-backup backs up and restores our volumes.

cinder-backup attaches the volume it backs up (and the one it restores to)
through os-brick in its own process, which loads no code of ours: it runs
through ``storage-engine-with-connectors``, which registers our connectors
first (os_brick_connectors/run.py). Without that it fails with
``InvalidConnectorProtocol ... NBD``.

Real services: the session's cinder-api, cinder-scheduler, cinder-volume
and cinder-backup (the posix driver: backups are files in a directory),
RabbitMQ, MariaDB. A volume is written through an attachment, backed up,
restored to a new volume and the whole of both is compared byte for byte;
then more is written, an incremental backup made and restored, and
compared again.
"""

import hashlib

from storage_engine import units
from tests.functional import cindertools

MiB = units.Mi
GiB = units.Gi
BACKUP_TIMEOUT = 600.0
CHUNK = 4 * MiB


def _pattern(seed: int, length: int) -> bytes:
    block = hashlib.sha256(b'%d' % seed).digest()
    return (block * (length // len(block) + 1))[:length]


def _write(client, cinder, volume_id, writes):
    with cindertools.attached(client, cinder, volume_id) as dev:
        for offset, data in writes:
            dev.pwrite(data, offset)
        dev.flush()


def _digest(client, cinder, volume_id) -> str:
    """sha256 of the whole volume, read through an attachment."""
    digest = hashlib.sha256()
    with cindertools.attached(client, cinder, volume_id) as dev:
        for offset in range(0, dev.size, CHUNK):
            digest.update(dev.pread(min(CHUNK, dev.size - offset), offset))
    return digest.hexdigest()


def _backup(client, cinder, volume_id, **kwargs):
    backup = client.backups.create(volume_id, **kwargs)
    return cindertools.settled(client, backup.id, cinder, manager='backups',
                               timeout=BACKUP_TIMEOUT)


def _restore(client, cinder, backup_id):
    """Restore to a new volume (made by the restore); returns its id."""
    restore = client.restores.restore(backup_id)
    cindertools.settled(client, restore.volume_id, cinder,
                        timeout=BACKUP_TIMEOUT)
    return restore.volume_id


def test_backup_restore_and_incremental(cinder, cinder_client):
    client = cinder_client
    vol = cindertools.create(client, cinder, 1, name='to-back-up')
    made = [vol.id]
    backups = []
    try:
        # Data at the start, in the middle (across a cluster boundary) and
        # at the very end of the volume; the rest stays zeros.
        _write(client, cinder, vol.id, [
            (0, _pattern(1, 3 * MiB)),
            (511 * MiB - 4096, _pattern(2, 2 * MiB)),
            (GiB - MiB, _pattern(3, MiB))])
        source = _digest(client, cinder, vol.id)

        full = _backup(client, cinder, vol.id, name='full')
        backups.append(full.id)
        assert full.size == 1 and not full.is_incremental
        first = _restore(client, cinder, full.id)
        made.append(first)
        assert _digest(client, cinder, first) == source

        # More writes: one over earlier data, one into zeros.
        _write(client, cinder, vol.id, [
            (MiB, _pattern(4, MiB)),
            (800 * MiB, _pattern(5, 5 * MiB))])
        changed = _digest(client, cinder, vol.id)
        assert changed != source
        inc = _backup(client, cinder, vol.id, name='incremental',
                      incremental=True)
        backups.append(inc.id)
        assert inc.is_incremental
        assert client.backups.get(full.id).has_dependent_backups
        second = _restore(client, cinder, inc.id)
        made.append(second)
        assert _digest(client, cinder, second) == changed
        # The full backup still restores the state it was taken of.
        again = _restore(client, cinder, full.id)
        made.append(again)
        assert _digest(client, cinder, again) == source
    finally:
        for backup_id in reversed(backups):
            cindertools.delete(client, backup_id, cinder, 'backups')
        for ident in made:
            cindertools.delete(client, ident, cinder)
    # Nothing of ours is left in the engine: restores attach and detach.
    with cinder.node.client() as engine:
        assert not [e for e in engine.exports()
                    if e['volume_id'] in made]
