"""Tempest's volume API tests and cinder-tempest-plugin's API tests (its
RBAC tests with scope enforcement among them), against each family of
ours.

The deployment (conftest.py): Cinder behind a real Keystone with secure
RBAC, one backend per family. For each family, a tempest workspace whose
tempest.conf says what the family is and can do, written by the function
the devstack plugin's test-config phase uses (tempestconf.py), with that
family's volume type as tempest's default. Both families' runs start at
once, each with concurrency 2 (tempest's tests mostly wait on state
changes, so two runs side by side take about the time of one).

Every listed test must run and pass, or be skipped for a reason
doc/source/tempest.rst gives: a service that is absent (Nova, Neutron,
Swift), a feature we do not claim, or tempest's own skip of a known bug.
exclude.txt names the few tests that are not run, and why. The counts,
and every skip with its reason, are printed.

``--tempest-regex REGEX`` runs other tests (``--tempest-regex
'^(tempest|cinder_tempest_plugin)\\.'``: everything, scenarios too).
"""

import collections
import io
import os
import re
import subprocess
import sys

import pytest

from tests.functional.tempest import conftest
from tests.functional.tempest import tempestconf

BIN = os.path.dirname(sys.executable)
TEMPEST = os.path.join(BIN, 'tempest')
STESTR = os.path.join(BIN, 'stestr')
HERE = os.path.dirname(os.path.abspath(__file__))
EXCLUDE = os.path.join(HERE, 'exclude.txt')
CONCURRENCY = 2
# tempest.api.volume, and the API tests of cinder-tempest-plugin (its RBAC
# tests among them).
REGEX = r'^(tempest\.api\.volume\.|cinder_tempest_plugin\.(api|rbac)\.)'
RUN_TIMEOUT = 3600


def _regex(config) -> str:
    return config.getoption('--tempest-regex') or REGEX


def _results(stream: bytes) -> dict:
    """``{test id: (status, reason)}`` from a subunit v2 stream."""
    import subunit
    import testtools

    results = {}

    def on_test(test):
        reason = ''
        details = test.get('details') or {}
        for key in ('reason', 'traceback'):
            if key in details:
                reason = details[key].as_text()
                break
        results[test['id']] = (test['status'], reason)

    case = subunit.ByteStreamToStreamResult(io.BytesIO(stream),
                                            non_subunit_name='stdout')
    result = testtools.StreamToDict(on_test)
    result.startTestRun()
    try:
        case.run(result)
    finally:
        result.stopTestRun()
    return results


# What subunit calls a class's set-up (a skip or failure of the whole class).
_CLASS_SETUP = re.compile(r'^setUpClass \((.+)\)$')


def _short(test_id: str) -> str:
    return re.sub(r'\[.*\]$', '', test_id)


class Run:
    """One family's tempest run, started in its own workspace."""

    def __init__(self, family, top, deployment, keystone, image, regex):
        self.family = family
        self.top = top
        self.workspace = top / 'workspace'
        # Its own registry of workspaces (not ~/.tempest's, where the name
        # of an earlier run's workspace would be taken).
        subprocess.run([TEMPEST, 'init', '--name', top.name,
                        '--workspace-path', str(top / 'workspaces.yaml'),
                        str(self.workspace)], check=True,
                       capture_output=True, timeout=120)
        self.conf = self.workspace / 'etc' / 'tempest.conf'
        tempestconf.write(self.conf, deployment, keystone, family, image)
        self.args = ['--config-file', str(self.conf), '--regex', regex,
                     '--exclude-list', EXCLUDE]
        self.log_path = top / 'tempest-run.log'
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                [TEMPEST, 'run', *self.args, '--concurrency',
                 str(CONCURRENCY)], cwd=self.workspace,
                stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)

    def wait(self) -> dict:
        """The results of every test, once the run is over."""
        try:
            self.process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail('tempest (%s) still ran after %d s' % (
                self.family, RUN_TIMEOUT), pytrace=False)
        last = subprocess.run([STESTR, 'last', '--subunit'],
                              cwd=self.workspace, capture_output=True,
                              timeout=300)
        return _results(last.stdout)

    def listed(self) -> set:
        """The tests the run was to run (ids without their attributes)."""
        out = subprocess.run([TEMPEST, 'run', *self.args, '--list-tests'],
                             cwd=self.workspace, capture_output=True,
                             text=True, timeout=300)
        return {_short(line.strip()) for line in out.stdout.splitlines()
                if re.match(r'^[a-z_]+\.', line.strip())}

    def log_tail(self, size: int = 4000) -> str:
        return self.log_path.read_text(errors='replace')[-size:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope='module')
def tempest_runs(deployment, keystone, tempest_image, tmp_path_factory,
                 pytestconfig):
    runs = {}
    try:
        for family in sorted(conftest.BACKENDS):
            runs[family] = Run(family, tmp_path_factory.mktemp(
                'tempest-' + family), deployment, keystone, tempest_image,
                _regex(pytestconfig))
        yield runs
    finally:
        for run in runs.values():
            run.stop()


# The runs' own limit, with room for the deployment's start-up.
@pytest.mark.timeout(RUN_TIMEOUT + 900)
@pytest.mark.parametrize('family', sorted(conftest.BACKENDS))
def test_tempest_passes(family, tempest_runs):
    run = tempest_runs[family]
    results = run.wait()
    assert results, 'tempest ran no test:\n%s' % run.log_tail()
    listed = run.listed()
    # A class skipped as a whole is one result (its setUpClass): each of
    # its listed tests counts as skipped, for that reason.
    outcomes = {}
    for test_id, (status, reason) in results.items():
        whole = _CLASS_SETUP.match(test_id)
        if whole:
            for test in listed:
                if test.rsplit('.', 1)[0] == whole.group(1):
                    outcomes[test] = (status, reason)
            continue
        outcomes.setdefault(_short(test_id), (status, reason))
    counts = collections.Counter(status for status, _r in outcomes.values())
    print('\ntempest, family %s: %d tests: %s' % (
        family, len(outcomes), ', '.join(
            '%s %d' % item for item in sorted(counts.items()))))
    skips = collections.defaultdict(list)
    for test, (status, reason) in sorted(outcomes.items()):
        if status == 'skip':
            skips[reason.strip()].append(test)
    for reason, tests in sorted(skips.items()):
        print('  skipped (%d): %s' % (len(tests), reason))
        for test in tests:
            print('      %s' % test)
    failures = {t: r for t, (s, r) in results.items()
                if s not in ('success', 'skip')}
    assert not failures, '%d tempest tests failed (%s):\n%s' % (
        len(failures), family, '\n\n'.join(
            '%s\n%s' % (t, r[-2500:]) for t, r in sorted(failures.items())))
    # Every listed test ran, or its class was skipped as a whole (a class
    # whose set-up failed shows above, as a failure).
    missing = listed - set(outcomes)
    assert not missing, 'tests listed but never run (%s): %s' % (
        family, sorted(missing))
