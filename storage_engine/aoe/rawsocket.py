"""Raw Ethernet sockets for AoE, optionally inside a network namespace.

AoE is not IP: a target or initiator reads and writes whole Ethernet frames
of ethertype 0x88A2 on one interface, through an AF_PACKET socket (which
needs CAP_NET_RAW).

The interface may live in another network namespace than the process (an
operator can keep the storage segment in a namespace of its own; the tests
use namespaces joined by a veth pair). A socket belongs to the namespace it
was created in, for its whole life, so :func:`open_packet_socket` creates
it from a short-lived thread that first joins the namespace with setns(2):
only that thread moves, and the rest of the process (its HTTP API, its
RabbitMQ and database connections) stays where it is.
"""

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import threading
import typing

from storage_engine.aoe import wire

NETNS_DIR = '/var/run/netns'
CLONE_NEWNET = 0x40000000
SIOCGIFMTU = 0x8921
SIOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
#: receive buffer asked for (as root, SO_RCVBUFFORCE goes past rmem_max)
RCVBUF = 8 << 20

_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'setns: %s' % os.strerror(err))


def netns_path(name: str) -> str:
    """The file of network namespace ``name`` (as ``ip netns`` names it)."""
    if not name or '/' in name or name in ('.', '..'):
        raise ValueError('invalid network namespace name %r' % (name,))
    return os.path.join(NETNS_DIR, name)


def in_netns(netns: typing.Optional[str], fn: typing.Callable, *args):
    """Call ``fn(*args)`` in network namespace ``netns`` (None: here)."""
    if netns is None:
        return fn(*args)
    path = netns_path(netns)
    result: list = []

    def run():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            result.append(OSError(exc.errno, 'network namespace %s: %s'
                                  % (netns, exc.strerror)))
            return
        try:
            _setns(fd)
            result.append((fn(*args),))
        except BaseException as exc:        # handed to the caller
            result.append(exc)
        finally:
            os.close(fd)

    # A fresh thread per call: it dies in the namespace, and never runs
    # anything else there.
    thread = threading.Thread(target=run, name='netns-%s' % netns)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0][0]


def _open(interface: str) -> typing.Tuple[socket.socket, bytes, int]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                         socket.htons(wire.ETH_P_AOE))
    try:
        sock.bind((interface, wire.ETH_P_AOE))
        mac = sock.getsockname()[4]
        ifreq = struct.pack('16si12x', interface.encode(), 0)
        mtu = struct.unpack_from(
            '16si', fcntl.ioctl(sock.fileno(), SIOCGIFMTU, ifreq))[1]
        try:
            sock.setsockopt(SIOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass                # older kernels: outgoing frames filtered
        for opt in (getattr(socket, 'SO_RCVBUFFORCE', 33),
                    socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
                break
            except OSError:
                continue
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, bytes(mac), mtu


def open_packet_socket(interface: str, netns: typing.Optional[str] = None
                       ) -> typing.Tuple[socket.socket, bytes, int]:
    """A non-blocking AF_PACKET socket bound to ``interface`` for AoE
    frames, with the interface's MAC address and MTU.

    :raises OSError: no such interface or namespace, or no CAP_NET_RAW.
    """
    if not interface or len(interface) > 15 or '/' in interface:
        raise ValueError('invalid interface name %r' % (interface,))
    return in_netns(netns, _open, interface)
