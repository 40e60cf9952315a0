"""The documentation builds as ``tox -e docs`` builds it: warnings are errors.

Sphinx runs over doc/source into a temporary directory, with the project's
conf.py and extensions, so a page with broken markup (a malformed table,
an unknown role, a reference to nothing) fails the test run with Sphinx's
own warnings in the message. Sphinx is a requirement of the test run
(doc/requirements.txt, installed by tools/setup-env.sh): without it this
fails, it is never skipped.

The generated references are checked against their sources: every option
of every namespace the config generator documents
(etc/oslo-config-generator/*.conf) and every operation of the management
API's OpenAPI document must have its entry in the built pages.
"""

import configparser
import importlib.metadata
import pathlib
import re
import subprocess
import sys
import zlib

import pytest
import yaml

TOP = pathlib.Path(__file__).resolve().parents[2]
SOURCE = TOP / 'doc' / 'source'
OPENAPI = TOP / 'storage_engine' / 'service' / 'openapi.yaml'
HTTP_METHODS = {'get', 'put', 'post', 'delete', 'options', 'head', 'patch',
                'trace'}


@pytest.fixture(scope='module')
def build(tmp_path_factory):
    """One build for the module: (the finished process, the HTML dir)."""
    tmp = tmp_path_factory.mktemp('docs')
    html = tmp / 'html'
    proc = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q',
         '-b', 'html', '-d', str(tmp / 'doctrees'), str(SOURCE), str(html)],
        cwd=TOP, capture_output=True, text=True, timeout=600)
    return proc, html


def _pages(build) -> dict[str, str]:
    proc, html = build
    pages = {str(p.relative_to(html)): p.read_text(encoding='utf-8')
             for p in html.rglob('*.html')}
    assert pages, ('sphinx-build wrote no page (exit status %d):\n%s'
                   % (proc.returncode, proc.stderr))
    return pages


def _generator_namespaces() -> list[str]:
    namespaces = []
    for conf in sorted((TOP / 'etc' / 'oslo-config-generator').glob(
            '*.conf')):
        for line in conf.read_text().splitlines():
            key, sep, value = line.partition('=')
            if sep and key.strip() == 'namespace':
                namespaces.append(value.strip())
    return namespaces


def _anchor(group: str | None, opt) -> str:
    # What oslo_config.sphinxext names an option's target.
    group = 'DEFAULT' if group in (None, 'DEFAULT', 'default') else group
    return '%s.%s' % (group if group == 'DEFAULT' else group.lower(),
                      opt.dest.lower())


def _inventory(html: pathlib.Path) -> set[tuple[str, str]]:
    """(role, name) of every object in Sphinx's objects.inv (version 2)."""
    data = (html / 'objects.inv').read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b'\n', header_end) + 1
    objects = set()
    for line in zlib.decompress(data[header_end:]).decode().splitlines():
        m = re.match(r'(.+?)\s+(\S+:\S+)\s+-?\d+\s+\S+\s+.*$', line)
        if m:
            objects.add((m.group(2), m.group(1)))
    return objects


def test_docs_build_with_no_warnings(build):
    proc, _ = build
    assert proc.returncode == 0, (
        'sphinx-build -W over doc/source failed (exit status %d); fix the '
        'pages (tox -e docs builds the same):\n%s'
        % (proc.returncode, proc.stderr))


def test_configuration_reference_shows_every_documented_option(build):
    pages = _pages(build)
    ids = {i for text in pages.values()
           for i in re.findall(r'id="([^"]+)"', text)}
    # The namespaces the project documents, as setup.cfg names its own.
    setup = configparser.ConfigParser()
    setup.read(TOP / 'setup.cfg')
    ours = {line.split('=')[0].strip() for line in
            setup['entry_points']['oslo.config.opts'].splitlines()
            if line.strip()}
    namespaces = _generator_namespaces()
    assert ours <= set(namespaces), (
        'setup.cfg has oslo.config.opts namespaces that no '
        'etc/oslo-config-generator/*.conf lists: %s'
        % sorted(ours - set(namespaces)))
    entry_points = {ep.name: ep for ep in importlib.metadata.entry_points(
        group='oslo.config.opts')}
    missing = []
    for namespace in namespaces:
        for group, opts in entry_points[namespace].load()():
            group = getattr(group, 'name', group)
            missing += ['%s: [%s] %s' % (namespace, group or 'DEFAULT',
                                         opt.dest)
                        for opt in opts if _anchor(group, opt) not in ids]
    assert not missing, (
        'options missing from the configuration reference (a namespace '
        'needs a .. show-options:: in doc/source/configuration/):\n'
        + '\n'.join(missing))


def test_api_reference_shows_every_operation_of_openapi_yaml(build):
    _pages(build)
    objects = _inventory(build[1])
    spec = yaml.safe_load(OPENAPI.read_text())
    missing = ['%s %s' % (method.upper(), path)
               for path, item in spec['paths'].items()
               for method in item if method in HTTP_METHODS
               if ('http:' + method, path) not in objects]
    assert not missing, (
        'operations of openapi.yaml missing from doc/source/api.rst:\n'
        + '\n'.join(missing))
