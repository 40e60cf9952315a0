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
    ``losetup`` puts a /dev/loopN on it. nbdfuse stays in the foreground,
    so it is started detached (os_brick_connectors/spawn.py) and outlives
    the service; under systemd give the service ``KillMode=process`` or
    stopping it kills nbdfuse too, and the loop devices fail. With TLS and
    named certificates, nbdkit's nbd plugin makes the connection for
    nbdfuse, which (libnbd 1.14) refuses ``tls-certificates`` in a URI.
    Extending needs the loop device closed (see ``_refresh_fuse``).
``file``
    No device at all: a file object over our own NBD client
    (:class:`os_brick_connectors.nbd_io.NBDVolumeIO`), for cinder-volume's
    copy paths, as os-brick's RBD connector returns image handles.

The ``nbd_mode`` connection property wins over the connector's ``mode``
argument, which wins over the default.

State on the host
-----------------
Everything one export has on a host lives in ``<run_dir>/<export_name>/``
(``run_dir``: /run/os-brick-nbd): ``disk``, the file nbdfuse mounts over and
the loop device is bound to; ``nbdfuse.pid``, recorded when nbdfuse is
started; ``nbdfuse.ready``, written by nbdfuse once mounted;
``nbdfuse.log``; ``nbd-device``, the /dev/nbdN of a kernel attachment. The
name is derived from the export name alone, so ``disconnect_volume`` finds
everything from the connection properties, whatever mode connected it.
"""

import dataclasses
import hashlib
import os
import re
import ssl
import typing
import urllib.parse

from oslo_log import log as logging
from oslo_utils import excutils

from os_brick import exception
from os_brick import initiator
from os_brick.initiator.connectors import base
from os_brick import utils

from os_brick_connectors import errors
from os_brick_connectors import host as host_mod
from os_brick_connectors import nbd_io
from os_brick_connectors import volume_io
from storage_engine.nbd import client as nbd_client
from storage_engine.nbd import constants as nbd_const

LOG = logging.getLogger(__name__)

MODES = ('kernel', 'fuse', 'file')
TLS_MODES = ('off', 'optional', 'require')
ACCESS_MODES = ('rw', 'ro')
DEFAULT_RUN_DIR = '/run/os-brick-nbd'
# Where libnbd (nbdfuse) run as root looks for TLS certificates when told
# none: the host's own client certificate, used by every mode.
LIBNBD_TLS_DIR = '/etc/pki/libnbd'
# How long connecting, nbdfuse mounting, or nbdfuse exiting may take.
DEFAULT_TIMEOUT = 30.0
MAX_EXPORT_NAME = 4096      # bytes, the NBD protocol's limit

# Export names used as they are for the state directory; others hashed.
_PLAIN_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,127}')


# The connector's errors (errors.py), under the names callers know.
NBDConnectorError = errors.NBDConnectorError
NBDExportUnavailable = errors.NBDExportUnavailable
NBDDeviceBusy = errors.NBDDeviceBusy


@dataclasses.dataclass(frozen=True)
class NBDConnProps:
    """The connection properties of one export, validated."""

    host: str
    port: int
    export_name: str
    tls_mode: str = 'off'
    access_mode: str = 'rw'
    tls_certificates: typing.Optional[str] = None
    nbd_mode: typing.Optional[str] = None
    volume_id: typing.Optional[str] = None
    export_id: typing.Optional[str] = None

    @classmethod
    def from_dict(cls, props) -> 'NBDConnProps':
        if not isinstance(props, dict):
            raise exception.InvalidParameterValue(
                err='NBD connection properties must be a dict, not %r'
                % (props,))
        problems = []

        def text(key, required=False, choices=None, default=None):
            value = props.get(key)
            if value is None:
                if required:
                    problems.append('%s is missing' % key)
                return default
            if not isinstance(value, str) or not value:
                problems.append('%s must be a non-empty string, not %r'
                                % (key, value))
            elif choices and value not in choices:
                problems.append('%s must be one of %s, not %r'
                                % (key, ', '.join(choices), value))
            return value

        port = props.get('port')
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if (isinstance(port, bool) or not isinstance(port, int)
                or not 1 <= port <= 65535):
            problems.append('port must be an integer from 1 to 65535, not %r'
                            % (props.get('port'),))
        values = dict(
            host=text('host', required=True),
            port=port,
            export_name=text('export_name', required=True),
            tls_mode=text('tls_mode', choices=TLS_MODES, default='off'),
            access_mode=text('access_mode', choices=ACCESS_MODES,
                             default='rw'),
            tls_certificates=text('tls_certificates'),
            nbd_mode=text('nbd_mode', choices=MODES),
            volume_id=props.get('volume_id'),
            export_id=props.get('export_id'))
        name = values['export_name']
        if isinstance(name, str) and \
                len(name.encode('utf-8', 'replace')) > MAX_EXPORT_NAME:
            problems.append('export_name is longer than %d bytes'
                            % MAX_EXPORT_NAME)
        if problems:
            raise exception.InvalidParameterValue(
                err='invalid NBD connection properties: %s'
                % '; '.join(problems))
        return cls(**values)

    @property
    def read_only(self) -> bool:
        return self.access_mode == 'ro'

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

    def __str__(self):
        return '%s at %s' % (self.export_name, self.address)


@dataclasses.dataclass(frozen=True)
class StatePaths:
    """The files of one export's state directory."""

    dir: str

    @classmethod
    def for_export(cls, run_dir: str, export_name: str) -> 'StatePaths':
        name = export_name if _PLAIN_NAME.fullmatch(export_name) else \
            'sha256-' + hashlib.sha256(export_name.encode()).hexdigest()
        return cls(os.path.join(run_dir, name))

    @property
    def disk(self) -> str:
        return os.path.join(self.dir, 'disk')

    @property
    def pidfile(self) -> str:
        return os.path.join(self.dir, 'nbdfuse.pid')

    @property
    def ready(self) -> str:
        return os.path.join(self.dir, 'nbdfuse.ready')

    @property
    def log(self) -> str:
        return os.path.join(self.dir, 'nbdfuse.log')

    @property
    def device(self) -> str:
        return os.path.join(self.dir, 'nbd-device')

    def all_files(self) -> typing.List[str]:
        return [self.disk, self.pidfile, self.pidfile + '.tmp', self.ready,
                self.log, self.device]

    def entries(self) -> typing.List[str]:
        # Listing, not stat(): only root may stat the FUSE-mounted file.
        try:
            return os.listdir(self.dir)
        except FileNotFoundError:
            return []

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log, errors='replace') as f:
                return ' '.join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ''


# Kept under its old name: tests and callers patch it here.
_poll = host_mod.poll


class NBDConnector(base.BaseLinuxConnector):
    """Attach storage-engine NBD exports: kernel, fuse or file mode."""

    def __init__(self, root_helper, driver=None, use_multipath=False,
                 device_scan_attempts=initiator.DEVICE_SCAN_ATTEMPTS_DEFAULT,
                 *args, mode: typing.Optional[str] = None,
                 run_dir: str = DEFAULT_RUN_DIR,
                 timeout: float = DEFAULT_TIMEOUT, **kwargs):
        super().__init__(root_helper, driver, *args,
                         device_scan_attempts=device_scan_attempts, **kwargs)
        if mode is not None and mode not in MODES:
            raise exception.InvalidParameterValue(
                err='NBD connector mode must be one of %s, not %r'
                % (', '.join(MODES), mode))
        self.use_multipath = use_multipath
        self.mode = mode
        self.run_dir = os.path.abspath(run_dir)
        self.timeout = timeout
        self._host = host_mod.Host(self._run_as_root)

    def _run_as_root(self, *cmd, **kwargs):
        return self._execute(*cmd, run_as_root=True,
                             root_helper=self._root_helper, **kwargs)

    # -- os-brick's interface -------------------------------------------------

    @staticmethod
    def get_connector_properties(root_helper, *args, **kwargs) -> dict:
        # The host's IP address, which the export admits, is already in
        # the generic properties.
        return {}

    def get_search_path(self) -> None:
        # Devices are found per export, from its state directory.
        return None

    def get_volume_paths(self, connection_properties: dict,
                         device_info: typing.Optional[dict] = None) -> list:
        props = NBDConnProps.from_dict(connection_properties)
        paths = self._paths(props)
        device = self._kernel_device(paths)
        return [device] if device else self._loop_devices(paths)

    def check_valid_device(self, path, run_as_root: bool = True) -> bool:
        if path is None:
            return False
        if isinstance(path, str):
            return super().check_valid_device(path, run_as_root)
        return volume_io.handle_is_usable(path, 'NBD')

    @utils.trace
    @utils.connect_volume_prepare_result
    @base.synchronized('nbd-connect', external=True)
    def connect_volume(self, connection_properties: dict) -> dict:
        """Attach; connecting what is already attached returns it again."""
        props = NBDConnProps.from_dict(connection_properties)
        mode = props.nbd_mode or self.mode or (
            'kernel' if os.path.exists('/dev/nbd0') else 'fuse')
        if mode == 'file':
            LOG.info('Connecting NBD export %s (volume %s) in file mode',
                     props, props.volume_id)
            handle = nbd_io.NBDVolumeIO(self._open_client(props),
                                        read_only=props.read_only,
                                        name=props.uri)
            return {'type': 'file', 'path': handle}
        device = self._attached_device(self._paths(props))
        if device:
            LOG.info('NBD export %s (volume %s) is already connected at %s',
                     props, props.volume_id, device)
        else:
            LOG.info('Connecting NBD export %s (volume %s) in %s mode',
                     props, props.volume_id, mode)
            connect = self._connect_kernel if mode == 'kernel' else \
                self._connect_fuse
            device = connect(props)
        return {'type': 'block', 'path': device}

    @utils.trace
    @base.synchronized('nbd-connect', external=True)
    @utils.connect_volume_undo_prepare_result(unlink_after=True)
    def disconnect_volume(self, connection_properties: dict,
                          device_info: typing.Optional[dict],
                          force: bool = False,
                          ignore_errors: bool = False) -> None:
        """Detach whatever this host has for the export, from the
        properties alone; nothing attached is not an error.
        """
        props = NBDConnProps.from_dict(connection_properties)
        errors = exception.ExceptionChainer()
        handle = (device_info or {}).get('path')
        if handle is not None and not isinstance(handle, str):
            with errors.context(force, 'Failed to close %s', handle):
                handle.close()
        self._clear(props, force, errors)
        if errors:
            LOG.warning('There were errors disconnecting NBD export %s',
                        props)
            if not ignore_errors:
                raise errors

    @utils.trace
    @base.synchronized('nbd-connect', external=True)
    @utils.connect_volume_undo_prepare_result
    def extend_volume(self, connection_properties: dict) -> int:
        """Show the export's new size on this host; return it (bytes)."""
        props = NBDConnProps.from_dict(connection_properties)
        paths = self._paths(props)
        with self._open_client(props) as client:
            size = client.size
        device = self._kernel_device(paths)
        if device:
            if host_mod.block_size(device) != size:
                raise NBDConnectorError(
                    reason='%s (NBD export %s) cannot show the new size %d: '
                    'nbd-client cannot resize a connected device; '
                    'disconnect and connect again' % (device, props, size))
            return size
        loops = self._loop_devices(paths)
        if loops and host_mod.block_size(loops[0]) != size:
            self._refresh_fuse(props, paths, loops[0], size)
        # No device (file mode, or not attached here): nothing to refresh.
        return size

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

    # -- host state -----------------------------------------------------------

    def _paths(self, props: NBDConnProps) -> StatePaths:
        return StatePaths.for_export(self.run_dir, props.export_name)

    def _loop_devices(self, paths: StatePaths) -> typing.List[str]:
        if 'disk' not in paths.entries():
            return []
        return self._host.loop_devices(paths.disk)

    @staticmethod
    def _kernel_device(paths: StatePaths) -> typing.Optional[str]:
        try:
            with open(paths.device) as f:
                device = f.read().strip()
        except OSError:
            return None
        return device if device and host_mod.nbd_connected(device) else None

    @staticmethod
    def _nbdfuse_pid(paths: StatePaths) -> typing.Optional[int]:
        """The recorded nbdfuse, if it is still the process running."""
        pid = host_mod.read_pid(paths.pidfile)
        return pid if host_mod.process_running(pid, 'nbdfuse',
                                               paths.disk) else None

    def _nbdfuse_serving(self, paths: StatePaths) -> bool:
        pid = self._nbdfuse_pid(paths)
        return bool(pid) and host_mod.read_pid(paths.ready) == pid and \
            host_mod.mounted(paths.disk)

    def _attached_device(self, paths: StatePaths) -> typing.Optional[str]:
        """The live block device of the export, whatever mode made it."""
        device = self._kernel_device(paths)
        if device:
            return device
        if self._nbdfuse_serving(paths):
            loops = self._host.loop_devices(paths.disk)
            if loops:
                return loops[0]
        return None

    # -- kernel mode ----------------------------------------------------------

    def _connect_kernel(self, props: NBDConnProps) -> str:
        """/dev/nbdN through nbd-client.

        Not exercised by the tests (their machine has no nbd.ko). The
        device is recorded before nbd-client runs, so that a disconnect
        finds it whatever happens next.
        """
        paths = self._paths(props)
        # Leftovers of an earlier attachment, if any.
        self._clear(props)
        with self._open_client(props) as client:
            size = client.size
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
            self._host.write_file(paths.device, device)
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

    # -- fuse mode ------------------------------------------------------------

    def _connect_fuse(self, props: NBDConnProps) -> str:
        paths = self._paths(props)
        # A serving nbdfuse without its loop device is used as it is.
        if not self._nbdfuse_serving(paths):
            # Leftovers of an attachment whose nbdfuse is gone, if any.
            self._clear(props)
            # A clear error, before anything is set up on the host.
            self._open_client(props).close()
            self._start_nbdfuse(props, paths)
        try:
            return self._host.loop_attach(paths.disk, props.read_only)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._clear(props, force=True)

    @staticmethod
    def _nbdfuse_command(props: NBDConnProps,
                         paths: StatePaths) -> typing.List[str]:
        ro = ['-r'] if props.read_only else []
        command = ['nbdfuse', '-P', paths.ready, *ro, paths.disk]
        if not (props.use_tls and props.tls_certificates):
            # With TLS and no certificates named, libnbd uses its own
            # directory for root, /etc/pki/libnbd.
            return command + [props.uri]
        # nbdfuse (libnbd 1.14) refuses URIs naming local files, such as
        # tls-certificates; nbdkit's nbd plugin, talking to nbdfuse over a
        # pipe, makes the TLS connection with them instead.
        return command + [
            '--command', 'nbdkit', '--exit-with-parent', '-s', *ro, 'nbd',
            'hostname=' + props.host, 'port=%d' % props.port,
            'export=' + props.export_name, 'tls=require',
            'tls-certificates=' + props.tls_certificates]

    def _start_nbdfuse(self, props: NBDConnProps, paths: StatePaths) -> None:
        """nbdfuse serving the export as ``paths.disk``, detached; returns
        once the file is mounted.
        """
        command = self._nbdfuse_command(props, paths)
        try:
            self._host.make_dir(paths.dir)
            self._host.make_file(paths.disk)
            pid = self._host.spawn(command, paths.log, paths.pidfile)
            LOG.debug('Started nbdfuse %d for NBD export %s', pid, props)

            def ready():
                if host_mod.read_pid(paths.ready) == pid and \
                        host_mod.mounted(paths.disk):
                    return True
                if not host_mod.process_running(pid, 'nbdfuse', paths.disk):
                    raise NBDExportUnavailable(
                        export=props.export_name, address=props.address,
                        reason='nbdfuse exited: %s' % (
                            paths.log_tail() or 'no message'))
                return False

            if not _poll(ready, self.timeout):
                raise NBDConnectorError(
                    reason='nbdfuse did not mount NBD export %s within %ds: '
                    '%s' % (props, self.timeout, paths.log_tail()))
        except Exception:
            with excutils.save_and_reraise_exception():
                self._clear(props, force=True)

    def _stop_nbdfuse(self, paths: StatePaths, unmounted: bool) -> None:
        """Stop the recorded nbdfuse, after checking it is ours."""
        pid = self._nbdfuse_pid(paths)
        if not pid:
            return

        def gone():
            return not host_mod.process_running(pid, 'nbdfuse', paths.disk)

        # Unmounting makes nbdfuse exit by itself (its manual asks that it
        # be stopped that way); it is signalled if it lingers, or if it
        # never mounted.
        signals = (None, 'TERM', 'KILL') if unmounted else ('TERM', 'KILL')
        for signal_name in signals:
            if signal_name:
                LOG.warning('Sending SIG%s to nbdfuse %d (NBD state %s)',
                            signal_name, pid, paths.dir)
                self._host.kill(pid, signal_name)
            if _poll(gone, self.timeout / 3):
                return
        raise NBDConnectorError(reason='nbdfuse %d (%s) does not exit'
                                % (pid, paths.dir))

    def _refresh_fuse(self, props: NBDConnProps, paths: StatePaths,
                      device: str, size: int) -> None:
        """Show a grown export on its loop device.

        nbdfuse learns the export size once, when it connects, and the loop
        device holds the file of that nbdfuse: ``losetup -c`` alone would
        find the old size. The loop device is unbound, nbdfuse started
        again, and the same device bound to the new file. That needs the
        device closed: a mounted, held or swapped-on device is refused
        before anything is touched.
        """
        why = host_mod.block_in_use(device)
        if why:
            raise NBDDeviceBusy(
                device=device, export=props.export_name,
                reason='%s; unmount it to show the new size %d' % (why, size))
        self._host.flush_buffers(device)
        self._host.loop_detach(device)
        if host_mod.loop_bound(device):
            # A process has it open: the kernel unbinds it on last close.
            raise NBDDeviceBusy(
                device=device, export=props.export_name,
                reason='a process has it open, so it keeps the old size and '
                'is released when closed; connect again then to see %d '
                'bytes' % size)
        self._host.unmount_fuse(paths.disk)
        self._stop_nbdfuse(paths, unmounted=True)
        self._start_nbdfuse(props, paths)
        try:
            self._host.loop_attach(paths.disk, props.read_only, device)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._clear(props, force=True)
        if host_mod.block_size(device) != size:
            raise NBDConnectorError(
                reason='%s shows %s bytes of NBD export %s, not %d'
                % (device, host_mod.block_size(device), props, size))

    # -- taking it all down ---------------------------------------------------

    def _clear(self, props: NBDConnProps, force: bool = False,
               errors: typing.Optional[exception.ExceptionChainer] = None
               ) -> None:
        """Undo whatever the state directory says is attached.

        Without ``force`` the first failure is raised and what is under it
        stays (nbdfuse is not pulled from under a loop device still in
        use); with it, failures are gathered in ``errors`` and the rest
        goes on.
        """
        if errors is None:
            errors = exception.ExceptionChainer()
        paths = self._paths(props)
        if not os.path.isdir(paths.dir):
            return
        device = self._kernel_device(paths)
        if device:
            with errors.context(force, 'Failed to disconnect %s', device):
                self._host.flush_buffers(device)
                self._host.nbd_disconnect(device)
        serving = self._nbdfuse_serving(paths)
        loops = []
        with errors.context(force, 'Failed to list loop devices of %s',
                            paths.disk):
            loops = self._loop_devices(paths)
        for loop in loops:
            with errors.context(force, 'Failed to detach %s', loop):
                if serving:
                    # Nothing to flush to when nbdfuse is gone.
                    self._host.flush_buffers(loop)
                self._host.loop_detach(loop)
                if host_mod.loop_bound(loop):
                    raise NBDDeviceBusy(
                        device=loop, export=props.export_name,
                        reason='a process has it open; it is released when '
                        'closed')
        unmounted = False
        if host_mod.mounted(paths.disk):
            with errors.context(force, 'Failed to unmount %s', paths.disk):
                self._host.unmount_fuse(paths.disk)
                unmounted = True
        with errors.context(force, 'Failed to stop nbdfuse of %s',
                            paths.dir):
            self._stop_nbdfuse(paths, unmounted)
        if host_mod.mounted(paths.disk):
            return      # forced past a mount that stayed: keep its files
        with errors.context(force, 'Failed to remove %s', paths.dir):
            self._host.remove_files(*paths.all_files())
            self._host.remove_dir(paths.dir)
