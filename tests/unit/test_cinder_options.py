"""The Cinder drivers' option values: checked by the driver, per backend.

oslo.config checks a typed value whenever it is read, and cinder-volume's
parent process reads every backend's options when it logs its
configuration: one backend's bad value used to end the whole process
there (issue 12 part 4; with the real services:
tests/functional/test_cinder_backend_faults.py). Here, with oslo.config
itself: reading a bad value gives it back as written, and the driver's
set-up refuses it with what to write instead.

Cinder is imported inside the tests, not at collection (see
tests/functional/test_lvm_driver.py).
"""

import logging
import uuid

from oslo_config import cfg
import pytest


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_bad_value_is_logged_as_written_while_options_are_logged(
        tmp_path):
    from cinder_drivers import base

    conf_file = tmp_path / 'cinder.conf'
    conf_file.write_text('[bad]\n'
                         'engine_api_url = 127.0.0.1:8790\n'
                         'engine_provisioning = fat\n'
                         'engine_api_timeout = soon\n'
                         'engine_export_protocol = iscsi\n')
    conf = cfg.ConfigOpts()
    conf.register_opts(base.engine_opts, group='bad')
    conf(args=[], default_config_files=[str(conf_file)])
    logger = logging.getLogger('test_cinder_options')
    logger.setLevel(logging.DEBUG)
    handler = _Lines()
    logger.addHandler(handler)
    try:
        # What cinder-volume's parent does (oslo.service's launcher).
        conf.log_opt_values(logger, logging.DEBUG)
    finally:
        logger.removeHandler(handler)
    logged = {line.split('=')[0].strip(): line.split('=', 1)[1].strip()
              for line in handler.lines if line.startswith('bad.')}
    assert logged['bad.engine_api_url'] == '127.0.0.1:8790'
    assert logged['bad.engine_provisioning'] == 'fat'
    assert logged['bad.engine_api_timeout'] == 'soon'
    assert logged['bad.engine_export_protocol'] == 'iscsi'
    assert logged['bad.engine_pool'] == 'default'


@pytest.fixture
def make_driver():
    from cinder.volume import configuration
    from cinder.volume import driver as cinder_driver

    from cinder_drivers import lvm

    made = []

    def make(**overrides):
        group = 'options-unit-%s' % uuid.uuid4().hex[:8]
        made.append((group, overrides))
        drv = lvm.EngineLVMDriver(
            configuration=configuration.Configuration(
                cinder_driver.volume_opts, config_group=group),
            host='unit@%s' % group)
        for key, value in overrides.items():
            cfg.CONF.set_override(key, value, group=group)
        return drv, group

    yield make
    for group, overrides in made:
        for key in overrides:
            cfg.CONF.clear_override(key, group=group)


@pytest.mark.parametrize('option, value, says', [
    ('engine_api_url', '127.0.0.1:8790',
     'engine_api_url = 127.0.0.1:8790 has no scheme: write '
     'engine_api_url = http://127.0.0.1:8790'),
    ('engine_api_url', 'tcp://node-1:8790',
     'engine_api_url = tcp://node-1:8790: the scheme must be http or '
     'https: write engine_api_url = http://node-1:8790'),
    ('engine_api_url', 'http://',
     'engine_api_url = http:// is not a URL of the storage node: write '
     'engine_api_url = http://HOST:PORT'),
    ('engine_provisioning', 'fat',
     'engine_provisioning = fat is not valid: write one of thin, thick'),
    ('engine_export_protocol', 'iscsi',
     'engine_export_protocol = iscsi is not valid: write one of nbd, aoe'),
    ('engine_api_timeout', 0,
     'engine_api_timeout = 0 is not valid (Should be greater than or equal '
     'to 1): write a whole number of at least 1'),
    ('engine_api_timeout', 'soon',
     'engine_api_timeout = soon is not valid'),
])
def test_the_backend_refuses_a_bad_value_saying_what_to_write(
        make_driver, option, value, says):
    from cinder import exception

    drv, group = make_driver(**{option: value})
    with pytest.raises(exception.InvalidConfigurationValue) as err:
        drv.do_setup(None)
    assert str(err.value).startswith('[%s] ' % group)
    assert says in str(err.value)


def test_good_values_pass_and_keep_their_types(make_driver):
    drv, _ = make_driver(engine_api_url='https://node-1:8790',
                         engine_api_timeout='15',
                         engine_provisioning='thick',
                         engine_export_protocol='nbd')
    drv.check_options()
    conf = drv.configuration
    assert conf.engine_api_timeout == 15
    assert (conf.engine_api_url, conf.engine_provisioning) == (
        'https://node-1:8790', 'thick')
