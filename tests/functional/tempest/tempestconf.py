"""tempest.conf for the tier's deployment.

What a backend of ours is and can do (protocol, vendor, feature flags,
manage references, backup driver) is written by the function the devstack
plugin's test-config phase uses (devstack/lib/storage-engine,
``configure_storage_engine_tempest``); the deployment itself (Keystone,
endpoints, which services exist) is written here, as devstack's own
lib/tempest writes it there.
"""

import configparser

from tests.fixtures import cinder as cinder_mod
from tests.functional.tempest import conftest


def write(path, cinder, keystone, family: str, image_id: str) -> None:
    conf = configparser.RawConfigParser()
    conf.read(path)
    sections = {
        'DEFAULT': {'log_file': str(path) + '.log', 'debug': 'true'},
        'auth': {'admin_username': 'admin',
                 'admin_password': keystone.admin_password,
                 'admin_project_name': 'admin',
                 'admin_domain_name': 'Default',
                 'use_dynamic_credentials': 'true',
                 'create_isolated_networks': 'false'},
        'identity': {'uri_v3': keystone.auth_url, 'auth_version': 'v3',
                     'region': 'RegionOne'},
        'identity-feature-enabled': {'api_v2': 'false'},
        # No Nova (until the Nova issue), no Neutron, no Swift. Telling
        # tempest Neutron is there would not do: its credentials' clean-up
        # then calls Neutron.
        'service_available': {'cinder': 'true', 'nova': 'false',
                              'glance': 'true', 'neutron': 'false',
                              'swift': 'false'},
        'volume': {'catalog_type': 'block-storage',
                   'endpoint_type': 'publicURL', 'region': 'RegionOne',
                   'backend_names': ','.join(
                       conftest.BACKENDS[f] for f in sorted(
                           conftest.BACKENDS)),
                   'min_microversion': '3.0',
                   'max_microversion': 'latest',
                   'build_timeout': '300'},
        # Both families' backends run, and so does cinder-backup.
        'volume-feature-enabled': {'multi_backend': 'true',
                                   'backup': 'true'},
        'image': {'catalog_type': 'image', 'region': 'RegionOne'},
        # The image volumes are made from (tests/functional/tempest).
        'compute': {'image_ref': image_id, 'image_ref_alt': image_id},
        # Cinder enforces scope and the new defaults (conftest.py).
        'enforce_scope': {'cinder': 'true'},
    }
    for name, values in sections.items():
        if name != 'DEFAULT' and not conf.has_section(name):
            conf.add_section(name)
        for key, value in values.items():
            conf.set(name, key, value)
    with open(path, 'w') as out:
        conf.write(out)
    cinder_mod.configure_tempest(str(path), cinder.conf_path,
                                 conftest.BACKENDS[family], default=True)
