"""Sizes as operators write them ("10G", "512M", "4096")."""

import re

from storage_engine import errors

Ki = 1024
Mi = Ki * 1024
Gi = Mi * 1024
Ti = Gi * 1024

_SUFFIX = {'': 1, 'K': Ki, 'M': Mi, 'G': Gi, 'T': Ti, 'P': Ti * 1024}
_SIZE = re.compile(r'\s*(\d+)\s*(?:([KMGTP])(?:i?B)?|(B))?\s*\Z',
                   re.IGNORECASE)


def parse_size(text) -> int:
    """Bytes for ``text``; suffixes are binary (K = 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise errors.InvalidSize('size %d is negative' % text)
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise errors.InvalidSize('size %r is not understood; write e.g. '
                                 '10G, 512M or 4096' % (text,))
    return int(m.group(1)) * _SUFFIX[(m.group(2) or '').upper()]


def format_size(n: int) -> str:
    for suffix in ('P', 'T', 'G', 'M', 'K'):
        unit = _SUFFIX[suffix]
        if n >= unit and n % unit == 0:
            return '%d%siB' % (n // unit, suffix)
    return '%dB' % n
