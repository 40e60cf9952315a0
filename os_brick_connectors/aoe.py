"""os-brick connector for storage-engine AoE exports (``driver_volume_type``
``aoe``).

Getting the connector
---------------------
As for NBD (see nbd.py): a process calls ``os_brick_connectors.register()``
once at start, then ``connector.InitiatorConnector.factory('AOE', ...)``
returns an :class:`AoEConnector`. register() also puts this connector in
os-brick's list of connectors asked for host properties, so
``os_brick.initiator.connector.get_connector_properties`` (what Nova and
cinder-volume send Cinder) includes ``aoe_macs``: the MAC addresses of the
host's AoE interfaces, which the export admits. Connect, disconnect and
extend hold an external lock: the service must have called
``os_brick.setup(CONF)`` with a ``lock_path``.

Host configuration
------------------
oslo.config group ``[aoe_connector]`` of the service that attaches
(nova.conf, cinder.conf): ``interfaces`` (default: every up, non-loopback
Ethernet interface), ``network_namespace`` (the interfaces live in that
namespace; raw sockets are opened there), ``mode``, ``timeout``.
Constructor arguments of the same names override them.

Connection properties
---------------------
Parsed once into :class:`AoEConnProps`: ``target_shelf``, ``target_lun``
(the slot), ``target_mac`` (the target's MAC; optional: without it the
target is looked for by broadcast), ``target_interface`` (the storage
node's, for messages), ``access_mode`` ('rw', 'ro'), ``volume_id``,
``export_id``, and optionally ``aoe_mode``.

Modes
-----
``kernel``
    aoe.ko and aoetools, as os-brick's own AoE connector did before
    os-brick 4.0: ``aoe-discover`` (or ``aoe-revalidate eS.L`` when the
    device exists), wait for ``/dev/etherd/eS.L``, ``aoe-flush eS.L`` on
    disconnect. The default when /sys/module/aoe exists. aoe.ko answers
    only in the host's own network namespace. Not exercised on a real
    kernel by our tests (their machine has no aoe.ko).
``fuse``
    The default without aoe.ko: a bridge process (aoe_bridge.py) reaches
    the target with our own initiator and serves it as an NBD export on a
    Unix socket; ``nbdfuse`` makes that a file and ``losetup`` a real
    /dev/loopN. Both run detached (spawn.py) and outlive the service.
``file``
    No device: a file object over our initiator in this process
    (:class:`os_brick_connectors.aoe_io.AoEVolumeIO`). The process needs
    CAP_NET_RAW (and CAP_SYS_ADMIN with a network namespace).

``aoe_mode`` in the connection properties wins over the connector's
``mode``, which wins over the default.

State on the host
-----------------
A fuse attachment keeps everything in ``<run_dir>/e<shelf>.<slot>-<target
MAC>/`` (``run_dir``: /run/os-brick-aoe): ``nbd.sock`` and ``bridge.pid``,
``bridge.ready``, ``bridge.log``; ``disk`` (the nbdfuse mount the loop
device is bound to), ``nbdfuse.pid``, ``nbdfuse.ready``, ``nbdfuse.log``.
The name comes from the connection properties alone, so
``disconnect_volume`` finds everything whatever mode connected.
"""

import dataclasses
import json
import os
import re
import sys
import typing
import urllib.parse

from oslo_concurrency import processutils as putils
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import excutils

from os_brick import exception
from os_brick import initiator
from os_brick.initiator.connectors import base
from os_brick.privileged import rootwrap as priv_rootwrap
from os_brick import utils

from os_brick_connectors import aoe_io
from os_brick_connectors import errors
from os_brick_connectors import host as host_mod
from os_brick_connectors import volume_io

LOG = logging.getLogger(__name__)

MODES = ('kernel', 'fuse', 'file')
ACCESS_MODES = ('rw', 'ro')
DEFAULT_RUN_DIR = '/run/os-brick-aoe'
ETHERD_DIR = '/dev/etherd'
AOE_MODULE_DIR = '/sys/module/aoe'
DEFAULT_TIMEOUT = 30.0
# Between two aoe-discover runs while waiting for /dev/etherd/eS.L (as
# os-brick's old connector waited).
KERNEL_SCAN_INTERVAL = 2.0
MAX_SHELF = 65534           # 0xffff is the broadcast shelf
MAX_SLOT = 254              # 0xff is the broadcast slot
BRIDGE_MODULE = 'os_brick_connectors.aoe_bridge'
# Run by the same Python as the service, so it finds this package.
BRIDGE = (sys.executable, '-m', BRIDGE_MODULE)

GROUP = 'aoe_connector'
aoe_connector_opts = [
    cfg.ListOpt('interfaces', default=[],
                help='The host\'s network interfaces on the AoE storage '
                     'network: their MAC addresses are what AoE exports '
                     'admit, and they are tried in this order. Empty: '
                     'every up, non-loopback Ethernet interface (of '
                     'network_namespace, if set).'),
    cfg.StrOpt('network_namespace',
               help='The network namespace (as "ip netns" names it) the AoE '
                    'interfaces are in. The raw sockets of the fuse and '
                    'file modes are opened there; the service itself stays '
                    'in its own. The kernel mode cannot use it.'),
    cfg.StrOpt('mode', choices=MODES,
               help='How volumes attach: kernel (aoe.ko and aoetools: '
                    '/dev/etherd/eS.L), fuse (our initiator, nbdfuse and a '
                    'loop device: /dev/loopN) or file (a file object in '
                    'the calling process, no device). Unset: kernel when '
                    'aoe.ko is loaded, else fuse.'),
    cfg.FloatOpt('timeout', default=DEFAULT_TIMEOUT, min=1,
                 help='Seconds to wait for the AoE target to answer, and '
                      'for each step of an attach. A target that does not '
                      'admit this host never answers: attaching it fails '
                      'after this long.'),
]
cfg.CONF.register_opts(aoe_connector_opts, group=GROUP)

_MAC = re.compile(r'[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}')


# The connector's errors (errors.py), under the names callers know.
AoEConnectorError = errors.AoEConnectorError
AoEExportUnavailable = errors.AoEExportUnavailable
AoEDeviceBusy = errors.AoEDeviceBusy


def normalise_mac(value) -> typing.Optional[str]:
    """``value`` in lower-case colon form, or None if it is not a MAC."""
    text = value.strip().lower() if isinstance(value, str) else ''
    return text.replace('-', ':') if _MAC.fullmatch(text) else None


# -- the host's AoE interfaces ------------------------------------------------

def host_interfaces(execute: typing.Callable, root_helper,
                    names: typing.Sequence[str] = (),
                    netns: typing.Optional[str] = None
                    ) -> typing.List[typing.Tuple[str, str]]:
    """``[(interface, mac)]`` of the AoE interfaces: ``names`` in that order
    (missing ones are left out, with a warning), else every up,
    non-loopback Ethernet interface; in network namespace ``netns``.

    ``ip -j link show`` reads them; entering a namespace (``ip -n``) needs
    root, so only then does it run as root.
    """
    cmd = ['ip'] + (['-n', netns] if netns else []) + ['-j', 'link', 'show']
    out, _err = execute(*cmd, run_as_root=bool(netns),
                        root_helper=root_helper)
    links = {link.get('ifname'): link for link in json.loads(out or '[]')}
    if names:
        found = []
        for name in names:
            link = links.get(name)
            mac = normalise_mac((link or {}).get('address'))
            if mac is None:
                LOG.warning('AoE interface %s (in [%s] interfaces) is not an '
                            'Ethernet interface of %s', name, GROUP,
                            'network namespace %s' % netns if netns
                            else 'this host')
                continue
            found.append((name, mac))
        return found
    return [(name, normalise_mac(link['address']))
            for name, link in links.items()
            if link.get('link_type') == 'ether'
            and 'UP' in link.get('flags', ())
            and 'LOOPBACK' not in link.get('flags', ())
            and normalise_mac(link.get('address'))]


# -- connection properties and host state ------------------------------------

@dataclasses.dataclass(frozen=True)
class AoEConnProps:
    """The connection properties of one export, validated."""

    shelf: int
    slot: int
    target_mac: typing.Optional[str] = None
    target_interface: typing.Optional[str] = None
    access_mode: str = 'rw'
    aoe_mode: typing.Optional[str] = None
    volume_id: typing.Optional[str] = None
    export_id: typing.Optional[str] = None

    @classmethod
    def from_dict(cls, props) -> 'AoEConnProps':
        if not isinstance(props, dict):
            raise exception.InvalidParameterValue(
                err='AoE connection properties must be a dict, not %r'
                % (props,))
        problems = []

        def number(key, top):
            value = props.get(key)
            if isinstance(value, str) and value.isdigit():
                value = int(value)
            if value is None:
                problems.append('%s is missing' % key)
            elif (isinstance(value, bool) or not isinstance(value, int)
                  or not 0 <= value <= top):
                problems.append('%s must be an integer from 0 to %d, not %r'
                                % (key, top, props.get(key)))
            return value

        def choice(key, choices, default):
            value = props.get(key)
            if value is None:
                return default
            if value not in choices:
                problems.append('%s must be one of %s, not %r'
                                % (key, ', '.join(choices), value))
            return value

        mac = props.get('target_mac')
        if mac is not None:
            mac = normalise_mac(mac)
            if mac is None:
                problems.append('target_mac must be a MAC address, not %r'
                                % (props.get('target_mac'),))
        values = dict(
            shelf=number('target_shelf', MAX_SHELF),
            slot=number('target_lun', MAX_SLOT),
            target_mac=mac,
            target_interface=props.get('target_interface'),
            access_mode=choice('access_mode', ACCESS_MODES, 'rw'),
            aoe_mode=choice('aoe_mode', MODES, None),
            volume_id=props.get('volume_id'),
            export_id=props.get('export_id'))
        if problems:
            raise exception.InvalidParameterValue(
                err='invalid AoE connection properties: %s'
                % '; '.join(problems))
        return cls(**values)

    @property
    def read_only(self) -> bool:
        return self.access_mode == 'ro'

    @property
    def device(self) -> str:
        """The AoE name of the target: e<shelf>.<slot>."""
        return 'e%d.%d' % (self.shelf, self.slot)

    def __str__(self):
        return '%s (%s)' % (self.device, self.target_mac or 'any MAC')


@dataclasses.dataclass(frozen=True)
class StatePaths:
    """The files of one target's state directory (fuse mode)."""

    dir: str

    @classmethod
    def for_target(cls, run_dir: str, props: AoEConnProps) -> 'StatePaths':
        name = props.device
        if props.target_mac:
            name += '-' + props.target_mac.replace(':', '')
        return cls(os.path.join(run_dir, name))

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    socket = property(lambda self: self._file('nbd.sock'))
    bridge_pidfile = property(lambda self: self._file('bridge.pid'))
    bridge_ready = property(lambda self: self._file('bridge.ready'))
    bridge_log = property(lambda self: self._file('bridge.log'))
    disk = property(lambda self: self._file('disk'))
    nbdfuse_pidfile = property(lambda self: self._file('nbdfuse.pid'))
    nbdfuse_ready = property(lambda self: self._file('nbdfuse.ready'))
    nbdfuse_log = property(lambda self: self._file('nbdfuse.log'))

    def all_files(self) -> typing.List[str]:
        return [self.socket, self.bridge_pidfile, self.bridge_pidfile + '.tmp',
                self.bridge_ready, self.bridge_ready + '.tmp',
                self.bridge_log, self.disk, self.nbdfuse_pidfile,
                self.nbdfuse_pidfile + '.tmp', self.nbdfuse_ready,
                self.nbdfuse_log]

    def entries(self) -> typing.List[str]:
        # Listing, not stat(): only root may stat the FUSE-mounted file.
        try:
            return os.listdir(self.dir)
        except FileNotFoundError:
            return []

    @staticmethod
    def log_tail(path: str, lines: int = 5) -> str:
        try:
            with open(path, errors='replace') as f:
                return ' '.join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ''


class AoEConnector(base.BaseLinuxConnector):
    """Attach storage-engine AoE exports: kernel, fuse or file mode."""

    def __init__(self, root_helper, driver=None, use_multipath=False,
                 device_scan_attempts=initiator.DEVICE_SCAN_ATTEMPTS_DEFAULT,
                 *args, mode: typing.Optional[str] = None,
                 interfaces: typing.Optional[typing.Sequence[str]] = None,
                 network_namespace: typing.Optional[str] = None,
                 timeout: typing.Optional[float] = None,
                 run_dir: str = DEFAULT_RUN_DIR,
                 etherd_dir: str = ETHERD_DIR,
                 aoe_module_dir: str = AOE_MODULE_DIR,
                 scan_interval: float = KERNEL_SCAN_INTERVAL, **kwargs):
        """``mode``, ``interfaces``, ``network_namespace`` and ``timeout``
        override ``[aoe_connector]`` (``network_namespace=''``: none).
        """
        super().__init__(root_helper, driver, *args,
                         device_scan_attempts=device_scan_attempts, **kwargs)
        conf = cfg.CONF[GROUP]
        mode = mode if mode is not None else conf.mode
        if mode is not None and mode not in MODES:
            raise exception.InvalidParameterValue(
                err='AoE connector mode must be one of %s, not %r'
                % (', '.join(MODES), mode))
        self.use_multipath = use_multipath
        self.mode = mode
        self.interfaces = list(interfaces if interfaces is not None
                               else conf.interfaces)
        self.network_namespace = (network_namespace
                                  if network_namespace is not None
                                  else conf.network_namespace) or None
        self.timeout = float(timeout if timeout is not None
                             else conf.timeout)
        self.run_dir = os.path.abspath(run_dir)
        self.etherd_dir = etherd_dir
        self.aoe_module_dir = aoe_module_dir
        self.scan_interval = scan_interval
        self._host = host_mod.Host(self._run_as_root)

    def _run_as_root(self, *cmd, **kwargs):
        return self._execute(*cmd, run_as_root=True,
                             root_helper=self._root_helper, **kwargs)

    # -- os-brick's interface -------------------------------------------------

    @staticmethod
    def get_connector_properties(root_helper, *args, **kwargs) -> dict:
        """``{'aoe_macs': [...]}``: the MAC addresses of this host's AoE
        interfaces (``[aoe_connector]``; ``interfaces`` and
        ``network_namespace`` keyword arguments override it). Never fails:
        a host whose interfaces cannot be read reports none, and Cinder's
        AoE driver then says ``aoe_macs`` is missing.
        """
        conf = cfg.CONF[GROUP]
        names = kwargs.get('interfaces')
        netns = kwargs.get('network_namespace')
        names = conf.interfaces if names is None else names
        netns = (conf.network_namespace if netns is None else netns) or None
        execute = kwargs.get('execute') or priv_rootwrap.execute
        try:
            links = host_interfaces(execute, root_helper, names, netns)
        except Exception as exc:
            LOG.warning('Cannot read the AoE interfaces of this host%s: %s; '
                        'AoE volumes cannot attach here',
                        ' (network namespace %s)' % netns if netns else '',
                        exc)
            return {}
        if not links:
            LOG.warning('This host has no AoE interface%s: AoE volumes '
                        'cannot attach here (see [%s] interfaces)',
                        ' in network namespace %s' % netns if netns else '',
                        GROUP)
            return {}
        return {'aoe_macs': [mac for _name, mac in links]}

    def get_search_path(self) -> typing.Optional[str]:
        # aoe.ko's devices; fuse attachments are found per target.
        return self.etherd_dir if self._kernel_loaded() else None

    def get_volume_paths(self, connection_properties: dict,
                         device_info: typing.Optional[dict] = None) -> list:
        props = AoEConnProps.from_dict(connection_properties)
        device = self._kernel_device(props)
        return [device] if device else self._loop_devices(self._paths(props))

    def check_valid_device(self, path, run_as_root: bool = True) -> bool:
        if path is None:
            return False
        if isinstance(path, str):
            return super().check_valid_device(path, run_as_root)
        return volume_io.handle_is_usable(path, 'AoE')

    @utils.trace
    @utils.connect_volume_prepare_result
    @base.synchronized('aoe-connect', external=True)
    def connect_volume(self, connection_properties: dict) -> dict:
        """Attach; connecting what is already attached returns it again."""
        props = AoEConnProps.from_dict(connection_properties)
        mode = self._mode(props)
        if mode == 'file':
            LOG.info('Connecting AoE target %s (volume %s) in file mode',
                     props, props.volume_id)
            client = self._open_client(props)
            handle = aoe_io.AoEVolumeIO(client, read_only=props.read_only,
                                        name=str(props))
            return {'type': 'file', 'path': handle}
        if mode == 'kernel':
            LOG.info('Connecting AoE target %s (volume %s) in kernel mode',
                     props, props.volume_id)
            return {'type': 'block', 'path': self._connect_kernel(props)}
        device = self._attached_device(self._paths(props))
        if device:
            LOG.info('AoE target %s (volume %s) is already connected at %s',
                     props, props.volume_id, device)
        else:
            LOG.info('Connecting AoE target %s (volume %s) in fuse mode',
                     props, props.volume_id)
            device = self._connect_fuse(props)
        return {'type': 'block', 'path': device}

    @utils.trace
    @base.synchronized('aoe-connect', external=True)
    @utils.connect_volume_undo_prepare_result(unlink_after=True)
    def disconnect_volume(self, connection_properties: dict,
                          device_info: typing.Optional[dict],
                          force: bool = False,
                          ignore_errors: bool = False) -> None:
        """Detach whatever this host has for the target, from the
        properties alone; nothing attached is not an error.
        """
        props = AoEConnProps.from_dict(connection_properties)
        errors = exception.ExceptionChainer()
        handle = (device_info or {}).get('path')
        if handle is not None and not isinstance(handle, str):
            with errors.context(force, 'Failed to close %s', handle):
                handle.close()
        device = self._kernel_device(props)
        if device:
            with errors.context(force, 'Failed to flush %s', device):
                self._aoe_flush(props)
        self._clear(props, force, errors)
        if errors:
            LOG.warning('There were errors disconnecting AoE target %s',
                        props)
            if not ignore_errors:
                raise errors

    @utils.trace
    @base.synchronized('aoe-connect', external=True)
    @utils.connect_volume_undo_prepare_result
    def extend_volume(self, connection_properties: dict) -> int:
        """Show the target's new size on this host; return it (bytes)."""
        props = AoEConnProps.from_dict(connection_properties)
        device = self._kernel_device(props)
        if device:
            # aoe.ko asks the target again (ATA IDENTIFY).
            self._aoe_revalidate(props)
            size = host_mod.block_size(device)
            if size is None:
                raise AoEConnectorError(
                    reason='%s (AoE target %s) went away while revalidating'
                    % (device, props))
            return size
        paths = self._paths(props)
        size = self._probe(props)
        loops = self._loop_devices(paths)
        if loops and host_mod.block_size(loops[0]) != size:
            self._refresh_fuse(props, paths, loops[0], size)
        # No device (file mode, or not attached here): nothing to refresh.
        return size

    # -- choices --------------------------------------------------------------

    def _kernel_loaded(self) -> bool:
        return os.path.isdir(self.aoe_module_dir)

    def _mode(self, props: AoEConnProps) -> str:
        return props.aoe_mode or self.mode or (
            'kernel' if self._kernel_loaded() else 'fuse')

    def _interface_names(self) -> typing.List[str]:
        """The AoE interfaces to reach targets on, in order."""
        try:
            links = host_interfaces(self._execute, self._root_helper,
                                    self.interfaces, self.network_namespace)
        except (putils.ProcessExecutionError, OSError, ValueError) as exc:
            raise AoEConnectorError(
                reason='cannot read the AoE interfaces of this host%s: %s'
                % (self._where(), exc))
        if not links:
            raise AoEConnectorError(
                reason='this host has no AoE interface%s (see [%s] '
                'interfaces)' % (self._where(), GROUP))
        return [name for name, _mac in links]

    def _where(self) -> str:
        return (' in network namespace %s' % self.network_namespace
                if self.network_namespace else '')

    # -- our initiator --------------------------------------------------------

    def _open_client(self, props: AoEConnProps):
        """An AoEClient in this process (file mode)."""
        from os_brick_connectors import aoe_bridge
        from storage_engine import errors as engine_errors

        try:
            client, _interface = aoe_bridge.open_client(
                self._interface_names(), props.shelf, props.slot,
                props.target_mac, self.network_namespace, self.timeout)
        except engine_errors.Unavailable as exc:
            raise AoEExportUnavailable(target=str(props), reason=exc)
        except PermissionError as exc:
            raise AoEConnectorError(
                reason='the file mode opens a raw socket in this process, '
                'which needs CAP_NET_RAW%s: %s; use the fuse mode' % (
                    ' and CAP_SYS_ADMIN (network namespace %s)'
                    % self.network_namespace if self.network_namespace
                    else '', exc))
        return client

    def _bridge_args(self, props: AoEConnProps,
                     interfaces: typing.Sequence[str]) -> typing.List[str]:
        args = ['--shelf', str(props.shelf), '--slot', str(props.slot),
                '--timeout', '%g' % self.timeout]
        if props.target_mac:
            args += ['--target-mac', props.target_mac]
        for name in interfaces:
            args += ['--interface', name]
        if self.network_namespace:
            args += ['--netns', self.network_namespace]
        return args

    def _probe(self, props: AoEConnProps) -> int:
        """The target's size, asked by a root helper (any mode)."""
        try:
            out, _err = self._run_as_root(
                *BRIDGE, 'probe',
                *self._bridge_args(props, self._interface_names()))
        except putils.ProcessExecutionError as exc:
            raise AoEExportUnavailable(
                target=str(props),
                reason=(exc.stderr or exc.stdout or str(exc)).strip())
        return int(json.loads(out.strip().splitlines()[-1])['size'])

    # -- kernel mode ----------------------------------------------------------

    def _kernel_path(self, props: AoEConnProps) -> str:
        return os.path.join(self.etherd_dir, props.device)

    def _kernel_device(self, props: AoEConnProps) -> typing.Optional[str]:
        """aoe.ko's device of the target, if it has one (never in a
        network namespace: aoe.ko does not see those).
        """
        if self.network_namespace:
            return None
        path = self._kernel_path(props)
        return path if os.path.exists(path) else None

    def _aoe_discover(self) -> None:
        out, err = self._run_as_root('aoe-discover', check_exit_code=0)
        LOG.debug('aoe-discover: stdout=%s stderr=%s', out, err)

    def _aoe_revalidate(self, props: AoEConnProps) -> None:
        out, err = self._run_as_root('aoe-revalidate', props.device,
                                     check_exit_code=0)
        LOG.debug('aoe-revalidate %s: stdout=%s stderr=%s', props.device,
                  out, err)

    def _aoe_flush(self, props: AoEConnProps) -> None:
        out, err = self._run_as_root('aoe-flush', props.device,
                                     check_exit_code=0)
        LOG.debug('aoe-flush %s: stdout=%s stderr=%s', props.device, out,
                  err)

    def _connect_kernel(self, props: AoEConnProps) -> str:
        """/dev/etherd/eS.L through aoe.ko: revalidate a device that is
        there, else discover; then wait for it, discovering again every
        ``scan_interval`` seconds, ``device_scan_attempts`` times.
        """
        if self.network_namespace:
            raise AoEConnectorError(
                reason='the kernel mode cannot attach AoE target %s: aoe.ko '
                'sees only the interfaces of the host\'s own network '
                'namespace, and [%s] network_namespace is %s; use the fuse '
                'mode' % (props, GROUP, self.network_namespace))
        path = self._kernel_path(props)
        if os.path.exists(path):
            self._aoe_revalidate(props)
        else:
            self._aoe_discover()
        tries = 0
        while not os.path.exists(path):
            if tries >= self.device_scan_attempts:
                raise exception.VolumeDeviceNotFound(device=path)
            LOG.info('AoE device %s is not there yet; discovering again '
                     '(try %d of %d)', path, tries + 1,
                     self.device_scan_attempts)
            self._aoe_discover()
            tries += 1
            host_mod.poll(lambda: os.path.exists(path), self.scan_interval)
        if tries:
            LOG.debug('Found AoE device %s after %d discoveries', path,
                      tries)
        return path

    # -- fuse mode: host state ------------------------------------------------

    def _paths(self, props: AoEConnProps) -> StatePaths:
        return StatePaths.for_target(self.run_dir, props)

    def _loop_devices(self, paths: StatePaths) -> typing.List[str]:
        if 'disk' not in paths.entries():
            return []
        return self._host.loop_devices(paths.disk)

    @staticmethod
    def _bridge_pid(paths: StatePaths) -> typing.Optional[int]:
        """The recorded bridge, if it is still the process running."""
        pid = host_mod.read_pid(paths.bridge_pidfile)
        return pid if host_mod.process_running(pid, None,
                                               paths.socket) else None

    @staticmethod
    def _nbdfuse_pid(paths: StatePaths) -> typing.Optional[int]:
        pid = host_mod.read_pid(paths.nbdfuse_pidfile)
        return pid if host_mod.process_running(pid, 'nbdfuse',
                                               paths.disk) else None

    def _serving(self, paths: StatePaths) -> bool:
        """The bridge and nbdfuse both run, and the file is mounted."""
        pid = self._nbdfuse_pid(paths)
        return bool(pid) and bool(self._bridge_pid(paths)) and \
            host_mod.read_pid(paths.nbdfuse_ready) == pid and \
            host_mod.mounted(paths.disk)

    def _attached_device(self, paths: StatePaths) -> typing.Optional[str]:
        if self._serving(paths):
            loops = self._host.loop_devices(paths.disk)
            if loops:
                return loops[0]
        return None

    # -- fuse mode: setting up ------------------------------------------------

    def _connect_fuse(self, props: AoEConnProps) -> str:
        paths = self._paths(props)
        # A serving bridge and nbdfuse without a loop device are used.
        if not self._serving(paths):
            # Leftovers of an attachment whose processes are gone, if any.
            self._clear(props)
            self._start_bridge(props, paths)
            self._start_nbdfuse(props, paths)
        try:
            return self._host.loop_attach(paths.disk, props.read_only)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._clear(props, force=True)

    def _start_bridge(self, props: AoEConnProps, paths: StatePaths) -> None:
        """The bridge serving the target on ``paths.socket``, detached;
        returns once it listens. A target that does not answer (not
        exported, or not to this host's MACs) makes it exit: that is
        reported with its reason, and everything undone.
        """
        interfaces = self._interface_names()
        command = [*BRIDGE, 'serve', *self._bridge_args(props, interfaces),
                   '--socket', paths.socket, '--export', props.device,
                   '--ready', paths.bridge_ready]
        if props.read_only:
            command.append('--read-only')
        try:
            self._host.make_dir(paths.dir)
            pid = self._host.spawn(command, paths.bridge_log,
                                   paths.bridge_pidfile)
            LOG.debug('Started AoE bridge %d for target %s', pid, props)

            def ready():
                if host_mod.read_pid(paths.bridge_ready) == pid and \
                        os.path.exists(paths.socket):
                    return True
                if not host_mod.process_running(pid, None, paths.socket):
                    raise AoEExportUnavailable(
                        target=str(props),
                        reason=paths.log_tail(paths.bridge_log) or
                        'the AoE bridge exited with no message')
                return False

            # The bridge tries each interface for up to the timeout.
            limit = self.timeout * (len(interfaces) + 1)
            if not host_mod.poll(ready, limit):
                raise AoEConnectorError(
                    reason='the AoE bridge of target %s did not start '
                    'serving within %ds: %s' % (
                        props, limit, paths.log_tail(paths.bridge_log)))
        except Exception:
            with excutils.save_and_reraise_exception():
                self._clear(props, force=True)

    def _start_nbdfuse(self, props: AoEConnProps, paths: StatePaths) -> None:
        """nbdfuse serving the bridge's export as ``paths.disk``,
        detached; returns once the file is mounted.
        """
        ro = ['-r'] if props.read_only else []
        uri = 'nbd+unix:///%s?socket=%s' % (
            urllib.parse.quote(props.device, safe=''),
            urllib.parse.quote(paths.socket, safe='/'))
        command = ['nbdfuse', '-P', paths.nbdfuse_ready, *ro, paths.disk,
                   uri]
        try:
            self._host.make_file(paths.disk)
            pid = self._host.spawn(command, paths.nbdfuse_log,
                                   paths.nbdfuse_pidfile)
            LOG.debug('Started nbdfuse %d for AoE target %s', pid, props)

            def ready():
                if host_mod.read_pid(paths.nbdfuse_ready) == pid and \
                        host_mod.mounted(paths.disk):
                    return True
                if not host_mod.process_running(pid, 'nbdfuse', paths.disk):
                    raise AoEConnectorError(
                        reason='nbdfuse exited while attaching AoE target '
                        '%s: %s' % (props,
                                    paths.log_tail(paths.nbdfuse_log) or
                                    'no message'))
                return False

            if not host_mod.poll(ready, self.timeout):
                raise AoEConnectorError(
                    reason='nbdfuse did not mount AoE target %s within %ds: '
                    '%s' % (props, self.timeout,
                            paths.log_tail(paths.nbdfuse_log)))
        except Exception:
            with excutils.save_and_reraise_exception():
                self._clear(props, force=True)

    def _refresh_fuse(self, props: AoEConnProps, paths: StatePaths,
                      device: str, size: int) -> None:
        """Show a grown target on its loop device.

        The bridge's initiator and nbdfuse learn the size once, when they
        connect: the loop device is unbound, both are started again, and
        the same device bound to the new file. That needs the device
        closed: a mounted, held or swapped-on device is refused before
        anything is touched.
        """
        why = host_mod.block_in_use(device)
        if why:
            raise AoEDeviceBusy(
                device=device, target=str(props),
                reason='%s; unmount it to show the new size %d' % (why, size))
        self._host.flush_buffers(device)
        self._host.loop_detach(device)
        if host_mod.loop_bound(device):
            raise AoEDeviceBusy(
                device=device, target=str(props),
                reason='a process has it open, so it keeps the old size and '
                'is released when closed; connect again then to see %d '
                'bytes' % size)
        self._host.unmount_fuse(paths.disk)
        self._stop(paths, 'nbdfuse', self._nbdfuse_pid, unmounted=True)
        self._stop(paths, 'AoE bridge', self._bridge_pid, unmounted=False)
        self._start_bridge(props, paths)
        self._start_nbdfuse(props, paths)
        try:
            self._host.loop_attach(paths.disk, props.read_only, device)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._clear(props, force=True)
        if host_mod.block_size(device) != size:
            raise AoEConnectorError(
                reason='%s shows %s bytes of AoE target %s, not %d'
                % (device, host_mod.block_size(device), props, size))

    # -- fuse mode: taking it down --------------------------------------------

    def _stop(self, paths: StatePaths, what: str,
              find: typing.Callable[[StatePaths], typing.Optional[int]],
              unmounted: bool) -> None:
        """Stop a recorded process of ``paths`` after checking it is ours.

        nbdfuse exits by itself once unmounted (``unmounted``: wait for
        that first); it is signalled if it lingers. The bridge stops on
        SIGTERM.
        """
        pid = find(paths)
        if not pid:
            return
        signals = (None, 'TERM', 'KILL') if unmounted else ('TERM', 'KILL')
        for signal_name in signals:
            if signal_name:
                if signal_name == 'KILL' or what == 'nbdfuse':
                    LOG.warning('Sending SIG%s to %s %d (AoE state %s)',
                                signal_name, what, pid, paths.dir)
                self._host.kill(pid, signal_name)
            if host_mod.poll(lambda: find(paths) != pid, self.timeout / 3):
                return
        raise AoEConnectorError(reason='%s %d (%s) does not exit'
                                % (what, pid, paths.dir))

    def _clear(self, props: AoEConnProps, force: bool = False,
               errors: typing.Optional[exception.ExceptionChainer] = None
               ) -> None:
        """Undo whatever the state directory says is attached.

        Without ``force`` the first failure is raised and what is under it
        stays (nbdfuse and the bridge are not pulled from under a loop
        device still in use); with it, failures are gathered in ``errors``
        and the rest goes on.
        """
        if errors is None:
            errors = exception.ExceptionChainer()
        paths = self._paths(props)
        if not os.path.isdir(paths.dir):
            return
        serving = self._serving(paths)
        loops = []
        with errors.context(force, 'Failed to list loop devices of %s',
                            paths.disk):
            loops = self._loop_devices(paths)
        for loop in loops:
            with errors.context(force, 'Failed to detach %s', loop):
                if serving:
                    # Nothing to flush to when the bridge is gone.
                    self._host.flush_buffers(loop)
                self._host.loop_detach(loop)
                if host_mod.loop_bound(loop):
                    raise AoEDeviceBusy(
                        device=loop, target=str(props),
                        reason='a process has it open; it is released when '
                        'closed')
        unmounted = False
        if host_mod.mounted(paths.disk):
            with errors.context(force, 'Failed to unmount %s', paths.disk):
                self._host.unmount_fuse(paths.disk)
                unmounted = True
        with errors.context(force, 'Failed to stop nbdfuse of %s',
                            paths.dir):
            self._stop(paths, 'nbdfuse', self._nbdfuse_pid, unmounted)
        if host_mod.mounted(paths.disk):
            return      # forced past a mount that stayed: keep its files
        with errors.context(force, 'Failed to stop the AoE bridge of %s',
                            paths.dir):
            self._stop(paths, 'AoE bridge', self._bridge_pid, False)
        with errors.context(force, 'Failed to remove %s', paths.dir):
            self._host.remove_files(*paths.all_files())
            self._host.remove_dir(paths.dir)
