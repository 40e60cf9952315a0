"""Every driver method, reached through Cinder's REST API.

The drivers' own functional tests (test_lvm_driver.py, test_aoe_driver.py)
call the driver directly with Cinder's objects; Cinder's volume manager,
its flows and its API objects are not in the loop there, and what they do
to a driver's answers is not seen (``get_manageable_volumes`` returned an
``extra_info`` string, which Cinder's ManageableVolume refuses: HTTP 500
on ``cinder manageable-list``, issue 12 part 7). So every driver method
the families implement is exercised here, or in the modules named below,
through the real services (tests/fixtures/cinder.py) by
python-cinderclient, as a user does it.

The list below says which test reaches which method. The last test here
checks it against the driver classes: a method of Cinder's driver
interface that a family overrides and no listed test reaches fails it,
and so does a listed test that does not exist. A method the REST API
cannot reach is listed as such, with where it is tested instead.

Driver methods each test reaches through the API
------------------------------------------------

this module
    test_manageable_volumes_manage_and_unmanage
        get_manageable_volumes, manage_existing_get_size,
        manage_existing, unmanage
    test_manageable_snapshots_manage_and_unmanage
        get_manageable_snapshots, manage_existing_snapshot_get_size,
        manage_existing_snapshot, unmanage_snapshot, create_snapshot,
        delete_snapshot, create_volume_from_snapshot
    test_attachment_reserve_update_complete_and_delete
        create_export, initialize_connection, ensure_export,
        terminate_connection, remove_export
    test_retype_thick_to_thin_in_place
        retype
    test_pools_carry_what_volume_types_match
        _update_volume_stats
test_cinder_smoke.py
    test_volume_service_of_our_backend_is_up
        do_setup, check_for_setup_error, _update_volume_stats
    test_volume_becomes_available_and_is_deleted
        create_volume, delete_volume
test_cinder_volumes.py
    test_types_snapshots_clones_extend_retype_and_attach
        create_volume, create_snapshot, create_volume_from_snapshot,
        create_cloned_volume, extend_volume, retype, revert_to_snapshot,
        initialize_connection, terminate_connection, delete_snapshot,
        delete_volume
    test_raw_data_written_through_the_device_reads_back
        extend_volume
    test_multiattach_volume_attaches_twice
        initialize_connection, terminate_connection
test_cinder_backend_faults.py
    test_a_scheme_less_api_url_fails_only_its_backend
        do_setup
    test_a_refused_token_or_unknown_pool_fails_its_backend_with_the_reason
        check_for_setup_error
    test_a_backend_whose_node_starts_later_comes_up_by_itself
        check_for_setup_error, _update_volume_stats
test_cinder_aoe.py
    test_aoe_volume_attach_snapshot_clone_and_delete
        create_volume, initialize_connection, terminate_connection,
        create_snapshot, create_volume_from_snapshot, delete_snapshot,
        delete_volume
not through the API
    get_pool
        cinder-volume asks it at start only for volumes whose host names
        no pool (made before Cinder had pools); ours always name one
    get_driver_options
        Cinder's own option listing; the options are checked by
        tests/unit/test_config_samples.py

Also through the API, with methods the drivers inherit from Cinder:
volume from image and volume to image (cinder-volume's own attach through
os-brick and our connectors) in test_cinder_images.py, and for the AoE
family in test_cinder_aoe.py, whose backend runs the same base methods
behind its own export.

Attachments are made as Nova makes them but without a server id (deleting
one with a server id asks Nova): the connection data they return is used
with our NBD client, so what is written and read back goes through the
export the driver made for the attachment.
"""

import ast
import contextlib
import os
import uuid

import pytest

from storage_engine import errors
from storage_engine.nbd import client as nbd_client
from storage_engine import units
from tests.fixtures import cinder as cinder_mod
from tests.functional import cindertools

GiB = units.Gi
MiB = units.Mi
HERE = os.path.dirname(os.path.abspath(__file__))
CONNECTOR = dict(cindertools.CONNECTOR, host='api-coverage')


def _attached(client, cinder, volume_id):
    return cindertools.attached(client, cinder, volume_id, CONNECTOR)


def _by_name(entries):
    """Manageable entries (cinderclient resources) by their source-name,
    each as the dict the API answered.
    """
    return {e.reference['source-name']: e._info for e in entries}


@pytest.fixture
def engine(cinder):
    """The storage node behind the session's backend, and afterwards a
    check that this test left nothing there.
    """
    client = cinder.node.client()
    before = ({v['id'] for v in client.volumes()},
              {s['id'] for s in client.snapshots()})
    yield client
    after = ({v['id'] for v in client.volumes()},
             {s['id'] for s in client.snapshots()})
    assert after == before


def test_manageable_volumes_manage_and_unmanage(cinder, cinder_client,
                                                engine):
    client = cinder_client
    host = '%s#%s' % (cinder.volume_host, cinder.engine_pool)
    name = 'legacy-%s' % uuid.uuid4().hex[:8]
    payload = os.urandom(MiB)
    # A volume made on the node without Cinder, 1.5 GiB, with data.
    legacy = engine.create_volume(name, 1536 * MiB,
                                  pool=cinder.engine_pool,
                                  provisioning='thin')
    exp = engine.create_export(legacy['id'], ['127.0.0.1'])
    with cindertools.nbd(exp['connection']) as dev:
        dev.pwrite(payload, 0)
        dev.flush()
    engine.delete_export(exp['id'])
    ours = cindertools.create(client, cinder, name='already-ours')
    managed = refused = None
    try:
        # cinder manageable-list HOST, and --detailed (HTTP 500 before).
        summary = _by_name(client.volumes.list_manageable(host,
                                                          detailed=False))
        assert summary[name] == {'reference': {'source-name': name},
                                 'size': 2, 'safe_to_manage': True}
        detailed = _by_name(client.volumes.list_manageable(host))
        assert detailed[name] == {
            'reference': {'source-name': name}, 'size': 2,
            'safe_to_manage': True, 'reason_not_safe': None,
            'cinder_id': None,
            'extra_info': {'id': legacy['id'], 'provisioning': 'thin'}}
        entry = detailed['volume-%s' % ours.id]
        assert (entry['safe_to_manage'], entry['reason_not_safe'],
                entry['cinder_id']) == (False, 'already managed', ours.id)
        # Paged and sorted by Cinder from what the driver lists.
        page = client.volumes.list_manageable(host, detailed=False,
                                              limit=1, sort='size:desc')
        assert len(page) == 1
        assert page[0].size == max(e['size'] for e in detailed.values())

        # cinder manage HOST NAME: the data comes along, the size is
        # rounded up to whole GiB.
        managed = client.volumes.manage(host, {'source-name': name},
                                        name='managed')
        managed = cindertools.settled(client, managed.id, cinder)
        assert (managed.size, managed.name) == (2, 'managed')
        held = engine.volume(legacy['id'])
        assert (held['name'], held['size']) == ('volume-%s' % managed.id,
                                                2 * GiB)
        with _attached(client, cinder, managed.id) as dev:
            assert dev.size == 2 * GiB
            assert dev.pread(len(payload), 0) == payload
        entry = _by_name(client.volumes.list_manageable(host))[
            'volume-%s' % managed.id]
        assert (entry['safe_to_manage'], entry['cinder_id']) == \
            (False, managed.id)

        # A reference that names nothing: the volume shows the error.
        refused = client.volumes.manage(host, {'source-name': 'no-such'})
        cindertools.settled(client, refused.id, cinder, 'error')
        assert 'no volume of that name in pool %s' % cinder.engine_pool \
            in cinder.log_tail('cinder-volume', 400)

        # cinder unmanage: gone from Cinder, kept in the engine with its
        # data, and manageable again.
        client.volumes.unmanage(managed)
        cindertools.settled(client, managed.id, cinder, 'deleted')
        managed = None
        assert engine.volume(legacy['id'])['size'] == 2 * GiB
        entry = _by_name(client.volumes.list_manageable(host))[held['name']]
        assert (entry['safe_to_manage'], entry['cinder_id']) == (True, None)
    finally:
        for vol in (managed, refused, ours):
            if vol is not None:
                cindertools.delete(client, vol.id, cinder)
        with contextlib.suppress(errors.NotFound):
            engine.delete_volume(legacy['id'])


def test_manageable_snapshots_manage_and_unmanage(cinder, cinder_client,
                                                  engine):
    client = cinder_client
    host = '%s#%s' % (cinder.volume_host, cinder.engine_pool)
    name = 'legacy-snap-%s' % uuid.uuid4().hex[:8]
    first, second = os.urandom(MiB), os.urandom(MiB)
    vol = cindertools.create(client, cinder, name='snapshot-origin')
    other = cindertools.create(client, cinder, name='another-volume')
    legacy = ours = managed = refused = clone = None
    try:
        with _attached(client, cinder, vol.id) as dev:
            dev.pwrite(first, 0)
            dev.flush()
            # A snapshot taken on the node, without Cinder.
            legacy = engine.create_snapshot(vol.id, name)
            dev.pwrite(second, 0)
            dev.flush()
        ours = client.volume_snapshots.create(vol.id, name='already-ours')
        ours = cindertools.settled(client, ours.id, cinder,
                                   manager='volume_snapshots')

        # cinder snapshot-manageable-list HOST, and --detailed.
        summary = _by_name(client.volume_snapshots.list_manageable(
            host, detailed=False))
        source = {'source-name': 'volume-%s' % vol.id, 'source-id': vol.id}
        assert summary[name] == {'reference': {'source-name': name},
                                 'size': 1, 'safe_to_manage': True,
                                 'source_reference': source}
        detailed = _by_name(client.volume_snapshots.list_manageable(host))
        assert detailed[name] == {
            'reference': {'source-name': name}, 'size': 1,
            'safe_to_manage': True, 'reason_not_safe': None,
            'cinder_id': None, 'source_reference': source,
            'extra_info': {'id': legacy['id'],
                           'created_at': legacy['created_at']}}
        entry = detailed['snapshot-%s' % ours.id]
        assert (entry['safe_to_manage'], entry['reason_not_safe'],
                entry['cinder_id']) == (False, 'already managed', ours.id)

        # As a snapshot of a volume it was not taken of: refused.
        refused = client.volume_snapshots.manage(other.id,
                                                 {'source-name': name})
        cindertools.settled(client, refused.id, cinder, 'error',
                            manager='volume_snapshots')
        assert 'it is a snapshot of engine volume %s, not of volume %s' % (
            vol.id, other.id) in cinder.log_tail('cinder-volume', 400)

        # cinder snapshot-manage VOLUME NAME.
        managed = client.volume_snapshots.manage(vol.id,
                                                 {'source-name': name},
                                                 name='managed-snap')
        managed = cindertools.settled(client, managed.id, cinder,
                                      manager='volume_snapshots')
        assert (managed.size, managed.name, managed.volume_id) == \
            (1, 'managed-snap', vol.id)
        entry = _by_name(client.volume_snapshots.list_manageable(host))[name]
        assert (entry['safe_to_manage'], entry['cinder_id']) == \
            (False, managed.id)
        # It serves as one of Cinder's: a volume made from it holds what
        # the volume held when the node took it.
        clone = cindertools.create(client, cinder, snapshot_id=managed.id,
                                   name='from-managed')
        with _attached(client, cinder, clone.id) as dev:
            assert dev.pread(len(first), 0) == first

        # cinder snapshot-unmanage: gone from Cinder, kept in the engine,
        # manageable again.
        client.volume_snapshots.unmanage(managed)
        cindertools.settled(client, managed.id, cinder, 'deleted',
                            manager='volume_snapshots')
        managed = None
        assert engine.snapshot(legacy['id'])['volume_id'] == vol.id
        entry = _by_name(client.volume_snapshots.list_manageable(host))[name]
        assert (entry['safe_to_manage'], entry['cinder_id']) == (True, None)
    finally:
        if clone is not None:
            cindertools.delete(client, clone.id, cinder)
        for snap in (managed, refused, ours):
            if snap is not None:
                cindertools.delete(client, snap.id, cinder, 'volume_snapshots')
        if legacy is not None:
            with contextlib.suppress(errors.NotFound):
                engine.delete_snapshot(legacy['id'])
        for v in (vol, other):
            cindertools.delete(client, v.id, cinder)


def test_attachment_reserve_update_complete_and_delete(cinder, cinder_client,
                                                       engine):
    client = cinder_client
    payload = os.urandom(MiB)
    vol = cindertools.create(client, cinder, name='attach-steps')
    try:
        # Reserved first, without a connector (as Nova does before it
        # knows the host): no connection yet, nothing exported.
        att = client.attachments.create(vol.id, None)
        assert att['connection_info'] == {}
        assert cindertools.status(client, vol.id) == 'reserved'
        assert engine.exports(volume_id=vol.id) == []

        # The connector comes with the update: an export to that host.
        att = client.attachments.update(att['id'], CONNECTOR)
        info = att.connection_info
        assert (info['driver_volume_type'], info['access_mode']) == \
            ('nbd', 'rw')
        exp, = engine.exports(volume_id=vol.id)
        assert exp['hosts'] == ['127.0.0.1']
        with cindertools.nbd(info) as dev:
            dev.pwrite(payload, 4 * MiB)
            dev.flush()
        client.attachments.complete(att.id)
        vol = client.volumes.get(vol.id)
        assert vol.status == 'in-use'
        assert vol.attachments[0]['attachment_id'] == att.id

        # cinder-volume restarts with the volume in use (ensure_export):
        # the host's connection goes on working.
        cinder.restart_volume_service()
        assert cindertools.status(client, vol.id) == 'in-use'
        with cindertools.nbd(info) as dev:
            assert dev.pread(len(payload), 4 * MiB) == payload

        # Detach: the export goes, the volume is available again.
        client.attachments.delete(att.id)
        cindertools.settled(client, vol.id, cinder)
        assert engine.exports(volume_id=vol.id) == []
        with pytest.raises(nbd_client.NBDError):
            cindertools.nbd(info).close()
    finally:
        cindertools.delete(client, vol.id, cinder)


def test_retype_thick_to_thin_in_place(cinder, cinder_client, engine):
    client = cinder_client
    for kind in ('thin', 'thick'):
        cinder_mod.volume_type(client, 'engine-%s' % kind, {
            'volume_backend_name': cinder.backend,
            'provisioning:type': kind})
    vol = cindertools.create(client, cinder, volume_type='engine-thick',
                             name='thick-to-thin')
    try:
        assert engine.volume(vol.id)['provisioning'] == 'thick'
        client.volumes.retype(vol.id, 'engine-thin', 'never')
        vol = cindertools.settled(client, vol.id, cinder)
        assert vol.volume_type == 'engine-thin'
        # In place: the same engine volume, not a migrated copy.
        assert engine.volume(vol.id)['provisioning'] == 'thin'
    finally:
        cindertools.delete(client, vol.id, cinder)


def test_pools_carry_what_volume_types_match(cinder, cinder_client):
    pools = {p.name: p for p in cinder_client.pools.list(detailed=True)}
    pool = pools['%s#%s' % (cinder.volume_host, cinder.engine_pool)]
    assert (pool.volume_backend_name, pool.storage_protocol,
            pool.vendor_name) == (cinder.backend, 'NBD', 'storage-engine')
    assert (pool.thin_provisioning_support, pool.thick_provisioning_support,
            pool.multiattach, pool.online_extend_support) == \
        (True, True, True, True)
    assert pool.backend_state == 'up'
    assert pool.total_capacity_gb == pytest.approx(64, abs=0.5)
    assert 0 < pool.free_capacity_gb <= pool.total_capacity_gb
    assert pool.location_info == '%s:%s' % (cinder.node.url,
                                            cinder.engine_pool)


# -- the table ----------------------------------------------------------------

COVERAGE_TITLE = 'Driver methods each test reaches through the API'
NOT_THROUGH_THE_API = 'not through the API'


def _coverage() -> dict:
    """The coverage list of the module's docstring:
    {(module, test): {method, ...}}; module '' is this one, and
    NOT_THROUGH_THE_API lists its methods as tests, each with its reason.
    """
    lines = __doc__.splitlines()
    start = lines.index(COVERAGE_TITLE) + 2
    end = lines.index('', start + 1)
    found: dict = {}
    module = test = None
    for line in lines[start:end]:
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if indent == 0:
            module = '' if text == 'this module' else text
        elif indent == 4:
            test = text
            found[module, test] = set()
        elif module != NOT_THROUGH_THE_API:
            found[module, test].update(
                m.strip() for m in text.split(',') if m.strip())
        else:
            found[module, test].add(text)
    return found


def _tests_of(path: str) -> set:
    with open(path) as source:
        tree = ast.parse(source.read())
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and
            node.name.startswith('test_')}


def _interface_overrides(cls) -> set:
    """The methods of Cinder's driver interface that ``cls`` (our code in
    its MRO) overrides.
    """
    from cinder.volume import driver as cinder_driver

    interface = {name for base in cinder_driver.VolumeDriver.__mro__
                 if base is not object for name in vars(base)
                 if not name.startswith('__')}
    # Not in Cinder's classes, but what their get_volume_stats calls.
    interface.add('_update_volume_stats')
    ours = {name for klass in cls.__mro__
            if klass.__module__.startswith('cinder_drivers.')
            for name, value in vars(klass).items()
            if callable(value) or isinstance(value, staticmethod)}
    return ours & interface


@pytest.mark.parametrize('path', ['cinder_drivers.lvm.EngineLVMDriver',
                                  'cinder_drivers.aoe.EngineAoEDriver'])
def test_every_driver_method_is_reached_through_the_api(path):
    from oslo_utils import importutils

    coverage = _coverage()
    reached = set()
    for (module, test), methods in coverage.items():
        if module == NOT_THROUGH_THE_API:
            # The "test" is the method, its set the reason.
            assert methods, '%s: say why, and what tests it' % test
            reached.add(test)
            continue
        tests = _tests_of(os.path.join(HERE, module) if module
                          else os.path.abspath(__file__))
        assert test in tests, 'no test %s in %s' % (
            test, module or 'this module')
        reached.update(methods)
    overrides = _interface_overrides(importutils.import_class(path))
    missing = sorted(overrides - reached)
    assert not missing, (
        '%s implements %s, which no test listed here reaches through the '
        'API: add one, and list it' % (path, ', '.join(missing)))
    unknown = sorted(reached - overrides)
    assert not unknown, ('listed but not driver methods of %s: %s'
                         % (path, ', '.join(unknown)))
