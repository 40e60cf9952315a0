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
    /dev/loopN, as for NBD (fuse_attachment.py, where the bridge is the
    upstream of nbdfuse). Both run detached (spawn.py) and outlive the
    service.
``file``
    No device: a file object over our initiator in this process
    (:class:`os_brick_connectors.aoe_io.AoEVolumeIO`). The process needs
    CAP_NET_RAW (and CAP_SYS_ADMIN with a network namespace).

``aoe_mode`` in the connection properties wins over the connector's
``mode``, which wins over the default.

State on the host
-----------------
A fuse attachment keeps everything in ``<run_dir>/e<shelf>.<slot>-<target
MAC>/`` (``run_dir``: /run/os-brick-aoe), laid out as state.py describes:
the bridge's socket and files, nbdfuse's, and the file the loop device is
bound to. The name comes from the connection properties alone, so
``disconnect_volume`` finds everything whatever mode connected.
"""

import dataclasses
import json
import os
import sys
import typing
import urllib.parse

from oslo_concurrency import processutils as putils
from oslo_config import cfg
from oslo_log import log as logging

from os_brick import exception
from os_brick import initiator
from os_brick.privileged import rootwrap as priv_rootwrap

from os_brick_connectors import aoe_io
from os_brick_connectors import engine_connector
from os_brick_connectors import errors
from os_brick_connectors import fuse_attachment
from os_brick_connectors import host as host_mod
from os_brick_connectors import properties
from os_brick_connectors import state
from storage_engine import names as engine_names

LOG = logging.getLogger(__name__)

MODES = engine_connector.MODES
ACCESS_MODES = engine_connector.ACCESS_MODES
DEFAULT_RUN_DIR = '/run/os-brick-aoe'
ETHERD_DIR = '/dev/etherd'
AOE_MODULE_DIR = '/sys/module/aoe'
DEFAULT_TIMEOUT = engine_connector.DEFAULT_TIMEOUT
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

# The connector's errors (errors.py), under the names callers know.
AoEConnectorError = errors.AoEConnectorError
AoEExportUnavailable = errors.AoEExportUnavailable
AoEDeviceBusy = errors.AoEDeviceBusy
# One StatePaths for every connector (state.py); callers find it here.
StatePaths = state.StatePaths


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
            mac = engine_names.normalise_mac((link or {}).get('address'))
            if mac is None:
                LOG.warning('AoE interface %s (in [%s] interfaces) is not an '
                            'Ethernet interface of %s', name, GROUP,
                            'network namespace %s' % netns if netns
                            else 'this host')
                continue
            found.append((name, mac))
        return found
    return [(name, engine_names.normalise_mac(link['address']))
            for name, link in links.items()
            if link.get('link_type') == 'ether'
            and 'UP' in link.get('flags', ())
            and 'LOOPBACK' not in link.get('flags', ())
            and engine_names.normalise_mac(link.get('address'))]


# -- connection properties and host state ------------------------------------

@dataclasses.dataclass(frozen=True)
class AoEConnProps(properties.ConnProps):
    """The connection properties of one export, validated."""

    shelf: int
    slot: int
    target_mac: typing.Optional[str] = None
    target_interface: typing.Optional[str] = None
    aoe_mode: typing.Optional[str] = None

    @classmethod
    def from_dict(cls, props) -> 'AoEConnProps':
        read = properties.Reader('AoE', props)
        mac = read.get('target_mac')
        if mac is not None:
            mac = engine_names.normalise_mac(mac)
            if mac is None:
                read.problem('target_mac must be a MAC address, not %r'
                             % (read.get('target_mac'),))
        return read.build(
            cls,
            shelf=read.integer('target_shelf', 0, MAX_SHELF),
            slot=read.integer('target_lun', 0, MAX_SLOT),
            target_mac=mac,
            target_interface=read.get('target_interface'),
            access_mode=read.choice('access_mode', ACCESS_MODES, 'rw'),
            aoe_mode=read.choice('aoe_mode', MODES),
            volume_id=read.get('volume_id'),
            export_id=read.get('export_id'))

    @property
    def device(self) -> str:
        """The AoE name of the target: e<shelf>.<slot>."""
        return 'e%d.%d' % (self.shelf, self.slot)

    @property
    def state_name(self) -> str:
        """What names the target's state directory (state.py)."""
        name = self.device
        if self.target_mac:
            name += '-' + self.target_mac.replace(':', '')
        return name

    @property
    def subject(self) -> errors.Subject:
        """The target, as the connector's errors name it."""
        return errors.Subject(errors.AOE, 'AoE target %s' % self,
                              {'target': str(self)})

    def __str__(self):
        return '%s (%s)' % (self.device, self.target_mac or 'any MAC')


class AoEConnector(engine_connector.EngineConnector):
    """Attach storage-engine AoE exports: kernel, fuse or file mode."""

    protocol = 'AoE'
    lock = 'aoe-connect'
    props_class = AoEConnProps
    default_run_dir = DEFAULT_RUN_DIR

    def __init__(self, root_helper, driver=None, use_multipath=False,
                 device_scan_attempts=initiator.DEVICE_SCAN_ATTEMPTS_DEFAULT,
                 *args, mode: typing.Optional[str] = None,
                 interfaces: typing.Optional[typing.Sequence[str]] = None,
                 network_namespace: typing.Optional[str] = None,
                 timeout: typing.Optional[float] = None,
                 etherd_dir: str = ETHERD_DIR,
                 aoe_module_dir: str = AOE_MODULE_DIR,
                 scan_interval: float = KERNEL_SCAN_INTERVAL, **kwargs):
        """``mode``, ``interfaces``, ``network_namespace`` and ``timeout``
        override ``[aoe_connector]`` (``network_namespace=''``: none).
        """
        conf = cfg.CONF[GROUP]
        super().__init__(
            root_helper, driver, use_multipath, device_scan_attempts, *args,
            mode=mode if mode is not None else conf.mode,
            timeout=timeout if timeout is not None else conf.timeout,
            **kwargs)
        self.interfaces = list(interfaces if interfaces is not None
                               else conf.interfaces)
        self.network_namespace = (network_namespace
                                  if network_namespace is not None
                                  else conf.network_namespace) or None
        self.etherd_dir = etherd_dir
        self.aoe_module_dir = aoe_module_dir
        self.scan_interval = scan_interval

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

    def _open_handle(self, props: AoEConnProps) -> aoe_io.AoEVolumeIO:
        return aoe_io.AoEVolumeIO(self._open_client(props),
                                  read_only=props.read_only, name=str(props))

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

    def _size(self, props: AoEConnProps) -> int:
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

    def _attached_device(self, props: AoEConnProps,
                         mode: str) -> typing.Optional[str]:
        # The kernel mode always connects: aoe-revalidate is how aoe.ko
        # asks an attached target again.
        return None if mode == 'kernel' else self._fuse(props).device()

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

    def _detach_kernel(self, props: AoEConnProps, device: str) -> None:
        self._aoe_flush(props)

    def _extend_kernel(self, props: AoEConnProps, device: str) -> int:
        # aoe.ko asks the target again (ATA IDENTIFY).
        self._aoe_revalidate(props)
        size = host_mod.block_size(device)
        if size is None:
            raise AoEConnectorError(
                reason='%s (AoE target %s) went away while revalidating'
                % (device, props))
        return size

    # -- fuse mode ------------------------------------------------------------

    def _fuse(self, props: AoEConnProps) -> fuse_attachment.FuseAttachment:
        """nbdfuse and a loop device over the bridge's NBD export."""
        paths = self._paths(props)
        uri = 'nbd+unix:///%s?socket=%s' % (
            urllib.parse.quote(props.device, safe=''),
            urllib.parse.quote(paths.socket, safe='/'))
        bridge = fuse_attachment.Upstream(
            paths.bridge, lambda: self._start_bridge(props, paths))
        return fuse_attachment.FuseAttachment(
            self._host, paths, props.subject, [uri], props.read_only,
            self.timeout, upstream=bridge)

    def _start_bridge(self, props: AoEConnProps, paths: StatePaths) -> None:
        """The bridge serving the target on ``paths.socket``, detached;
        returns once it listens. A target that does not answer (not
        exported, or not to this host's MACs) makes it exit: that is
        reported with its reason.
        """
        interfaces = self._interface_names()
        command = [*BRIDGE, 'serve', *self._bridge_args(props, interfaces),
                   '--socket', paths.socket, '--export', props.device,
                   '--ready', paths.bridge.ready]
        if props.read_only:
            command.append('--read-only')
        # The bridge tries each interface for up to the timeout.
        limit = self.timeout * (len(interfaces) + 1)
        paths.bridge.start(
            self._host, command, lambda: os.path.exists(paths.socket), limit,
            exited=lambda tail: AoEExportUnavailable(
                target=str(props),
                reason=tail or 'the AoE bridge exited with no message'),
            late=lambda tail: AoEConnectorError(
                reason='the AoE bridge of target %s did not start serving '
                'within %ds: %s' % (props, limit, tail)),
            subject='AoE target %s' % props)
