"""What every connector of ours is, whatever its protocol.

An :class:`EngineConnector` attaches a storage-engine export in one of three
modes: ``kernel`` (the protocol's kernel client, a real device), ``fuse``
(nbdfuse and a loop device, fuse_attachment.py) or ``file`` (a file object
over our own client in the calling process, no device). It parses the
connection properties once into its protocol's properties class, keeps what
it leaves on the host in a state directory per export (state.py) under
``run_dir``, runs root commands through os-brick's executor (host.py), and
finds everything again from the connection properties alone, so
``disconnect_volume`` needs no ``device_info``.

os-brick's calls (connect, disconnect, extend) are written once here, under
an external lock named by the protocol; a protocol's connector (nbd.py,
aoe.py) supplies the steps they are made of.
"""

import functools
import os
import typing

from oslo_log import log as logging

from os_brick import exception
from os_brick import initiator
from os_brick.initiator.connectors import base
from os_brick import utils

from os_brick_connectors import fuse_attachment
from os_brick_connectors import host as host_mod
from os_brick_connectors import state
from os_brick_connectors import volume_io

LOG = logging.getLogger(__name__)

MODES = ('kernel', 'fuse', 'file')
ACCESS_MODES = ('rw', 'ro')
# How long connecting, a helper process starting, or one exiting may take.
DEFAULT_TIMEOUT = 30.0


def _locked(method):
    """Run ``method`` under os-brick's external lock of the connector's
    protocol (``lock``): one connect, disconnect or extend at a time on
    the host, across processes. The service must have called
    ``os_brick.setup(CONF)`` with a ``lock_path``.
    """
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        return base.synchronized(self.lock, external=True)(method)(
            self, *args, **kwargs)
    return locked


class EngineConnector(base.BaseLinuxConnector):
    """The os-brick interface of a connector with our three modes.

    A subclass names its ``protocol`` (in messages), ``lock``,
    ``props_class`` (with ``from_dict``, ``subject``, ``state_name``,
    ``read_only``, ``volume_id``) and ``default_run_dir``, and implements
    the steps: ``_mode``, ``_open_handle``, ``_kernel_device``,
    ``_connect_kernel``, ``_detach_kernel``, ``_extend_kernel``,
    ``_attached_device``, ``_fuse`` and ``_size``.
    """

    protocol: str
    lock: str
    props_class: typing.Any
    default_run_dir: str
    default_timeout = DEFAULT_TIMEOUT

    def __init__(self, root_helper, driver=None, use_multipath=False,
                 device_scan_attempts=initiator.DEVICE_SCAN_ATTEMPTS_DEFAULT,
                 *args, mode: typing.Optional[str] = None,
                 run_dir: typing.Optional[str] = None,
                 timeout: typing.Optional[float] = None, **kwargs):
        super().__init__(root_helper, driver, *args,
                         device_scan_attempts=device_scan_attempts, **kwargs)
        if mode is not None and mode not in MODES:
            raise exception.InvalidParameterValue(
                err='%s connector mode must be one of %s, not %r'
                % (self.protocol, ', '.join(MODES), mode))
        self.use_multipath = use_multipath
        self.mode = mode
        self.run_dir = os.path.abspath(
            self.default_run_dir if run_dir is None else run_dir)
        self.timeout = float(self.default_timeout if timeout is None
                             else timeout)
        self._host = host_mod.Host(self._run_as_root)

    def _run_as_root(self, *cmd, **kwargs):
        return self._execute(*cmd, run_as_root=True,
                             root_helper=self._root_helper, **kwargs)

    # -- os-brick's interface -------------------------------------------------

    def get_volume_paths(self, connection_properties: dict,
                         device_info: typing.Optional[dict] = None) -> list:
        props = self.props_class.from_dict(connection_properties)
        device = self._kernel_device(props)
        return [device] if device else self._fuse(props).loop_devices()

    def check_valid_device(self, path, run_as_root: bool = True) -> bool:
        if path is None:
            return False
        if isinstance(path, str):
            return super().check_valid_device(path, run_as_root)
        return volume_io.handle_is_usable(path, self.protocol)

    @utils.trace
    @utils.connect_volume_prepare_result
    @_locked
    def connect_volume(self, connection_properties: dict) -> dict:
        """Attach; connecting what is already attached returns it again."""
        props = self.props_class.from_dict(connection_properties)
        mode = self._mode(props)
        if mode == 'file':
            LOG.info('Connecting %s (volume %s) in file mode',
                     props.subject, props.volume_id)
            return {'type': 'file', 'path': self._open_handle(props)}
        device = self._attached_device(props, mode)
        if device:
            LOG.info('%s (volume %s) is already connected at %s',
                     props.subject, props.volume_id, device)
        else:
            LOG.info('Connecting %s (volume %s) in %s mode',
                     props.subject, props.volume_id, mode)
            connect = self._connect_kernel if mode == 'kernel' else \
                self._connect_fuse
            device = connect(props)
        return {'type': 'block', 'path': device}

    @utils.trace
    @_locked
    @utils.connect_volume_undo_prepare_result(unlink_after=True)
    def disconnect_volume(self, connection_properties: dict,
                          device_info: typing.Optional[dict],
                          force: bool = False,
                          ignore_errors: bool = False) -> None:
        """Detach whatever this host has for the export, from the
        properties alone; nothing attached is not an error.
        """
        props = self.props_class.from_dict(connection_properties)
        errors = exception.ExceptionChainer()
        handle = (device_info or {}).get('path')
        if handle is not None and not isinstance(handle, str):
            with errors.context(force, 'Failed to close %s', handle):
                handle.close()
        self._clear(props, force, errors)
        if errors:
            LOG.warning('There were errors disconnecting %s', props.subject)
            if not ignore_errors:
                raise errors

    @utils.trace
    @_locked
    @utils.connect_volume_undo_prepare_result
    def extend_volume(self, connection_properties: dict) -> int:
        """Show the export's new size on this host; return it (bytes)."""
        props = self.props_class.from_dict(connection_properties)
        device = self._kernel_device(props)
        if device:
            return self._extend_kernel(props, device)
        size = self._size(props)
        # No device (file mode, or not attached here): nothing to refresh.
        self._fuse(props).show_size(size)
        return size

    # -- the steps they share -------------------------------------------------

    def _paths(self, props) -> state.StatePaths:
        return state.StatePaths.for_target(self.run_dir, props)

    def _connect_fuse(self, props) -> str:
        return self._fuse(props).connect()

    def _clear(self, props, force: bool = False,
               errors: typing.Optional[exception.ExceptionChainer] = None
               ) -> None:
        """Undo whatever this host has for the export, in any mode (see
        FuseAttachment.clear for ``force`` and ``errors``).
        """
        if errors is None:
            errors = exception.ExceptionChainer()
        device = self._kernel_device(props)
        if device:
            with errors.context(force, 'Failed to detach %s', device):
                self._detach_kernel(props, device)
        self._fuse(props).clear(force, errors)

    # -- the steps of each protocol -------------------------------------------

    def _mode(self, props) -> str:
        """The mode to connect ``props`` in."""
        raise NotImplementedError

    def _open_handle(self, props) -> volume_io.BlockVolumeIO:
        """The file mode's file object."""
        raise NotImplementedError

    def _kernel_device(self, props) -> typing.Optional[str]:
        """The kernel client's device of the export, if it has one."""
        raise NotImplementedError

    def _attached_device(self, props, mode: str) -> typing.Optional[str]:
        """The device to return again instead of connecting in ``mode``."""
        raise NotImplementedError

    def _connect_kernel(self, props) -> str:
        raise NotImplementedError

    def _detach_kernel(self, props, device: str) -> None:
        """Make the kernel client let ``device`` go."""
        raise NotImplementedError

    def _extend_kernel(self, props, device: str) -> int:
        """Make the kernel client's ``device`` show the new size."""
        raise NotImplementedError

    def _size(self, props) -> int:
        """The export's size on the server, in bytes."""
        raise NotImplementedError

    def _fuse(self, props) -> fuse_attachment.FuseAttachment:
        """The export's fuse-mode attachment (attached or not)."""
        raise NotImplementedError
