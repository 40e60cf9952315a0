"""devstack/lib: the INI shim (lib/ini-compat) and the functions that
write the storage node's configuration and the Cinder backend section
(lib/storage-engine), run by bash as the devstack plugin and the test
fixtures run them. What they write is read back with oslo.config's own
parser, the one Cinder and the node use.

Starting and stopping a node through lib/storage-engine is tested in
tests/functional/test_devstack_node.py.
"""

import os
import subprocess

from oslo_config import iniparser
import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
INI_COMPAT = os.path.join(TOP, 'devstack', 'lib', 'ini-compat')
LIB = os.path.join(TOP, 'devstack', 'lib', 'storage-engine')


def bash(script, *args, env=None, lib=INI_COMPAT):
    """Run ``script`` with ``lib`` sourced (unless None); ``$1``... are
    ``args``; no STORAGE_ENGINE_* variable but those in ``env``.
    """
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith('STORAGE_ENGINE_')}
    clean.update(env or {})
    if lib is not None:
        script = 'source "$0"; ' + script
    result = subprocess.run(
        ['bash', '-c', 'set -eu; ' + script, lib or 'bash',
         *map(str, args)],
        env=clean, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


class _Parser(iniparser.BaseParser):
    def __init__(self):
        self.sections = {}
        self.section = None

    def new_section(self, section):
        self.section = self.sections.setdefault(section, {})

    def assignment(self, key, value):
        self.section.setdefault(key, []).extend(value)

    def parse_exc(self, msg, lineno, line=None):
        raise AssertionError('%s at line %d: %r' % (msg, lineno, line))


def parsed(path) -> dict:
    """{section: {option: [values]}} as oslo.config reads the file."""
    parser = _Parser()
    with open(path) as f:
        parser.parse(f.read().splitlines())
    return parser.sections


# -- lib/ini-compat ----------------------------------------------------------

@pytest.mark.parametrize('value', [
    'plain',
    'two words  and  spaces',
    'rabbit://user:p=ss@127.0.0.1:5672/vhost?a=1&b=2',
    'key = value',
    '100% #not a comment ; nor this',
    '\'quoted\' "double" $HOME `cmd` \\n',
    '',
])
def test_iniset_writes_the_value_exactly_as_given(tmp_path, value):
    conf = tmp_path / 'a.conf'
    bash('iniset "$1" DEFAULT opt "$2"', conf, value)
    assert parsed(conf) == {'DEFAULT': {'opt': [value]}}
    assert bash('iniget "$1" DEFAULT opt', conf) == value + '\n'


def test_iniset_is_idempotent_and_keeps_the_rest_of_the_file(tmp_path):
    conf = tmp_path / 'a.conf'
    conf.write_text('# a comment\n[DEFAULT]\ndebug = true\n\n'
                    '[database]\n# connection = old\nconnection = a\n')
    script = ('iniset "$1" DEFAULT transport_url "rabbit://u:p@h:1/v"; '
              'iniset "$1" database connection "mysql+pymysql://x"; '
              'iniset "$1" "pool:default" physical_volumes "/a b:8G"')
    bash(script, conf)
    first = conf.read_text()
    bash(script, conf)
    assert conf.read_text() == first
    assert first == ('# a comment\n[DEFAULT]\ndebug = true\n'
                     'transport_url = rabbit://u:p@h:1/v\n\n'
                     '[database]\n# connection = old\n'
                     'connection = mysql+pymysql://x\n\n'
                     '[pool:default]\nphysical_volumes = /a b:8G\n')


def test_iniset_sets_a_repeated_option_once(tmp_path):
    conf = tmp_path / 'a.conf'
    conf.write_text('[s]\nopt = 1\nother = x\nopt = 2\n[t]\nopt = 3\n')
    bash('iniset "$1" s opt 4', conf)
    assert parsed(conf) == {'s': {'opt': ['4'], 'other': ['x']},
                            't': {'opt': ['3']}}


def test_options_and_sections_are_not_patterns(tmp_path):
    conf = tmp_path / 'a.conf'
    conf.write_text('[a.c]\nx.y = 1\n')
    bash('iniset "$1" "a*c" "x*y" 2; iniset "$1" abc xzy 3', conf)
    assert parsed(conf) == {'a.c': {'x.y': ['1']}, 'a*c': {'x*y': ['2']},
                            'abc': {'xzy': ['3']}}


def test_iniget_ini_has_option_and_inidelete(tmp_path):
    conf = tmp_path / 'a.conf'
    conf.write_text('[s]\nopt =  spaced value \n')
    out = bash('iniget "$1" s opt; iniget "$1" s none; '
               'iniget "$1" nosection opt; iniget "$2" s opt; '
               'ini_has_option "$1" s opt && echo has; '
               'ini_has_option "$1" s none || echo has-not; '
               'inidelete "$1" s opt; '
               'ini_has_option "$1" s opt || echo deleted',
               conf, tmp_path / 'missing.conf')
    assert out == 'spaced value\n\n\n\nhas\nhas-not\ndeleted\n'
    assert parsed(conf) == {'s': {}}


def test_iniset_refuses_a_value_on_two_lines(tmp_path):
    conf = tmp_path / 'a.conf'
    result = subprocess.run(
        ['bash', '-c', 'source "$0"; iniset "$1" s opt "$2"', INI_COMPAT,
         str(conf), 'a\nb = c'], capture_output=True, text=True)
    assert result.returncode != 0
    assert 'cannot span lines' in result.stderr
    assert not conf.exists()


def test_devstack_functions_are_not_replaced(tmp_path):
    # Inside devstack, iniset is devstack's own: lib/storage-engine must
    # not source the shim over it.
    out = bash('function iniset { echo "iniset $*"; }; '
               'function inidelete { echo "inidelete $*"; }; '
               'source "$1"; configure_storage_engine_backend /x be; '
               'declare -F iniget || echo no-shim', LIB, lib=None,
               env={'STORAGE_ENGINE_API_TOKEN': 't'})
    lines = out.splitlines()
    assert lines[0] == 'iniset /x be volume_driver ' \
        'cinder_drivers.lvm.EngineLVMDriver'
    assert 'inidelete /x be engine_api_ca_file' in lines
    assert lines[-1] == 'no-shim'


# -- lib/storage-engine ------------------------------------------------------

def test_backend_section_from_the_defaults_and_the_variables(tmp_path):
    conf = tmp_path / 'cinder.conf'
    conf.write_text('[DEFAULT]\nenabled_backends = lvm-1\n')
    env = {'STORAGE_ENGINE_API_URL': 'https://node1:8790',
           'STORAGE_ENGINE_API_TOKEN': 's3cret=with spaces',
           'STORAGE_ENGINE_API_CA_FILE': '/etc/ssl/engine ca.pem',
           'STORAGE_ENGINE_POOL': 'fast',
           'STORAGE_ENGINE_PROVISIONING': 'thick'}
    bash('configure_storage_engine_backend "$1" lvm-1', conf, env=env,
         lib=LIB)
    assert parsed(conf) == {
        'DEFAULT': {'enabled_backends': ['lvm-1']},
        'lvm-1': {
            'volume_driver': ['cinder_drivers.lvm.EngineLVMDriver'],
            'volume_backend_name': ['lvm-1'],
            'engine_api_url': ['https://node1:8790'],
            'engine_api_token': ['s3cret=with spaces'],
            'engine_api_ca_file': ['/etc/ssl/engine ca.pem'],
            'engine_pool': ['fast'],
            'engine_provisioning': ['thick'],
            'engine_export_protocol': ['nbd'],
            'max_over_subscription_ratio': ['20.0'],
            'reserved_percentage': ['0'],
        }}
    # Again without a CA: idempotent, and the stale CA option goes.
    del env['STORAGE_ENGINE_API_CA_FILE']
    bash('configure_storage_engine_backend "$1" lvm-1', conf, env=env,
         lib=LIB)
    assert 'engine_api_ca_file' not in parsed(conf)['lvm-1']
    before = conf.read_text()
    bash('configure_storage_engine_backend "$1" lvm-1', conf, env=env,
         lib=LIB)
    assert conf.read_text() == before


def test_backend_options_are_the_drivers(tmp_path):
    """Every option written is one Cinder or our driver registers."""
    from cinder.volume import driver as cinder_driver

    from cinder_drivers import base

    conf = tmp_path / 'cinder.conf'
    bash('configure_storage_engine_backend "$1" be', conf, lib=LIB,
         env={'STORAGE_ENGINE_API_TOKEN': 't',
              'STORAGE_ENGINE_API_CA_FILE': '/ca.pem'})
    # volume_driver is the volume manager's option.
    known = {opt.dest for opt in cinder_driver.volume_opts +
             base.engine_opts} | {'volume_driver'}
    assert set(parsed(conf)['be']) <= known


def test_the_token_is_made_once_and_shared(tmp_path):
    env = {'STORAGE_ENGINE_STATE_PATH': str(tmp_path / 'state')}
    bash('write_storage_engine_node_conf "$1"; '
         'configure_storage_engine_backend "$2" be', tmp_path / 'node.conf',
         tmp_path / 'cinder.conf', env=env, lib=LIB)
    token = parsed(tmp_path / 'node.conf')['api']['auth_token'][0]
    assert len(token) == 64
    assert parsed(tmp_path / 'cinder.conf')['be']['engine_api_token'] == \
        [token]
    assert (tmp_path / 'state' / 'api-token').stat().st_mode & 0o077 == 0


def test_node_conf(tmp_path):
    state = tmp_path / 'state'
    env = {'STORAGE_ENGINE_STATE_PATH': str(state),
           'STORAGE_ENGINE_NODE_NAME': 'node-a',
           'STORAGE_ENGINE_API_TOKEN': 'tok',
           'STORAGE_ENGINE_API_PORT': '18790',
           'STORAGE_ENGINE_NBD_PORT_RANGE': '20000:20009',
           'STORAGE_ENGINE_POOL_SIZE': '8G'}
    conf = tmp_path / 'etc' / 'node.conf'
    bash('write_storage_engine_node_conf "$1"; '
         'write_storage_engine_node_conf "$1"', conf, env=env, lib=LIB)
    assert parsed(conf) == {
        'DEFAULT': {'node_name': ['node-a'], 'state_path': [str(state)],
                    'metadata_url': ['sqlite://%s/metadata.db' % state],
                    'pools': ['default'],
                    'default_provisioning': ['thin']},
        'api': {'host': ['127.0.0.1'], 'port': ['18790'],
                'auth_token': ['tok']},
        'nbd': {'host': ['127.0.0.1'], 'port_range': ['20000:20009']},
        'pool:default': {
            'physical_volumes': ['%s/default.pv0:8G' % state],
            'max_over_subscription_ratio': ['20.0'],
            'reserved_percentage': ['0']}}
    # It holds the token: its owner's only.
    assert conf.stat().st_mode & 0o077 == 0


def test_an_ipv6_api_address_is_bracketed_in_the_url(tmp_path):
    env = {'STORAGE_ENGINE_STATE_PATH': str(tmp_path / 'state'),
           'STORAGE_ENGINE_API_TOKEN': 'tok',
           'STORAGE_ENGINE_API_HOST': 'fd00::5'}
    bash('write_storage_engine_node_conf "$1"; '
         'configure_storage_engine_backend "$2" be', tmp_path / 'node.conf',
         tmp_path / 'cinder.conf', env=env, lib=LIB)
    assert parsed(tmp_path / 'node.conf')['api']['host'] == ['fd00::5']
    assert parsed(tmp_path / 'cinder.conf')['be']['engine_api_url'] == [
        'http://[fd00::5]:8790']
