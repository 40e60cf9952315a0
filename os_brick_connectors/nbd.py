"""os-brick connector for storage-engine NBD exports (``driver_volume_type``
``nbd``).

Getting the connector
---------------------
os-brick builds connectors from hard-coded tables, so a process must call
``os_brick_connectors.register()`` once at start, before it attaches:
cinder-volume from our Cinder drivers' ``do_setup``, cinder-backup and
nova-compute through ``storage-engine-with-connectors`` (Nova also maps
``driver_volume_type`` to its own volume drivers through a table of its
own, which has no NBD entry). Calling it again is harmless.
Then::

    connector.InitiatorConnector.factory('NBD', root_helper, ...)

returns an :class:`NBDConnector`. Root commands go through os-brick's
privsep daemon: the service must have called ``os_brick.setup(CONF)`` with
a ``lock_path`` (connect, disconnect and extend hold an external lock), and
a service already running as root, with no sudo, sets
``[privsep_osbrick] helper_command = <venv>/bin/privsep-helper``.

Connection properties
---------------------
What the driver puts in ``connection_info['data']``, parsed once into
:class:`NBDConnProps`: ``host``, ``port``, ``export_name``, ``tls_mode``
('off', 'optional', 'require'), ``access_mode`` ('rw', 'ro'),
``volume_id``, ``export_id``, optionally ``tls_certificates`` (a directory
laid out as libnbd and qemu expect: ``ca-cert.pem``, ``client-cert.pem``,
``client-key.pem``; default: libnbd's /etc/pki/libnbd, the host's own) and
``nbd_mode``. TLS is used when ``tls_mode`` is 'require', or 'optional' with
certificates given. The export admits only the host it was made for, by IP
address (and, with TLS, the identities it names).

Modes
-----
``kernel``
    nbd.ko and ``nbd-client``: a real /dev/nbdN. Chosen by default when
    /dev/nbd0 exists. Not exercised by our tests: the machine they run on
    has no nbd.ko. Extending a kernel attachment is not supported.
``fuse``
    The default without nbd.ko: ``nbdfuse`` serves the export as a file and
    ``losetup`` puts a /dev/loopN on it (fuse_attachment.py, shared with
    the AoE connector; it explains why the service needs
    ``KillMode=process`` under systemd, and why extending needs the loop
    device closed). With TLS and named certificates, nbdkit's nbd plugin
    makes the connection for nbdfuse, which (libnbd 1.14) refuses
    ``tls-certificates`` in a URI.
``file``
    No device at all: a file object over our own NBD client
    (:class:`os_brick_connectors.nbd_io.NBDVolumeIO`), for cinder-volume's
    copy paths, as os-brick's RBD connector returns image handles.

The ``nbd_mode`` connection property wins over the connector's ``mode``
argument, which wins over the default.

State on the host
-----------------
Everything one export has on a host lives in ``<run_dir>/<export_name>/``
(``run_dir``: /run/os-brick-nbd; a name that is not a plain file name is
hashed), laid out as state.py describes: the fuse mode's files, or
``nbd-device``, the /dev/nbdN of a kernel attachment. The name is derived
from the export name alone, so ``disconnect_volume`` finds everything from
the connection properties, whatever mode connected it.
"""

import dataclasses
import os
import ssl
import typing
import urllib.parse

from oslo_utils import excutils

from os_brick_connectors import engine_connector
from os_brick_connectors import errors
from os_brick_connectors import fuse_attachment
from os_brick_connectors import host as host_mod
from os_brick_connectors import nbd_io
from os_brick_connectors import properties
from os_brick_connectors import state
from storage_engine.nbd import client as nbd_client
from storage_engine.nbd import constants as nbd_const

MODES = engine_connector.MODES
TLS_MODES = ('off', 'optional', 'require')
ACCESS_MODES = engine_connector.ACCESS_MODES
DEFAULT_RUN_DIR = '/run/os-brick-nbd'
# Where libnbd (nbdfuse) run as root looks for TLS certificates when told
# none: the host's own client certificate, used by every mode.
LIBNBD_TLS_DIR = '/etc/pki/libnbd'
DEFAULT_TIMEOUT = engine_connector.DEFAULT_TIMEOUT
MAX_EXPORT_NAME = 4096      # bytes, the NBD protocol's limit

# The connector's errors (errors.py), under the names callers know.
NBDConnectorError = errors.NBDConnectorError
NBDExportUnavailable = errors.NBDExportUnavailable
NBDDeviceBusy = errors.NBDDeviceBusy
# One StatePaths for every connector (state.py); callers find it here.
StatePaths = state.StatePaths


@dataclasses.dataclass(frozen=True)
class NBDConnProps(properties.ConnProps):
    """The connection properties of one export, validated."""

    host: str
    port: int
    export_name: str
    tls_mode: str = 'off'
    tls_certificates: typing.Optional[str] = None
    nbd_mode: typing.Optional[str] = None

    @classmethod
    def from_dict(cls, props) -> 'NBDConnProps':
        read = properties.Reader('NBD', props)
        port = read.integer('port', 1, 65535)
        values = dict(
            host=read.text('host', required=True),
            port=port,
            export_name=read.text('export_name', required=True),
            tls_mode=read.text('tls_mode', choices=TLS_MODES, default='off'),
            access_mode=read.text('access_mode', choices=ACCESS_MODES,
                                  default='rw'),
            tls_certificates=read.text('tls_certificates'),
            nbd_mode=read.text('nbd_mode', choices=MODES),
            volume_id=read.get('volume_id'),
            export_id=read.get('export_id'))
        name = values['export_name']
        if isinstance(name, str) and \
                len(name.encode('utf-8', 'replace')) > MAX_EXPORT_NAME:
            read.problem('export_name is longer than %d bytes'
                         % MAX_EXPORT_NAME)
        return read.build(cls, **values)

    @property
    def use_tls(self) -> bool:
        return self.tls_mode == 'require' or (
            self.tls_mode == 'optional' and bool(self.tls_certificates))

    @property
    def address(self) -> str:
        host = '[%s]' % self.host if ':' in self.host else self.host
        return '%s:%d' % (host, self.port)

    @property
    def uri(self) -> str:
        """The NBD URI libnbd (nbdfuse) takes."""
        uri = '%s://%s/%s' % ('nbds' if self.use_tls else 'nbd', self.address,
                              urllib.parse.quote(self.export_name, safe=''))
        if self.use_tls and self.tls_certificates:
            uri += '?tls-certificates=' + urllib.parse.quote(
                self.tls_certificates, safe='/')
        return uri

    def tls_files(self) -> dict:
        """The certificate files present: {'ca': .., 'cert': .., 'key': ..}
        in ``tls_certificates``, else in libnbd's directory for root.
        """
        top = self.tls_certificates or LIBNBD_TLS_DIR
        files = {'ca': 'ca-cert.pem', 'cert': 'client-cert.pem',
                 'key': 'client-key.pem'}
        return {k: os.path.join(top, name) for k, name in files.items()
                if os.path.exists(os.path.join(top, name))}

    def ssl_context(self) -> ssl.SSLContext:
        files = self.tls_files()
        ctx = ssl.create_default_context(cafile=files.get('ca'))
        if 'cert' in files:
            ctx.load_cert_chain(files['cert'], files.get('key'))
        return ctx

    @property
    def state_name(self) -> str:
        """What names the export's state directory (state.py)."""
        return self.export_name

    @property
    def subject(self) -> errors.Subject:
        """The export, as the connector's errors name it."""
        return errors.Subject(errors.NBD, 'NBD export %s' % self,
                              {'export': self.export_name,
                               'address': self.address})

    def __str__(self):
        return '%s at %s' % (self.export_name, self.address)


# Kept under its old name: tests and callers patch it here.
_poll = host_mod.poll


class NBDConnector(engine_connector.EngineConnector):
    """Attach storage-engine NBD exports: kernel, fuse or file mode."""

    protocol = 'NBD'
    lock = 'nbd-connect'
    props_class = NBDConnProps
    default_run_dir = DEFAULT_RUN_DIR

    @staticmethod
    def get_connector_properties(root_helper, *args, **kwargs) -> dict:
        # The host's IP address, which the export admits, is already in
        # the generic properties.
        return {}

    def get_search_path(self) -> None:
        # Devices are found per export, from its state directory.
        return None

    def _mode(self, props: NBDConnProps) -> str:
        return props.nbd_mode or self.mode or (
            'kernel' if os.path.exists('/dev/nbd0') else 'fuse')

    # -- the export on the server ---------------------------------------------

    def _open_client(self, props: NBDConnProps) -> nbd_client.NBDClient:
        """Connect with our own client: the file handle, and a first check
        that gives a clear error before anything is set up on the host.
        """
        try:
            tls = props.ssl_context() if props.use_tls else None
            return nbd_client.NBDClient.connect(
                props.export_name, host=props.host, port=props.port,
                tls=tls, timeout=self.timeout)
        except nbd_client.NBDError as exc:
            if exc.error == nbd_const.NBD_REP_ERR_TLS_REQD:
                reason = ('the server requires TLS (connection tls_mode is '
                          '%s)' % props.tls_mode)
            else:
                reason = ('the server refused it: it has no such export, '
                          'or the export does not admit this host (%s)'
                          % exc)
        except OSError as exc:    # refused, unreachable, TLS, timeout
            reason = 'cannot connect to the server: %s' % exc
        raise NBDExportUnavailable(export=props.export_name,
                                   address=props.address, reason=reason)

    def _open_handle(self, props: NBDConnProps) -> nbd_io.NBDVolumeIO:
        return nbd_io.NBDVolumeIO(self._open_client(props),
                                  read_only=props.read_only, name=props.uri)

    def _size(self, props: NBDConnProps) -> int:
        with self._open_client(props) as client:
            return client.size

    def _attached_device(self, props: NBDConnProps,
                         mode: str) -> typing.Optional[str]:
        """The live block device of the export, whatever mode made it."""
        return self._kernel_device(props) or self._fuse(props).device()

    # -- kernel mode ----------------------------------------------------------

    def _kernel_device(self, props: NBDConnProps) -> typing.Optional[str]:
        try:
            with open(self._paths(props).nbd_device) as f:
                device = f.read().strip()
        except OSError:
            return None
        return device if device and host_mod.nbd_connected(device) else None

    def _connect_kernel(self, props: NBDConnProps) -> str:
        """/dev/nbdN through nbd-client.

        Not exercised by the tests (their machine has no nbd.ko). The
        device is recorded before nbd-client runs, so that a disconnect
        finds it whatever happens next.
        """
        paths = self._paths(props)
        # Leftovers of an earlier attachment, if any.
        self._clear(props)
        size = self._size(props)
        free = [d for d in host_mod.nbd_devices()
                if not host_mod.nbd_connected(d) and
                not host_mod.block_size(d)]
        if not free:
            raise NBDConnectorError(reason='no free /dev/nbdN device to '
                                    'connect NBD export %s' % props)
        device = free[0]
        tls = None
        if props.use_tls:
            files = props.tls_files()
            tls = {'tlshostname': props.host}
            for key, option in (('ca', 'cacertfile'), ('cert', 'certfile'),
                                ('key', 'keyfile')):
                if key in files:
                    tls[option] = files[key]
        try:
            self._host.make_dir(paths.dir)
            self._host.write_file(paths.nbd_device, device)
            self._host.nbd_connect(device, props.host, props.port,
                                   props.export_name, props.read_only, tls)
            if not _poll(lambda: host_mod.block_size(device) == size,
                         self.timeout):
                raise NBDConnectorError(
                    reason='%s did not show NBD export %s (%d bytes) within '
                    '%ds' % (device, props, size, self.timeout))
        except Exception:
            with excutils.save_and_reraise_exception():
                self._clear(props, force=True)
        return device

    def _detach_kernel(self, props: NBDConnProps, device: str) -> None:
        self._host.flush_buffers(device)
        self._host.nbd_disconnect(device)

    def _extend_kernel(self, props: NBDConnProps, device: str) -> int:
        size = self._size(props)
        if host_mod.block_size(device) != size:
            raise NBDConnectorError(
                reason='%s (NBD export %s) cannot show the new size %d: '
                'nbd-client cannot resize a connected device; '
                'disconnect and connect again' % (device, props, size))
        return size

    # -- fuse mode ------------------------------------------------------------

    def _connect_fuse(self, props: NBDConnProps) -> str:
        # Our own client first: a clear error, before anything is set up.
        return self._fuse(props).connect(
            check=lambda: self._open_client(props).close())

    def _fuse(self, props: NBDConnProps) -> fuse_attachment.FuseAttachment:
        return fuse_attachment.FuseAttachment(
            self._host, self._paths(props), props.subject,
            self._nbdfuse_source(props), props.read_only, self.timeout)

    @staticmethod
    def _nbdfuse_source(props: NBDConnProps) -> typing.List[str]:
        """What nbdfuse connects to: the export's URI, or nbdkit."""
        if not (props.use_tls and props.tls_certificates):
            # With TLS and no certificates named, libnbd uses its own
            # directory for root, /etc/pki/libnbd.
            return [props.uri]
        # nbdfuse (libnbd 1.14) refuses URIs naming local files, such as
        # tls-certificates; nbdkit's nbd plugin, talking to nbdfuse over a
        # pipe, makes the TLS connection with them instead.
        ro = ['-r'] if props.read_only else []
        return [
            '--command', 'nbdkit', '--exit-with-parent', '-s', *ro, 'nbd',
            'hostname=' + props.host, 'port=%d' % props.port,
            'export=' + props.export_name, 'tls=require',
            'tls-certificates=' + props.tls_certificates]
