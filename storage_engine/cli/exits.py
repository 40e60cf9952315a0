"""Exit codes of the ``storage-engine`` command.

Scripts branch on these, so they are part of the command's interface: an
error is classified by its engine exception class (the client raises the
same classes as the engine in-process), never by its message.
"""

from storage_engine import errors

OK = 0
PROBLEMS = 1        # a check found problems, a job failed, a pool is down
USAGE = 2           # bad usage or an invalid argument
NOT_FOUND = 3
CONFLICT = 4        # already exists, busy, read-only
NO_SPACE = 5
UNAUTHORIZED = 6
UNAVAILABLE = 7     # node unreachable or not ready
ERROR = 8           # any other error
IN_USE = 9          # vg check: a running process holds the group

_BY_CLASS = (
    # Before Busy, its ancestor: the first class that matches wins.
    (errors.GroupInUse, IN_USE),
    (errors.InvalidArgument, USAGE),
    (errors.NotFound, NOT_FOUND),
    (errors.AlreadyExists, CONFLICT),
    (errors.Busy, CONFLICT),
    (errors.ReadOnly, CONFLICT),
    (errors.NoSpace, NO_SPACE),
    (errors.Unauthorized, UNAUTHORIZED),
    (errors.Unavailable, UNAVAILABLE),
)

EPILOG = """\
exit codes:
  0  success
  1  a check found problems (vg check, pool check), a job failed, or a
     pool reopened is not back in service
  2  bad usage or invalid argument
  3  not found
  4  conflict (already exists, busy)
  5  no space
  6  unauthorized (wrong or missing token)
  7  unavailable (node unreachable or not ready)
  8  any other error
  9  the volume group is in use by a running process (vg check: check
     it online with `storage-engine pool check NAME`)
"""


def for_error(exc: BaseException) -> int:
    """The exit code for an error that ended a command."""
    for cls, code in _BY_CLASS:
        if isinstance(exc, cls):
            return code
    return ERROR
