"""A blocking NBD client over the sans-IO client core.

Small on purpose: one request at a time over a TCP or Unix socket, TLS with
X.509 certificates, structured replies and ``base:allocation``. It is what
the fuzz tests use as a well-behaved client and what the os-brick connector
wraps as a file-like handle for cinder-volume's own copies.
"""

import socket
import ssl
import typing

from storage_engine.nbd import client_protocol as cp
from storage_engine.nbd import constants as const


class NBDError(Exception):
    """The server refused a request or an option (``.error`` is its code)."""

    def __init__(self, message: str, error: int = const.NBD_EIO):
        super().__init__(message)
        self.error = error


class NBDClient:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.core = cp.ClientConnection()
        self.size = 0
        self.flags = 0

    # -- connecting ----------------------------------------------------------

    @classmethod
    def connect(cls, export: str, host: str = '127.0.0.1', port: int = 10809,
                unix_path: str = None, tls: ssl.SSLContext = None,
                server_hostname: str = None,
                timeout: float = 30.0) -> 'NBDClient':
        if unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(unix_path)
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock)
        try:
            client._handshake(export, tls, server_hostname or host)
        except BaseException:
            sock.close()
            raise
        return client

    def _wait(self, *kinds):
        """Next event of one of ``kinds`` (reading as needed)."""
        while True:
            event = self.core.next_event()
            if event is cp.NEED_DATA:
                data = self.sock.recv(1 << 20)
                self.core.receive_data(data)
                if not data:
                    raise NBDError('server closed the connection',
                                   const.NBD_ESHUTDOWN)
                continue
            if isinstance(event, cp.ProtocolError):
                raise NBDError('protocol error: %s' % event.message)
            if isinstance(event, cp.OptionError):
                raise NBDError('option refused: %s (0x%x)'
                               % (event.message, event.error), event.error)
            if isinstance(event, cp.CommandFailed):
                raise NBDError('request failed: %s (%d)'
                               % (event.message, event.error), event.error)
            if isinstance(event, kinds):
                return event

    def _handshake(self, export, tls, hostname):
        self._wait(cp.ServerGreeting)
        self.sock.sendall(self.core.send_client_flags())
        if tls is not None:
            self.sock.sendall(self.core.opt_starttls())
            self._wait(cp.OptionAck)
            self.sock = tls.wrap_socket(self.sock, server_hostname=hostname)
            self.core.tls_established()
        self.sock.sendall(self.core.opt_structured_reply())
        self._wait(cp.OptionAck)
        self.sock.sendall(self.core.opt_set_meta_context(
            export, [const.NBD_META_BASE_ALLOCATION]))
        self._wait(cp.OptionAck)
        self.sock.sendall(self.core.opt_go(export))
        ready = self._wait(cp.TransmissionReady)
        self.size = ready.export_size
        self.flags = ready.transmission_flags

    @staticmethod
    def list_exports(host: str = '127.0.0.1', port: int = 10809,
                     tls: ssl.SSLContext = None) -> typing.List[str]:
        sock = socket.create_connection((host, port), timeout=30)
        client = NBDClient(sock)
        try:
            client._wait(cp.ServerGreeting)
            sock.sendall(client.core.send_client_flags())
            if tls is not None:
                sock.sendall(client.core.opt_starttls())
                client._wait(cp.OptionAck)
                client.sock = tls.wrap_socket(sock, server_hostname=host)
                client.core.tls_established()
            client.sock.sendall(client.core.opt_list())
            names = []
            while True:
                event = client._wait(cp.ServerExport, cp.OptionAck)
                if isinstance(event, cp.OptionAck):
                    return names
                names.append(event.name)
        finally:
            client.sock.close()

    # -- requests -------------------------------------------------------------

    def _request(self, pair, kinds):
        _handle, data = pair
        if isinstance(data, list):
            self.sock.sendall(b''.join(bytes(d) for d in data))
        else:
            self.sock.sendall(data)
        return self._wait(*kinds)

    def pread(self, length: int, offset: int) -> bytes:
        event = self._request(self.core.read(offset, length),
                              (cp.ReadComplete,))
        return bytes(event.data)

    def pwrite(self, data, offset: int, fua: bool = False) -> None:
        flags = const.NBD_CMD_FLAG_FUA if fua else 0
        self._request(self.core.write(offset, data, flags),
                      (cp.CommandComplete,))

    def flush(self) -> None:
        self._request(self.core.flush(), (cp.CommandComplete,))

    def trim(self, length: int, offset: int) -> None:
        self._request(self.core.trim(offset, length), (cp.CommandComplete,))

    def zero(self, length: int, offset: int, may_trim: bool = True) -> None:
        flags = 0 if may_trim else const.NBD_CMD_FLAG_NO_HOLE
        self._request(self.core.write_zeroes(offset, length, flags),
                      (cp.CommandComplete,))

    def block_status(self, length: int, offset: int):
        """``[(length, flags), ...]`` for ``base:allocation``."""
        event = self._request(self.core.block_status(offset, length),
                              (cp.BlockStatusComplete,))
        return list(event.extents.get(const.NBD_META_BASE_ALLOCATION, ()))

    def close(self) -> None:
        try:
            self.sock.sendall(self.core.disconnect())
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
