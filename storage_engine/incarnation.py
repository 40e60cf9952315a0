"""Incarnations: which create a delete is meant for.

Cinder reuses its ids. When a create fails, Cinder reschedules it, and with
one backend the same driver gets it again with the same volume id; Cinder
also casts the reschedule first and *then* deletes whatever the failed
attempt may have left. If the storage node is down, that delete keeps
retrying, and it can land after the rescheduled create succeeded: a delete
meant for the first attempt would remove the second. The same can happen
to an export (a detach retrying while the same host attaches again) and to
a snapshot. This module is the one statement of the rule that prevents it,
for the management API, the client and the drivers:

* Every create (volume, snapshot, export) carries an *incarnation*: a
  token the client makes before it sends the request, so that it knows
  the token even when the reply is lost. The node records it with the
  object and shows it in the object's view.
* A create that repeats an earlier one (same id, same request) is
  answered with the existing object, and the object becomes the repeat's:
  its incarnation is now the repeat's token.
* A delete may name the incarnations it is meant for (the ``incarnation``
  query parameter, repeatable). The node deletes the object only if its
  incarnation is one of them; otherwise it changes nothing and answers
  412 ``incarnation_mismatch``: the object was created again after the
  delete was asked for, and it belongs to that later create. An object
  recorded without an incarnation (made before incarnations existed, or
  adopted from a volume group) was claimed by no create since, so every
  conditional delete matches it.
* A delete that names none deletes whatever incarnation there is (an
  operator at the command line).

:class:`Issued` is the client's memory of the tokens it sent: its deletes
name every token its own creates of that object carried *before the delete
was asked for*, so a delete can remove what this client created, and never
what a create sent after it made.
"""

import collections
import re
import threading
import uuid

from storage_engine import errors

#: Tokens are short words: uuid4 hex from our client, anything printable
#: and unambiguous in a query string from others.
_TOKEN = re.compile(r'[A-Za-z0-9._-]{1,64}\Z')

#: Objects :class:`Issued` remembers (least recently used forgotten
#: first), and tokens per object (the oldest forgotten first). A forgotten
#: object's delete names no incarnation, as an operator's does.
MAX_OBJECTS = 100_000
MAX_TOKENS = 16


def new() -> str:
    """A fresh incarnation token."""
    return uuid.uuid4().hex


def check(token) -> str:
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise errors.InvalidArgument(
            'incarnation %r is invalid: use 1-64 letters, digits, ".", "_" '
            'or "-"' % (token,), incarnation=token)
    return token


def matches(recorded: str | None, wanted: list[str] | None) -> bool:
    """Whether a delete naming ``wanted`` (None: any) applies to an object
    recorded with incarnation ``recorded``.
    """
    return wanted is None or recorded is None or recorded in wanted


def refuse(kind: str, ident: str, recorded: str | None,
           wanted: list[str] | None) -> None:
    """Raise :class:`errors.IncarnationMismatch` unless the delete applies."""
    if not matches(recorded, wanted):
        raise errors.IncarnationMismatch(
            '%s %s was created again after this delete was asked for '
            '(incarnation %s, not %s): it belongs to that later create and '
            'stays' % (kind, ident, recorded, ', '.join(wanted)),
            id=ident, incarnation=recorded)


class Issued:
    """The incarnations one client sent in creates, per object.

    Thread-safe (and safe under eventlet, whose monkey-patched lock this
    becomes in cinder-volume).
    """

    def __init__(self, max_objects: int = MAX_OBJECTS,
                 max_tokens: int = MAX_TOKENS):
        self._lock = threading.Lock()
        self._tokens: collections.OrderedDict = collections.OrderedDict()
        self._max_objects = max_objects
        self._max_tokens = max_tokens

    @staticmethod
    def _key(kind: str, ident: str) -> tuple[str, str]:
        # Ids in their canonical form, as the node records them.
        try:
            return kind, str(uuid.UUID(ident))
        except (TypeError, ValueError, AttributeError):
            return kind, ident

    def issue(self, kind: str, ident: str) -> str:
        """A new token for a create of ``kind`` ``ident``, remembered."""
        token = new()
        key = self._key(kind, ident)
        with self._lock:
            tokens = self._tokens.pop(key, [])
            tokens.append(token)
            self._tokens[key] = tokens[-self._max_tokens:]
            while len(self._tokens) > self._max_objects:
                self._tokens.popitem(last=False)
        return token

    def sent(self, kind: str, ident: str) -> list[str] | None:
        """Every token sent for ``ident`` so far (None if none is known):
        what a delete asked for now is meant for.
        """
        key = self._key(kind, ident)
        with self._lock:
            tokens = self._tokens.get(key)
            if tokens:
                self._tokens.move_to_end(key)
                return list(tokens)
        return None

    def forget(self, kind: str, ident: str, tokens: list[str] | None
               ) -> None:
        """The delete naming ``tokens`` is done: forget them (tokens sent
        since, by a later create, stay).
        """
        if not tokens:
            return
        key = self._key(kind, ident)
        with self._lock:
            left = [t for t in self._tokens.get(key, [])
                    if t not in tokens]
            if left:
                self._tokens[key] = left
            else:
                self._tokens.pop(key, None)
