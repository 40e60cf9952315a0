"""The tempest tier's deployment: Cinder behind a real Keystone.

tempest has no noauth mode, so this tier's Cinder (its own cinder-api,
-scheduler, -volume and -backup, on a vhost and database of their own, the
session's RabbitMQ, MariaDB, etcd and Glance) authenticates with Keystone
(tests/fixtures/keystone.py) and enforces secure RBAC (scope and the new
defaults), with one backend per family of ours, each over a storage node
of its own: ``se-lvm`` (the LVM-style family, NBD) and ``se-aoe`` (AoE, the
node's target in network namespace A of a veth pair, cinder-volume's own
attaches in namespace B).
"""

import pytest

from tests.fixtures import cinder as cinder_mod
from tests.fixtures import keystone as keystone_mod
from tests.fixtures import netns
from tests.fixtures import node as node_mod

#: family -> the backend (and volume type) of this deployment
BACKENDS = {'lvm': 'se-lvm', 'aoe': 'se-aoe'}


@pytest.fixture(scope='session')
def keystone(tmp_path_factory, mariadb):
    server = keystone_mod.Keystone(tmp_path_factory.mktemp('keystone'),
                                   mariadb.create_database('keystone'))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope='session')
def tempest_image(glance):
    """The image tempest's volume-from-image tests use ([compute]
    image_ref, as devstack uploads cirros): 1 MiB of raw disk.
    """
    import io

    client = glance.client()
    image = client.images.create(name='tempest-raw', disk_format='raw',
                                 container_format='bare',
                                 visibility='public')
    client.images.upload(image['id'], io.BytesIO(
        bytes(range(256)) * 4096))
    yield image['id']
    client.images.delete(image['id'])


@pytest.fixture(scope='session')
def tempest_pair():
    veth = netns.open_pair()
    try:
        yield veth
    finally:
        veth.close()


@pytest.fixture(scope='session')
def deployment(tmp_path_factory, rabbitmq, mariadb, etcd, glance, keystone,
               tempest_pair):
    """Cinder with both families' backends, behind Keystone, ready."""
    nodes = []
    cinder = None
    try:
        lvm = node_mod.NodeProcess(tmp_path_factory.mktemp('tempest-lvm'),
                                   'tempest-lvm', pool_size='200G')
        nodes.append(lvm.start())
        aoe = node_mod.NodeProcess(
            tmp_path_factory.mktemp('tempest-aoe'), 'tempest-aoe',
            pool_size='200G', aoe={'interface': tempest_pair.if_a,
                                   'network_namespace': tempest_pair.ns_a})
        nodes.append(aoe.start())
        cinder = cinder_mod.Cinder(
            tmp_path_factory.mktemp('tempest-cinder'),
            transport_url=rabbitmq.add_vhost('se-tempest'),
            database_url=mariadb.create_database('cinder_tempest'),
            coordination_url='etcd3+' + etcd.client_url, node=lvm,
            backend=BACKENDS['lvm'], host='se-tempest',
            glance_url=glance.url, keystone=keystone)
        keystone.register_cinder(cinder.endpoint)
        keystone.register_image(glance.url)
        cinder.start()
        cinder.add_backend(BACKENDS['aoe'], aoe, 'aoe',
                           aoe_connector_network_namespace=tempest_pair.ns_b)
        yield cinder
    finally:
        if cinder is not None:
            cinder.stop()
        for node in nodes:
            node.stop()
