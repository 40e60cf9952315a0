"""Connection properties: read once, every problem named at once.

Each connector parses ``connection_info['data']`` once, into a frozen
dataclass of its own (``NBDConnProps``, ``AoEConnProps``) based on
:class:`ConnProps`, through a :class:`Reader`: the reader checks each key
as it is read and gathers what is wrong, and :meth:`Reader.build` refuses
them all in one ``InvalidParameterValue``, so a bad driver or a bad
hand-made attachment is fixed in one go.
"""

import dataclasses
import typing

from os_brick import exception


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnProps:
    """What the properties of every export have besides its address: how
    it is attached, and the ids of its volume and of the export (for
    messages).
    """

    access_mode: str = 'rw'
    volume_id: typing.Optional[str] = None
    export_id: typing.Optional[str] = None

    @property
    def read_only(self) -> bool:
        return self.access_mode == 'ro'


class Reader:
    """The connection properties ``props`` of a ``protocol`` connector."""

    def __init__(self, protocol: str, props):
        if not isinstance(props, dict):
            raise exception.InvalidParameterValue(
                err='%s connection properties must be a dict, not %r'
                % (protocol, props))
        self.protocol = protocol
        self.props = props
        self.problems: typing.List[str] = []

    def get(self, key: str):
        """A value taken as it is."""
        return self.props.get(key)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def text(self, key: str, required: bool = False,
             choices: typing.Optional[typing.Sequence[str]] = None,
             default: typing.Optional[str] = None) -> typing.Optional[str]:
        """A non-empty string (one of ``choices``, if given)."""
        value = self.props.get(key)
        if value is None:
            if required:
                self.problem('%s is missing' % key)
            return default
        if not isinstance(value, str) or not value:
            self.problem('%s must be a non-empty string, not %r'
                         % (key, value))
        elif choices and value not in choices:
            self.problem('%s must be one of %s, not %r'
                         % (key, ', '.join(choices), value))
        return value

    def choice(self, key: str, choices: typing.Sequence[str],
               default: typing.Optional[str] = None):
        """One of ``choices``."""
        value = self.props.get(key)
        if value is None:
            return default
        if value not in choices:
            self.problem('%s must be one of %s, not %r'
                         % (key, ', '.join(choices), value))
        return value

    def integer(self, key: str, low: int, high: int):
        """An integer from ``low`` to ``high``; a string of digits is
        taken for its number (JSON and hand-made properties have them).
        """
        value = self.props.get(key)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if value is None:
            self.problem('%s is missing' % key)
        elif (isinstance(value, bool) or not isinstance(value, int)
              or not low <= value <= high):
            self.problem('%s must be an integer from %d to %d, not %r'
                         % (key, low, high, self.props.get(key)))
        return value

    def build(self, cls, **values):
        """``cls(**values)``, or every problem found, refused at once."""
        if self.problems:
            raise exception.InvalidParameterValue(
                err='invalid %s connection properties: %s'
                % (self.protocol, '; '.join(self.problems)))
        return cls(**values)
