"""Validation of the names and ids the engine accepts from its callers.

A leaf module (nothing heavier than the engine's errors): the Cinder
drivers and the os-brick connectors use it too, for MAC addresses.
"""

import re
import typing
import uuid

from storage_engine import errors

# LVM's alphabet for names, with a leading letter or digit; 128 characters
# hold any Cinder name ("volume-" + a UUID) with room to spare.
_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z')
# Six octets in hex, with one kind of separator throughout.
_MAC = re.compile(r'[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}',
                  re.IGNORECASE)


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def check_name(name, what: str = 'name') -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise errors.InvalidName(
            '%s %r is invalid: use 1-128 letters, digits, ".", "_", "+" or '
            '"-", starting with a letter or digit' % (what, name), name=name)
    if is_uuid(name):
        # Ids and names share one lookup; a name that parses as a UUID
        # could shadow another volume's id.
        raise errors.InvalidName('%s %r must not be a UUID' % (what, name),
                                 name=name)
    return name


def check_id(value) -> str:
    """Canonical form of a caller-supplied UUID."""
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise errors.InvalidArgument('%r is not a valid UUID' % (value,),
                                     id=value)


def new_id() -> str:
    return str(uuid.uuid4())


# -- MAC addresses (AoE initiators and targets) -------------------------------

def normalise_mac(value) -> typing.Optional[str]:
    """``value`` as a MAC address in lower-case colon form, or None if it
    is not one. Any case and ``:`` or ``-`` separators are accepted, and
    white space around it.
    """
    text = value.strip() if isinstance(value, str) else ''
    return text.lower().replace('-', ':') if _MAC.fullmatch(text) else None


def check_mac(host) -> str:
    """``host`` as a unicast MAC address in lower-case colon form: an
    initiator an AoE export admits.

    Group (multicast, broadcast) and all-zero addresses are refused, since
    they name no one initiator.
    """
    mac = normalise_mac(host)
    if mac is None:
        raise errors.InvalidArgument(
            'host %r is not a MAC address: AoE exports admit initiators '
            'by MAC address, like 52:54:00:12:34:56' % (host,), host=host)
    octets = bytes.fromhex(mac.replace(':', ''))
    if octets == bytes(6):
        raise errors.InvalidArgument(
            'host %r is the all-zero MAC address, which names no '
            'initiator' % (host,), host=host)
    if octets == b'\xff' * 6:
        raise errors.InvalidArgument(
            'host %r is the broadcast MAC address; give each initiator\'s '
            'own MAC address' % (host,), host=host)
    if octets[0] & 1:
        raise errors.InvalidArgument(
            'host %r is a multicast MAC address; give each initiator\'s '
            'own (unicast) MAC address' % (host,), host=host)
    return mac
