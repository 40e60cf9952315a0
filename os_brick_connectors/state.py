"""The state directory of one attachment on the host.

Everything a connector leaves on the host for one export lives in
``<run_dir>/<name>/``, where the name comes from the connection properties
alone, so that ``disconnect_volume`` finds it all whatever connected:

``disk``
    The file nbdfuse mounts over; the loop device is bound to it.
``nbdfuse.pid``, ``nbdfuse.ready``, ``nbdfuse.log``
    nbdfuse's PID (recorded when it is started), the PID again (written by
    nbdfuse once mounted), its output.
``nbd-device``
    The /dev/nbdN of a kernel NBD attachment.
``nbd.sock``, ``bridge.pid``, ``bridge.ready``, ``bridge.log``
    The AoE bridge's Unix socket (nbdfuse connects to it), PID, PID once
    listening, output.
"""

import dataclasses
import hashlib
import os
import re
import typing

from os_brick_connectors import detached

# Names used as they are for the directory; others are hashed.
_PLAIN_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,127}')


@dataclasses.dataclass(frozen=True)
class StatePaths:
    """The files of one attachment's state directory."""

    dir: str

    @classmethod
    def for_export(cls, run_dir: str, name: str) -> 'StatePaths':
        """The directory of export ``name``: the name itself when it is a
        plain file name, else a hash of it.
        """
        plain = _PLAIN_NAME.fullmatch(name)
        return cls(os.path.join(run_dir, name if plain else
                                'sha256-' + hashlib.sha256(
                                    name.encode()).hexdigest()))

    @classmethod
    def for_target(cls, run_dir: str, props) -> 'StatePaths':
        """The directory of the export ``props`` (connection properties
        parsed by a connector) name with their ``state_name``.
        """
        return cls.for_export(run_dir, props.state_name)

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    disk = property(lambda self: self._file('disk'))
    nbd_device = property(lambda self: self._file('nbd-device'))
    socket = property(lambda self: self._file('nbd.sock'))

    @property
    def nbdfuse(self) -> detached.Helper:
        """nbdfuse, serving the export as ``disk``."""
        return detached.Helper(
            'nbdfuse', 'nbdfuse', self.disk, self._file('nbdfuse.pid'),
            self._file('nbdfuse.ready'), self._file('nbdfuse.log'))

    @property
    def bridge(self) -> detached.Helper:
        """The AoE bridge, serving the target on ``socket`` (a Python
        program: any process name).
        """
        return detached.Helper(
            'AoE bridge', None, self.socket, self._file('bridge.pid'),
            self._file('bridge.ready'), self._file('bridge.log'),
            stops_on_term=True)

    def all_files(self) -> typing.List[str]:
        """Every file the directory may hold: what is removed with it."""
        helpers = [self.nbdfuse, self.bridge]
        return [self.disk, self.nbd_device, self.socket] + [
            path for helper in helpers for path in helper.files()]

    def entries(self) -> typing.List[str]:
        # Listing, not stat(): only root may stat the FUSE-mounted file.
        try:
            return os.listdir(self.dir)
        except FileNotFoundError:
            return []
