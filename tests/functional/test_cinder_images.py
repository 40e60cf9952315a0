"""An image copied to a volume and back through cinder-volume's own copy
paths, with a real Glance.

Real services: Glance without Keystone (tests/fixtures/glance.py) and
Cinder with our LVM-style driver (tests/fixtures/cinder.py), whose
``glance_api_servers`` is that Glance. A volume created from an image goes
through ``copy_image_to_volume``: cinder-volume attaches the new volume on
its own host with os-brick and our NBD connector (fuse mode here: nbdfuse
and a real /dev/loopN), then ``image_utils.fetch_to_raw`` downloads the
image from Glance and writes it there with qemu-img. Uploading a volume to
an image goes through ``copy_volume_to_image``: the same attachment, read
by ``image_utils.upload_volume`` and sent to Glance.

What is checked is the data, from the other side each time: the volume is
read through an export of our own on the storage node (our NBD client), and
the uploaded image is downloaded from Glance. Then nothing is left: no
export, attachment state or loop device of Cinder's, no volume in the
engine, no image in Glance or its store.
"""

import hashlib
import io
import json
import os
import re
import subprocess
import time
import uuid

from cinderclient import exceptions as cinder_exc
from glanceclient import exc as glance_exc
import pytest

from cinder_drivers import base as driver_base
from os_brick_connectors import nbd as brick_nbd
from storage_engine import errors
from storage_engine.nbd import client as nbd_client
from storage_engine import units
from tests.fixtures import waiting

TIMEOUT = 300.0
# Not a whole number of MiB, nor of the 4 MiB chunks read below.
IMAGE_SIZE = 5 * units.Mi + 320 * units.Ki
CHUNK = 4 * units.Mi
VOLUME_GIB = 1
# The host cinder-volume attaches from (its my_ip) and ours.
HOST = '127.0.0.1'


def _wait(what, check, timeout=TIMEOUT, logs=None):
    return waiting.wait_for(what, check, timeout, poll=0.25, logs=logs)


def _volume_status(client, volume_id):
    return waiting.cinder_status(client, volume_id)


def _image_status(glance_client, image_id):
    try:
        return glance_client.images.get(image_id)['status']
    except glance_exc.HTTPNotFound:
        return 'deleted'


def _settled_volume(cinder, client, volume_id, wanted='available'):
    """Wait until the volume leaves its transitional states; it must be
    ``wanted`` then, or the failure shows Cinder's logs.
    """
    moving = ('creating', 'downloading', 'uploading', 'attaching',
              'detaching', 'deleting')
    final = _wait('volume %s settles' % volume_id,
                  lambda: _volume_status(client, volume_id) not in moving
                  and _volume_status(client, volume_id),
                  logs=cinder.log_tails)
    if final != wanted:
        detail = client.volumes.get(volume_id) if final != 'deleted' \
            else None
        pytest.fail('volume %s is %s, not %s: %r\n%s'
                    % (volume_id, final, wanted,
                       detail and detail._info, cinder.log_tails()))


def _qemu_img(*args):
    result = subprocess.run(['qemu-img'] + list(args), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result
    return result.stdout


@pytest.fixture(scope='module')
def image_bytes():
    return os.urandom(IMAGE_SIZE)


class Cleanup:
    """What a test made, removed at its end in reverse order, whatever
    happened; errors are collected and reported after all ran.
    """

    def __init__(self):
        self.steps = []

    def add(self, what, func, *args):
        self.steps.append((what, func, args))

    def run(self):
        failures = []
        for what, func, args in reversed(self.steps):
            try:
                func(*args)
            except Exception as exc:
                failures.append('%s: %r' % (what, exc))
        return failures


@pytest.fixture
def cleanup():
    steps = Cleanup()
    yield steps
    failures = steps.run()
    assert not failures, failures


def _delete_volume(cinder, client, volume_id):
    try:
        client.volumes.delete(volume_id)
    except cinder_exc.NotFound:
        return
    _settled_volume(cinder, client, volume_id, wanted='deleted')


def _delete_image(glance_client, image_id):
    try:
        glance_client.images.delete(image_id)
    except glance_exc.HTTPNotFound:
        pass


def _cinder_export_id(volume_id):
    """The export our driver makes for cinder-volume's own host."""
    return str(uuid.uuid5(driver_base.EXPORT_NAMESPACE,
                          '%s:%s' % (volume_id, HOST)))


def _loop_devices_of(path):
    """Loop devices whose backing file is under ``path``."""
    result = subprocess.run(['losetup', '--list', '--noheadings',
                             '--output', 'NAME,BACK-FILE'],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result
    return [line for line in result.stdout.splitlines()
            if path in line]


def _nbdfuse_running(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as cmdline:
            if b'nbdfuse' not in cmdline.read():
                return False
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rpartition(')')[2].split()[0] != 'Z'
    except OSError:
        return False


def _cinder_attachment(cinder, volume_id, log_start):
    """What cinder-volume's log since ``log_start`` shows of the copy's
    attachment of the volume: os-brick's traces of ``disconnect_volume``
    with the connection properties of our export for its host and the
    device our connector returned, a /dev/loopN (the lines); the PIDs of
    the nbdfuse our connector started for that export.
    """
    with open(cinder.log_path('cinder-volume'), 'rb') as log:
        log.seek(log_start)
        text = log.read().decode(errors='replace')
    export_id = _cinder_export_id(volume_id)
    lines = [line for line in text.splitlines()
             if 'disconnect_volume: call' in line and export_id in line
             and re.search(r"'path': '/dev/loop\d+'", line)]
    pids = [int(pid) for pid in re.findall(
        r'Started nbdfuse (\d+) for NBD export %s ' % re.escape(export_id),
        text)]
    return lines, pids


def _assert_cinder_attached_and_detached(cinder, volume_id, log_start):
    """cinder-volume attached the volume for its copy through our NBD
    connector's loop device, and nothing of that is left: its export on
    the node, the connector's state directory, its loop device, nbdfuse.
    """
    lines, pids = _cinder_attachment(cinder, volume_id, log_start)
    assert lines and pids, cinder.log_tail('cinder-volume', 200)
    export_id = _cinder_export_id(volume_id)
    exports = cinder.node.client().exports(volume_id=volume_id)
    assert [e['id'] for e in exports] == [], (exports, cinder.log_tails())
    # cinder-volume's connector uses the default run directory.
    state = brick_nbd.StatePaths.for_export(brick_nbd.DEFAULT_RUN_DIR,
                                            export_id).dir
    assert not os.path.exists(state), state
    assert _loop_devices_of(state) == []
    assert [pid for pid in pids if _nbdfuse_running(pid)] == []


def _read_volume(node, volume_id, size):
    """The whole volume, read through an export of ours (then removed):
    (the first ``IMAGE_SIZE`` bytes, whether all the rest is zeros).
    """
    response = node.post('/exports', {'volume_id': volume_id,
                                      'hosts': [HOST]})
    assert response.status_code == 201, response.text
    export = response.json()
    try:
        conn = export['connection']
        with nbd_client.NBDClient.connect(conn['export_name'],
                                          host=conn['host'],
                                          port=conn['port']) as client:
            assert client.size == size
            head = client.pread(IMAGE_SIZE, 0)
            rest_zero = True
            offset = IMAGE_SIZE
            while offset < size:
                chunk = client.pread(min(CHUNK, size - offset), offset)
                if chunk.count(0) != len(chunk):
                    rest_zero = False
                    break
                offset += len(chunk)
    finally:
        deleted = node.request('DELETE', '/exports/' + export['id'])
        assert deleted.status_code in (200, 204), deleted.text
    return head, rest_zero


def _download(glance_client, image_id):
    """(first IMAGE_SIZE bytes, whether the rest is zeros, length,
    sha512) of the image's data as Glance serves it.
    """
    head = io.BytesIO()
    rest_zero = True
    length = 0
    digest = hashlib.sha512()
    for chunk in glance_client.images.data(image_id):
        digest.update(chunk)
        if length < IMAGE_SIZE:
            take = chunk[:IMAGE_SIZE - length]
            head.write(take)
            tail = chunk[len(take):]
        else:
            tail = chunk
        if tail and tail.count(0) != len(tail):
            rest_zero = False
        length += len(chunk)
    return head.getvalue(), rest_zero, length, digest.hexdigest()


def _image_to_volume(cinder, cinder_client, images, path, disk_format,
                     image_bytes, cleanup, timings):
    """Upload the image file to Glance, create a volume from it and check
    that the volume holds ``image_bytes``, then zeros; returns (image,
    volume).
    """
    image = images.images.create(name='se-image-%s' % disk_format,
                                 disk_format=disk_format,
                                 container_format='bare')
    cleanup.add('image %s' % image['id'], _delete_image, images,
                image['id'])
    with open(path, 'rb') as data:
        images.images.upload(image['id'], data)
    image = images.images.get(image['id'])
    assert (image['status'], image['size']) == ('active',
                                                os.path.getsize(path))
    assert image['virtual_size'] in (None, IMAGE_SIZE)

    # copy_image_to_volume: fetch_to_raw onto cinder-volume's attachment.
    volume_log = os.path.getsize(cinder.log_path('cinder-volume'))
    begin = time.monotonic()
    volume = cinder_client.volumes.create(VOLUME_GIB, imageRef=image['id'],
                                          name='from-' + disk_format)
    cleanup.add('volume %s' % volume.id, _delete_volume, cinder,
                cinder_client, volume.id)
    _settled_volume(cinder, cinder_client, volume.id)
    timings['image to volume'] = time.monotonic() - begin
    volume = cinder_client.volumes.get(volume.id)
    assert volume.size == VOLUME_GIB
    assert volume.bootable == 'true'
    assert volume.volume_image_metadata['image_id'] == image['id']
    assert volume.volume_image_metadata['disk_format'] == disk_format
    # The copy went through an attachment on cinder-volume's host, our
    # NBD connector's loop device, and left nothing attached.
    _assert_cinder_attached_and_detached(cinder, volume.id, volume_log)

    held = cinder.node.client().volume(volume.id)
    assert held['size'] == VOLUME_GIB * units.Gi
    begin = time.monotonic()
    head, rest_zero = _read_volume(cinder.node, volume.id,
                                   VOLUME_GIB * units.Gi)
    timings['read volume'] = time.monotonic() - begin
    assert head == image_bytes, 'the volume does not hold the image'
    assert rest_zero, 'the volume is not zeros after the image'
    return image, volume


def _assert_nothing_left(cinder, cinder_client, glance, images, cleanup,
                         volume_ids, image_ids, store_before):
    failures = cleanup.run()
    cleanup.steps = []
    assert not failures, failures
    node_client = cinder.node.client()
    for volume_id in volume_ids:
        assert _volume_status(cinder_client, volume_id) == 'deleted'
        with pytest.raises(errors.NotFound):
            node_client.volume(volume_id)
        assert node_client.exports(volume_id=volume_id) == []
    for image_id in image_ids:
        assert _image_status(images, image_id) == 'deleted'
    assert set(glance.image_files()) == store_before
    # cinder-volume's downloads and conversions are gone too.
    conversion = os.path.join(cinder.top, 'conversion')
    assert not os.path.exists(conversion) or os.listdir(conversion) == []


def _report(what, timings):
    print('%s: %s' % (what, ', '.join('%s %.1f s' % item
                                      for item in timings.items())))


def test_raw_image_to_volume_and_back(cinder, cinder_client, glance,
                                      image_bytes, tmp_path, cleanup):
    """A raw image into a volume, the volume into a raw image: the same
    bytes, then zeros up to the volume's size.
    """
    path = str(tmp_path / 'image.raw')
    with open(path, 'wb') as out:
        out.write(image_bytes)
    images = glance.client()
    store_before = set(glance.image_files())
    timings = {}
    image, volume = _image_to_volume(cinder, cinder_client, images, path,
                                     'raw', image_bytes, cleanup, timings)

    # copy_volume_to_image: upload_volume from cinder-volume's attachment.
    volume_log = os.path.getsize(cinder.log_path('cinder-volume'))
    begin = time.monotonic()
    _, body = cinder_client.volumes.upload_to_image(
        volume, False, 'se-upload', 'bare', 'raw',
        visibility='private', protected=False)
    upload = body['os-volume_upload_image']
    cleanup.add('image %s' % upload['image_id'], _delete_image, images,
                upload['image_id'])
    assert upload['disk_format'] == 'raw'
    _settled_volume(cinder, cinder_client, volume.id)
    final = _wait('image %s uploaded' % upload['image_id'],
                  lambda: _image_status(images, upload['image_id'])
                  not in ('queued', 'saving', 'importing')
                  and _image_status(images, upload['image_id']),
                  logs=cinder.log_tails)
    timings['volume to image'] = time.monotonic() - begin
    assert final == 'active', (final, cinder.log_tails())
    uploaded = images.images.get(upload['image_id'])
    size = VOLUME_GIB * units.Gi
    assert (uploaded['disk_format'], uploaded['container_format'],
            uploaded['size']) == ('raw', 'bare', size)
    _assert_cinder_attached_and_detached(cinder, volume.id, volume_log)

    begin = time.monotonic()
    head, rest_zero, length, sha512 = _download(images, upload['image_id'])
    timings['download'] = time.monotonic() - begin
    assert length == size
    assert head == image_bytes, 'the uploaded image does not hold the image'
    assert rest_zero, 'the uploaded image is not zeros after the image'
    # Glance's own hash of what it stored agrees.
    expected = hashlib.sha512(image_bytes)
    zeros = bytes(CHUNK)
    left = size - IMAGE_SIZE
    while left:
        expected.update(zeros[:min(left, CHUNK)])
        left -= min(left, CHUNK)
    assert (uploaded['os_hash_algo'], uploaded['os_hash_value']) == \
        ('sha512', expected.hexdigest()) == ('sha512', sha512)

    _assert_nothing_left(cinder, cinder_client, glance, images, cleanup,
                         [volume.id], [image['id'], upload['image_id']],
                         store_before)
    _report('raw', timings)


def test_qcow2_image_to_volume(cinder, cinder_client, glance, image_bytes,
                               tmp_path, cleanup):
    """A qcow2 image (made by qemu-img from the same bytes) into a volume:
    cinder-volume converts it to raw onto the attachment.
    """
    raw = str(tmp_path / 'image.raw')
    with open(raw, 'wb') as out:
        out.write(image_bytes)
    path = str(tmp_path / 'image.qcow2')
    _qemu_img('convert', '-f', 'raw', '-O', 'qcow2', raw, path)
    info = json.loads(_qemu_img('info', '--output=json', path))
    assert (info['format'], info['virtual-size']) == ('qcow2', IMAGE_SIZE)
    images = glance.client()
    store_before = set(glance.image_files())
    timings = {}
    image, volume = _image_to_volume(cinder, cinder_client, images, path,
                                     'qcow2', image_bytes, cleanup,
                                     timings)
    _assert_nothing_left(cinder, cinder_client, glance, images, cleanup,
                         [volume.id], [image['id']], store_before)
    _report('qcow2', timings)
