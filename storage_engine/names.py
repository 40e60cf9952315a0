"""Validation of the names and ids the engine accepts from its callers."""

import re
import uuid

from storage_engine import errors

# LVM's alphabet for names, with a leading letter or digit; 128 characters
# hold any Cinder name ("volume-" + a UUID) with room to spare.
_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z')


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
