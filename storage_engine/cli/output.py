"""What the ``storage-engine`` command prints: tables and fields for people,
JSON for scripts, and a progress bar for long jobs.

JSON goes to stdout exactly as the API (or the volume group) gave it, so a
script reads the same document a driver would. Progress goes to stderr,
and only to a terminal, so that stdout stays parseable and logs stay clean.
"""

import json
import sys
from typing import Any
from typing import Callable
from typing import TextIO

from storage_engine import units

JSON = 'json'
TABLE = 'table'
FORMATS = (TABLE, JSON)

_UNITS = {'K': units.Ki, 'M': units.Mi, 'G': units.Gi, 'T': units.Ti,
          'P': units.Ti * 1024}


def emit(fmt: str, data: Any, human: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON, or call ``human(data)`` to print it for
    people.
    """
    if fmt == JSON:
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write('\n')
    else:
        human(data)


def table(rows: list[list[Any]], headers: list[str]) -> None:
    """Columns aligned on the widest cell; nothing at all for no rows."""
    if not rows:
        return
    rows = [['-' if x is None else str(x) for x in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers] + rows:
        print('  '.join(str(x).ljust(w) for x, w in zip(row, widths))
              .rstrip())


def fields(pairs: list[tuple[str, Any]]) -> None:
    """One ``name  value`` line per pair, values aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        print('%s  %s' % (key.ljust(width), '-' if value is None else value))


def size(n: int | None) -> str:
    """A size for people, in its largest unit: exact when round ("10GiB"),
    else to one decimal ("3.9GiB" rather than "4031MiB"); ``show`` commands
    print the bytes too.
    """
    if n is None:
        return '-'
    for suffix in ('P', 'T', 'G', 'M', 'K'):
        unit = _UNITS[suffix]
        if n >= unit:
            if n % unit == 0:
                return '%d%siB' % (n // unit, suffix)
            return '%.1f%siB' % (n / unit, suffix)
    return '%dB' % n


def yes_no(value: bool | None) -> str:
    return '-' if value is None else ('yes' if value else 'no')


def duration(seconds: float) -> str:
    """``2d3h``, ``3h4m``, ``4m5s``, ``12s``: the two largest units."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return '%dd%dh' % (days, hours)
    if hours:
        return '%dh%dm' % (hours, minutes)
    if minutes:
        return '%dm%ds' % (minutes, secs)
    return '%ds' % secs


def check_report(report: dict) -> None:
    """A consistency check's report (``vg check``, ``pool check``): one
    line per problem and note, then the verdict.
    """
    for e in report['errors']:
        print('ERROR: %s' % e)
    for n in report['notes']:
        print('note: %s' % n)
    print('%s: %s' % (report['group'], 'consistent' if report['ok']
                      else '%d problem(s)' % len(report['errors'])))


class ProgressBar:
    """A job's progress redrawn in place, for ``Client.wait_job(progress=)``.

    Draws only when ``stream`` is a terminal: in a pipe or a log a bar is
    noise (carriage returns, hundreds of lines), and the final job printed
    on stdout says how it ended.
    """

    def __init__(self, label: str, stream: TextIO | None = None,
                 width: int = 30) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = bool(getattr(self.stream, 'isatty', None)
                            and self.stream.isatty())
        self.drawn = False

    def line(self, job: dict) -> str:
        progress = job.get('progress') or {}
        percent = max(0.0, min(100.0, float(progress.get('percent') or 0)))
        if job.get('state') == 'succeeded':
            percent = 100.0
        filled = int(round(self.width * percent / 100))
        return '%s [%s%s] %5.1f%% %s' % (
            self.label, '#' * filled, '-' * (self.width - filled), percent,
            job.get('state', ''))

    def __call__(self, job: dict) -> None:
        if self.enabled:
            # Pad so a shorter line covers the previous one.
            self.stream.write('\r' + self.line(job).ljust(78))
            self.stream.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write('\n')
            self.stream.flush()
            self.drawn = False
