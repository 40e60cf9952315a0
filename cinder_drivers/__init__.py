"""Cinder volume drivers over the storage engine, one module per family.

``cinder.conf``::

    [engine-lvm]
    volume_driver = cinder_drivers.lvm.EngineLVMDriver
    volume_backend_name = engine-lvm
    engine_api_url = http://storage-1:8790
    engine_api_token = <the node's [api] auth_token>
    engine_pool = default
"""
