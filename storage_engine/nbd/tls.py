"""TLS for NBD: X.509 certificates, client certificates as identity.

As with qemu-nbd and nbdkit, the server presents a certificate, and with a
CA configured it requires a client certificate signed by that CA: a client
with none, or with one from another CA, fails the handshake and learns
nothing. The names a client certificate proves (its subject commonName and
its subjectAltName DNS and IP entries) are the identities export access
lists name.

TLS-PSK, which qemu and nbdkit also offer, needs ``SSLContext.
set_psk_server_callback``, new in Python 3.13; on Python 3.11 it is not
available, and only certificates are supported.
"""

import dataclasses
import ssl
import typing


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    cert_file: str
    key_file: str
    ca_file: typing.Optional[str] = None     # verify client certificates

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.ca_file:
            ctx.load_verify_locations(self.ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def peer_identities(ssl_object) -> frozenset:
    """Names the verified client certificate proves (empty without one)."""
    if ssl_object is None:
        return frozenset()
    cert = ssl_object.getpeercert()
    if not cert:
        return frozenset()
    names = set()
    for rdn in cert.get('subject', ()):
        for key, value in rdn:
            if key == 'commonName':
                names.add(value)
    for kind, value in cert.get('subjectAltName', ()):
        if kind in ('DNS', 'IP Address', 'URI'):
            names.add(value)
    return frozenset(names)
