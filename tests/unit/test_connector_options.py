"""The os-brick connectors list their own oslo.config options for
oslo-config-generator (namespace ``os_brick_connectors``), and the Cinder
drivers' list still carries them for cinder.conf.
"""

import configparser
import importlib
import os

from oslo_config import cfg

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _dests(options):
    return sorted(opt.dest for opt in options)


def test_the_connectors_list_the_aoe_connector_options_they_register():
    from os_brick_connectors import opts

    [(group, options)] = opts.list_opts()
    assert group == 'aoe_connector'
    assert _dests(options) == ['interfaces', 'mode', 'network_namespace',
                               'timeout']
    # What is listed is what the attaching service reads.
    for opt in options:
        assert cfg.CONF[group][opt.dest] == opt.default


def test_the_cinder_drivers_list_still_has_the_connector_options():
    from cinder_drivers import opts
    from os_brick_connectors import opts as connector_opts

    groups = dict(opts.list_opts())
    assert 'backend_defaults' in groups
    assert _dests(groups['aoe_connector']) == _dests(
        dict(connector_opts.list_opts())['aoe_connector'])


def test_setup_cfg_names_the_connectors_namespace_for_the_generator():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(TOP, 'setup.cfg'))
    entries = dict(
        line.replace(' ', '').split('=', 1) for line in
        setup['entry_points']['oslo.config.opts'].strip().splitlines())
    module, func = entries['os_brick_connectors'].split(':')
    assert getattr(importlib.import_module(module), func)() == \
        importlib.import_module('os_brick_connectors.opts').list_opts()
