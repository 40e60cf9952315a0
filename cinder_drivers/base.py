"""What every Cinder driver of the engine shares.

The drivers are the control plane: each Cinder call becomes one or two calls
of the storage node's management API through :mod:`storage_engine.client`,
and the engine's typed errors become Cinder exceptions here, at the
boundary, with messages an operator can act on.

Identity: an engine volume's id is the Cinder volume's id (and a snapshot's
the Cinder snapshot's), sent with every create, so a create that Cinder
retries never makes two volumes. A volume or snapshot brought in with
manage keeps its engine id, recorded as the Cinder object's
``provider_id`` (see :mod:`cinder_drivers.manage`).

Exports are made per host, in initialize_connection, and admit only the
host's addresses as the family's protocol names them (NBD: the
connector's IP address; AoE: its MAC addresses). Their ids are derived
from the volume and that identity, so repeating initialize_connection
gives the same export back.

Deletes are meant for the incarnation this driver created: Cinder reuses
ids (a rescheduled create comes back with the same id while the failed
attempt's delete may still be retrying), and the client names, in each
delete, the incarnations its creates carried before the delete was asked
for (storage_engine/incarnation.py). A delete that finds a later
incarnation leaves it alone and succeeds: what it was meant for is gone.
"""

import contextlib
import uuid

from oslo_config import cfg
from oslo_config import types
from oslo_log import log as logging
from oslo_utils import units
import requests

from cinder import exception
from cinder.volume import configuration
from cinder.volume import driver

from cinder_drivers import manage
from storage_engine import client as client_mod
from storage_engine import errors

LOG = logging.getLogger(__name__)


class CheckedBySetup(types.ConfigType):
    """An option type that oslo.config does not enforce: the driver checks
    the value when it sets up (:meth:`EngineDriverBase.check_options`).

    oslo.config checks a typed value every time it is read, and
    cinder-volume's parent process reads every registered option, each
    backend's included, when it logs its configuration at start: one
    backend's invalid value (``engine_api_url = 127.0.0.1:8790``) raised
    ConfigFileValueError there and took the whole process down, every
    other backend with it. Checked by the driver, a bad value fails its own
    backend only, with a message that says what to write instead.

    The sample generator sees the real type: its name, choices, minimum.
    """

    def __init__(self, real: types.ConfigType):
        super().__init__(type_name=real.type_name)
        self.real = real

    def __getattr__(self, name):
        # choices, min, max... for oslo-config-generator. Not ``real``
        # itself: copy and pickle look attributes up before __init__ ran.
        if name == 'real':
            raise AttributeError(name)
        return getattr(self.real, name)

    def __call__(self, value):
        try:
            return self.real(value)
        except (TypeError, ValueError):
            return value  # as written: check_options refuses it

    def check(self, value):
        """``value`` converted by the real type; ValueError if invalid."""
        return self.real(value)

    def _formatter(self, value):
        return self.real._formatter(value)

    def __eq__(self, other):
        return type(other) is type(self) and other.real == self.real

    __hash__ = None


engine_opts = [
    cfg.Opt('engine_api_url', default='http://127.0.0.1:8790',
            type=CheckedBySetup(types.URI(schemes=['http', 'https'])),
            help='Management API of the storage node serving this '
                 'backend (storage-engine serve).'),
    cfg.StrOpt('engine_api_token', secret=True,
               help='The storage node\'s API token ([api] auth_token of '
                    'its configuration).'),
    cfg.StrOpt('engine_api_ca_file',
               help='CA bundle that verifies an https engine_api_url.'),
    cfg.Opt('engine_api_timeout', default=60,
            type=CheckedBySetup(types.Integer(min=1)),
            help='Seconds to wait for one API request.'),
    cfg.StrOpt('engine_pool', default='default',
               help='The node\'s pool (volume group) holding this '
                    'backend\'s volumes.'),
    cfg.Opt('engine_provisioning', default='thin',
            type=CheckedBySetup(types.String(choices=['thin', 'thick'])),
            help='Provisioning of volumes whose type has no '
                 'provisioning:type extra spec.'),
    cfg.Opt('engine_export_protocol',
            type=CheckedBySetup(types.String(choices=['nbd', 'aoe'])),
            help='How volumes are exported to hosts. Each driver '
                 'family has its own protocol (nbd: '
                 'cinder_drivers.lvm.EngineLVMDriver; aoe: '
                 'cinder_drivers.aoe.EngineAoEDriver); unset means '
                 'that one, and another value fails the backend\'s '
                 'start with the reason.'),
]

CONF = cfg.CONF
CONF.register_opts(engine_opts, group=configuration.SHARED_CONF_GROUP)

# Derives export ids from (volume, host): the same attach, the same export.
EXPORT_NAMESPACE = uuid.UUID('5b0c5a3e-6a57-4f2e-9a55-2e3c1d3f8b11')


def bad_option_message(group: str, opt: cfg.Opt, value,
                       exc: ValueError) -> str:
    """Why ``value`` of ``opt`` is refused, and what to write instead."""
    real = opt.type.real
    where = '[%s] %s = %s' % (group, opt.name, value)
    if isinstance(real, types.URI):
        text = str(value).strip()
        scheme, sep, rest = text.partition('://')
        if not sep:
            return ('%s has no scheme: write %s = http://%s (or https:// '
                    'with engine_api_ca_file)' % (where, opt.name, text))
        if scheme not in real.schemes:
            return ('%s: the scheme must be http or https: write '
                    '%s = http://%s' % (where, opt.name, rest))
        return ('%s is not a URL of the storage node: write %s = '
                'http://HOST:PORT (its [api] address)' % (where, opt.name))
    if getattr(real, 'choices', None):
        return '%s is not valid: write one of %s' % (
            where, ', '.join(real.choices))
    if isinstance(real, types.Integer):
        return '%s is not valid (%s): write a whole number of at least %s' % (
            where, exc, real.min)
    return '%s is not valid: %s' % (where, exc)


class EngineDriverBase(manage.ManageMixin, driver.VolumeDriver):
    """Cinder's driver interface over one pool of one storage node
    (manage and unmanage: :mod:`cinder_drivers.manage`).
    """

    VERSION = '1.0.0'
    CI_WIKI_NAME = 'storage-engine CI'
    vendor_name = 'storage-engine'
    #: connection_info['driver_volume_type'] and the stats' protocol
    protocol = 'nbd'
    storage_protocol = 'NBD'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(engine_opts)
        self._client = None

    @staticmethod
    def get_driver_options():
        return engine_opts

    # -- set-up ---------------------------------------------------------------

    @property
    def client(self) -> client_mod.Client:
        if self._client is None:
            conf = self.configuration
            self._client = client_mod.Client(
                conf.engine_api_url, conf.engine_api_token or '',
                ca_file=conf.engine_api_ca_file,
                timeout=conf.engine_api_timeout)
        return self._client

    @property
    def pool(self) -> str:
        return self.configuration.engine_pool

    def do_setup(self, context):
        self.check_options()
        # This process (cinder-volume) attaches volumes for its own copies:
        # os-brick must know our connectors here too.
        import os_brick_connectors
        os_brick_connectors.register()

    def check_options(self):
        """Refuse a value of an option that oslo.config leaves to us
        (:class:`CheckedBySetup`), saying what to write instead.

        Raises InvalidConfigurationValue, which fails this backend's start
        and no other.
        """
        conf = self.configuration
        for opt in engine_opts:
            if not isinstance(opt.type, CheckedBySetup):
                continue
            value = conf.safe_get(opt.name)
            if value is None:
                continue
            try:
                opt.type.check(value)
            except ValueError as exc:
                msg = bad_option_message(conf.config_group, opt, value, exc)
                LOG.error(msg)
                raise exception.InvalidConfigurationValue(msg)

    def check_for_setup_error(self):
        if not self.configuration.engine_api_token:
            raise exception.InvalidConfigurationValue(
                option='engine_api_token', value='(empty)')
        wanted = self.configuration.engine_export_protocol
        if wanted and wanted != self.protocol:
            msg = ('engine_export_protocol is %s, but %s exports over %s: '
                   'unset the option, or use the driver of the %s family'
                   % (wanted, self.__class__.__name__, self.protocol,
                      wanted))
            LOG.error(msg)
            raise exception.InvalidConfigurationValue(msg)
        url = self.configuration.engine_api_url
        with self._translated('checking storage node %s' % url):
            try:
                self.client.pool(self.pool)
            except errors.EngineError as exc:
                if self._refuses_configuration(exc):
                    msg = self._configuration_refusal(exc)
                    LOG.error(msg)
                    raise exception.InvalidConfigurationValue(msg) from exc
                if not isinstance(exc, errors.Unavailable):
                    raise
                # Boot order: the node may start after cinder-volume. The
                # backend reports itself down, without capacity, and comes
                # up at the first stats poll the node answers.
                LOG.warning('The storage node at %(url)s is not reachable '
                            'yet (%(exc)s): backend %(backend)s starts '
                            'down, with no capacity, and comes up by itself '
                            'at the first stats poll the node answers. '
                            'Check that storage-engine serve is running '
                            'there and reachable.',
                            {'url': url, 'exc': exc,
                             'backend': self.configuration.config_group})

    @staticmethod
    def _refuses_configuration(exc: errors.EngineError) -> bool:
        """Is ``exc`` the node refusing this backend's configuration (its
        token, its pool, its CA), which waiting will not cure?
        """
        return isinstance(exc, (errors.Unauthorized, errors.NotFound)) or (
            isinstance(exc, errors.Unavailable) and
            isinstance(exc.__cause__, requests.exceptions.SSLError))

    def _configuration_refusal(self, exc: errors.EngineError) -> str:
        """What the operator must change when the node refuses this
        backend's configuration (its token, its pool, its CA).
        """
        url = self.configuration.engine_api_url
        backend = self.configuration.config_group
        if isinstance(exc, errors.Unauthorized):
            return ('the storage node at %s refused the token of backend '
                    '%s: set engine_api_token to its [api] auth_token'
                    % (url, backend))
        if isinstance(exc, errors.Unavailable):
            return ('backend %s cannot verify the storage node at %s (%s): '
                    'set engine_api_ca_file to the CA that signed its '
                    'certificate' % (backend, url, exc))
        try:
            known = ', '.join(sorted(p['name'] for p in self.client.pools()))
        except errors.EngineError:
            known = 'storage-engine pool list there shows them'
        return ('the storage node at %s has no pool %s (%s): set '
                'engine_pool of backend %s to one of its pools (%s)'
                % (url, self.pool, exc, backend, known))

    @contextlib.contextmanager
    def _translated(self, action: str, refusals: dict | None = None):
        """Turn engine errors into Cinder exceptions.

        ``refusals`` maps engine error classes to the Cinder exception
        (a callable taking the engine error) that a caller expects.
        """
        try:
            yield
        except errors.EngineError as exc:
            for cls, make in (refusals or {}).items():
                if isinstance(exc, cls):
                    raise make(exc) from exc
            if isinstance(exc, errors.Unavailable):
                msg = ('%s: the storage node at %s is unavailable (%s); '
                       'check that storage-engine serve is running there '
                       'and reachable' % (action,
                                          self.configuration.engine_api_url,
                                          exc))
            elif isinstance(exc, errors.Unauthorized):
                msg = ('%s: the storage node at %s refused the token; set '
                       'engine_api_token to its [api] auth_token'
                       % (action, self.configuration.engine_api_url))
            elif isinstance(exc, errors.NoSpace):
                msg = '%s: pool %s is full: %s' % (action, self.pool, exc)
            else:
                msg = '%s: %s' % (action, exc)
            LOG.error(msg)
            raise exception.VolumeBackendAPIException(data=msg) from exc

    # -- identities and specs -------------------------------------------------

    @staticmethod
    def _engine_id(volume) -> str:
        return volume.provider_id or volume.id

    def _provisioning(self, volume_type) -> str:
        specs = (volume_type.extra_specs if volume_type is not None
                 else {}) or {}
        value = specs.get('provisioning:type')
        if value is None:
            return self.configuration.engine_provisioning
        if value not in ('thin', 'thick'):
            raise exception.InvalidVolumeType(
                reason='provisioning:type must be thin or thick, not %r'
                % value)
        return value

    # -- stats ----------------------------------------------------------------

    def _update_volume_stats(self):
        conf = self.configuration
        stats = {
            'volume_backend_name': conf.safe_get('volume_backend_name') or
            self.__class__.__name__,
            'vendor_name': self.vendor_name,
            'driver_version': self.VERSION,
            'storage_protocol': self.storage_protocol,
            'sparse_copy_volume': True,
        }
        pool = {
            'pool_name': self.pool,
            'thin_provisioning_support': True,
            'thick_provisioning_support': True,
            'multiattach': True,
            'online_extend_support': True,
            'QoS_support': False,
            'max_over_subscription_ratio':
                conf.safe_get('max_over_subscription_ratio'),
            'reserved_percentage': conf.safe_get('reserved_percentage') or 0,
            'location_info': '%s:%s' % (conf.engine_api_url, self.pool),
        }
        try:
            p = self.client.pool(self.pool)
        except errors.EngineError as exc:
            if self._refuses_configuration(exc):
                # Found only now when the node was down at start: not
                # transient, the operator must change the configuration.
                LOG.error('%s; the backend stays down until then',
                          self._configuration_refusal(exc))
            else:
                LOG.warning('cannot read pool %s of %s: %s', self.pool,
                            conf.engine_api_url, exc)
            # Every capacity key, zero: the scheduler compares each key it
            # requires of the last report with the next one, and a key
            # missing here made it drop every later report of this pool
            # (KeyError), so that the backend stayed down after the node
            # came back.
            pool.update(total_capacity_gb=0, free_capacity_gb=0,
                        provisioned_capacity_gb=0, allocated_capacity_gb=0,
                        total_volumes=0, backend_state='down')
        else:
            # A pool out of space or stopped by an I/O error takes no new
            # volumes; its free space is what its files can still grow by.
            health = p.get('health') or {'state': 'ok'}
            if health['state'] != 'ok':
                LOG.warning('pool %s of %s is %s since %s: %s; reported '
                            'down', self.pool, conf.engine_api_url,
                            health['state'], health.get('since'),
                            health.get('reason'))
            shortfall = (p.get('backing') or {}).get('shortfall', 0)
            pool.update(
                total_capacity_gb=round(p['total'] / units.Gi, 2),
                free_capacity_gb=round(
                    max(0, p['free'] - shortfall) / units.Gi, 2),
                provisioned_capacity_gb=round(
                    p['provisioned'] / units.Gi, 2),
                allocated_capacity_gb=round(p['allocated'] / units.Gi, 2),
                total_volumes=p['volumes'],
                backend_state='up' if health['state'] == 'ok' else 'down')
        stats['pools'] = [pool]
        self._stats = stats

    def get_pool(self, volume):
        return self.pool

    # -- volumes --------------------------------------------------------------

    def create_volume(self, volume):
        provisioning = self._provisioning(volume.volume_type)
        with self._translated('creating volume %s' % volume.id):
            made = self.client.create_volume(
                volume.name, volume.size * units.Gi, pool=self.pool,
                provisioning=provisioning, id=volume.id)
        return {'provider_id': made['id']}

    def create_volume_from_snapshot(self, volume, snapshot):
        provisioning = self._provisioning(volume.volume_type)
        with self._translated('creating volume %s from snapshot %s'
                              % (volume.id, snapshot.id)):
            made = self.client.create_volume(
                volume.name, volume.size * units.Gi, pool=self.pool,
                provisioning=provisioning,
                source_snapshot_id=self._snapshot_engine_id(snapshot),
                id=volume.id)
        return {'provider_id': made['id']}

    def create_cloned_volume(self, volume, src_vref):
        provisioning = self._provisioning(volume.volume_type)
        with self._translated('cloning volume %s into %s'
                              % (src_vref.id, volume.id)):
            made = self.client.create_volume(
                volume.name, volume.size * units.Gi, pool=self.pool,
                provisioning=provisioning,
                source_volume_id=self._engine_id(src_vref), id=volume.id)
        return {'provider_id': made['id']}

    def delete_volume(self, volume):
        ident = self._engine_id(volume)
        with self._translated(
                'deleting volume %s' % volume.id,
                {errors.Busy: lambda e: exception.VolumeIsBusy(
                    volume_name=volume.name)}):
            try:
                # Exports a lost detach left behind would keep it busy;
                # the node withdraws them only if the delete applies.
                self.client.delete_volume(ident, remove_exports=True)
            except errors.NotFound:
                LOG.info('volume %s is already gone from the engine',
                         volume.id)
            except errors.IncarnationMismatch as exc:
                LOG.info('volume %s: not deleted, %s', volume.id, exc)

    def extend_volume(self, volume, new_size):
        with self._translated('extending volume %s to %d GiB'
                              % (volume.id, new_size)):
            self.client.extend_volume(self._engine_id(volume),
                                      new_size * units.Gi)

    def revert_to_snapshot(self, context, volume, snapshot):
        with self._translated('reverting volume %s to snapshot %s'
                              % (volume.id, snapshot.id)):
            self.client.revert_volume(self._engine_id(volume),
                                      self._snapshot_engine_id(snapshot))

    def retype(self, context, volume, new_type, diff, host):
        """Thin and thick convert in place; anything else migrates."""
        if (host.get('capabilities', {}).get('location_info') !=
                self._stats.get('pools', [{}])[0].get('location_info')):
            return False
        try:
            wanted = self._provisioning(new_type)
        except exception.InvalidVolumeType:
            return False
        with self._translated('retyping volume %s to %s provisioning'
                              % (volume.id, wanted)):
            current = self.client.volume(self._engine_id(volume))
            if current['provisioning'] != wanted:
                self.client.update_volume(self._engine_id(volume),
                                          provisioning=wanted)
        return True

    # -- snapshots ------------------------------------------------------------

    @staticmethod
    def _snapshot_engine_id(snapshot) -> str:
        return snapshot.provider_id or snapshot.id

    def create_snapshot(self, snapshot):
        with self._translated('creating snapshot %s of volume %s'
                              % (snapshot.id, snapshot.volume_id)):
            made = self.client.create_snapshot(
                self._engine_id(snapshot.volume), snapshot.name,
                id=snapshot.id)
        return {'provider_id': made['id']}

    def delete_snapshot(self, snapshot):
        with self._translated(
                'deleting snapshot %s' % snapshot.id,
                {errors.Busy: lambda e: exception.SnapshotIsBusy(
                    snapshot_name=snapshot.name)}):
            try:
                self.client.delete_snapshot(self._snapshot_engine_id(
                    snapshot))
            except errors.NotFound:
                LOG.info('snapshot %s is already gone from the engine',
                         snapshot.id)
            except errors.IncarnationMismatch as exc:
                LOG.info('snapshot %s: not deleted, %s', snapshot.id, exc)

    # -- attach and detach --------------------------------------------------

    # What the family's protocol knows a host by. NBD: the connector's IP
    # address, which the export admits and the server sees. Another family
    # overrides _export_hosts and _connection_data (the AoE family: the
    # connector's MAC addresses, and its own connection data); the host's
    # identity, which names its export and tells which attachments share
    # it, is the set of addresses admitted unless _host_identity says
    # otherwise.

    def _export_hosts(self, connector) -> list:
        """The addresses the export to the connector's host admits."""
        if not connector or not connector.get('ip'):
            raise exception.InvalidConnectorException(missing='ip')
        return [connector['ip']]

    def _host_identity(self, connector) -> str:
        """What one host is known by: attachments with the same identity
        share one export.
        """
        return ','.join(self._export_hosts(connector))

    def _connection_data(self, exp: dict) -> dict:
        """connection_info['data'] from the engine's export (the driver
        adds volume_id, export_id and access_mode).
        """
        data = dict(exp['connection'])
        data['discard'] = True
        return data

    def _export_id(self, volume, identity: str) -> str:
        return str(uuid.uuid5(EXPORT_NAMESPACE, '%s:%s' % (
            self._engine_id(volume), identity)))

    def _same_host(self, connector, identity: str) -> bool:
        try:
            return bool(connector) and \
                self._host_identity(connector) == identity
        except exception.InvalidConnectorException:
            return False

    def create_export(self, context, volume, connector):
        # Exports are per host, made in initialize_connection.
        pass

    def ensure_export(self, context, volume):
        # The storage node restores its exports itself when it restarts.
        pass

    def remove_export(self, context, volume):
        # Removed per host in terminate_connection; another host may
        # still be attached (multiattach).
        pass

    def initialize_connection(self, volume, connector):
        hosts = self._export_hosts(connector)
        identity = self._host_identity(connector)
        # Cinder marks read-only volumes in their admin metadata.
        admin = volume.admin_metadata \
            if volume.obj_attr_is_set('admin_metadata') else {}
        read_only = (admin or {}).get('readonly') == 'True'
        with self._translated('exporting volume %s to %s'
                              % (volume.id, ', '.join(hosts))):
            exp = self.client.create_export(
                self._engine_id(volume), hosts, read_only=read_only,
                protocol=self.protocol,
                id=self._export_id(volume, identity))
        data = self._connection_data(exp)
        data.update(volume_id=volume.id, export_id=exp['id'],
                    access_mode='ro' if exp['read_only'] else 'rw')
        return {'driver_volume_type': self.protocol, 'data': data}

    def terminate_connection(self, volume, connector, **kwargs):
        """Remove the export of the connector's host.

        Returns True while another attachment of the volume uses the same
        host's export (multiattach on one host): it stays.
        """
        ident = self._engine_id(volume)
        with self._translated('removing the export of volume %s'
                              % volume.id):
            if connector is None:
                # Force detach: every host loses the volume.
                for exp in self.client.exports(volume_id=ident):
                    self._remove_export(exp['id'])
                return False
            identity = self._host_identity(connector)
            sharing = [a for a in volume.volume_attachment or []
                       if self._same_host(a.connector, identity)
                       and a.attach_status in ('attached', 'attaching')]
            if len(sharing) > 1:
                return True
            self._remove_export(self._export_id(volume, identity))
        return False

    def _remove_export(self, export_id: str) -> None:
        try:
            self.client.delete_export(export_id)
        except errors.NotFound:
            pass
        except errors.IncarnationMismatch as exc:
            # The host attached again while this detach was retrying.
            LOG.info('export %s stays: %s', export_id, exc)
